"""The reader thread: microphone frames through the endpointer, events out to the app.

Everything that touches the endpointer runs on this one thread: frames, push-to-talk presses
(queued by `press` / `release` from the GUI thread), the playback level for the echo gate and
the echo canceller.
`on_event` is called on this thread too; a Qt adapter re-emits it as a signal.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.audio.capture import Capture
from app.audio.devices import SilenceWatch
from app.audio.echo import EchoCanceller
from app.audio.endpointer import Endpointer, Event

STALL_S = 2.0  # no audio at all for this long from a running stream: the device hung


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the user should see about the microphone (missing, lost, silent)."""

    text: str


class Listener:
    def __init__(self, capture: Capture, endpointer: Endpointer, on_event: Callable[[Event | Notice], None],
                 playback_level: Callable[[], float] | None = None, silence: SilenceWatch | None = None,
                 echo: EchoCanceller | None = None) -> None:
        self.capture = capture
        self.endpointer = endpointer
        self.on_event = on_event
        self.playback_level = playback_level  # the speaker's level now, for the echo gate
        self.silence = silence or SilenceWatch()
        self.echo = echo  # takes the reply out of each frame before the endpointer hears it
        self.commands: queue.SimpleQueue[Callable[[], list[Event]]] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> bool:
        """Open the microphone and start reading; False (after a Notice) when there is none to open."""
        notice = self.capture.open()
        if notice:
            self.on_event(Notice(notice))
        if not self.capture.running:
            return False
        self.thread = threading.Thread(target=self.run, name="omnivox-listener", daemon=True)
        self.thread.start()
        return True

    def press(self) -> None:
        self.commands.put(self.endpointer.press)

    def release(self) -> None:
        self.commands.put(self.endpointer.release)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        self.capture.close()

    def run(self) -> None:
        last_audio, stalled = time.monotonic(), False
        while not self.stopping.is_set():
            while not self.commands.empty():
                self.emit(self.commands.get()())
            frame = self.capture.read(timeout=0.1)  # short, so key presses are handled without audio too
            if frame is None:
                if self.capture.ended:
                    self.emit(self.endpointer.flush())
                    self.on_event(Notice("The microphone stopped (unplugged?). Typing still works."))
                    return
                if not stalled and time.monotonic() - last_audio >= STALL_S:
                    stalled = True
                    self.on_event(Notice("No audio is arriving from the microphone."))
                continue
            last_audio, stalled = time.monotonic(), False
            if self.playback_level is not None:
                self.endpointer.set_playback_level(self.playback_level())
            if self.echo is not None:
                frame = self.echo.clean(frame)
            self.emit(self.endpointer.push(frame))
            if self.silence.push(np.frombuffer(frame, dtype=np.int16)):
                name = self.capture.device.stable_name if self.capture.device else "microphone"
                self.on_event(Notice(f"“{name}” delivers only silence: muted, or the wrong device?"))

    def emit(self, events: list[Event]) -> None:
        for event in events:
            self.on_event(event)
