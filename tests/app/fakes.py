"""Stand-ins for the engine client and the voice controller, with the same signals and methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

import numpy as np
from PySide6.QtCore import QObject, Signal


@dataclass
class Respond:
    turn_id: str
    pcm: bytes | None
    rate: int
    image: bytes | None
    text: str | None
    max_new_tokens: int


@dataclass
class Transcribe:
    request_id: str
    pcm: bytes
    rate: int
    max_new_tokens: int


class FakeEngine(QObject):
    """Records requests; the test decides what the engine says back (`reply`, or the signals directly)."""

    ready = Signal()
    progress = Signal(str, float)
    modelLoaded = Signal(dict)
    textDelta = Signal(str, str)
    audioChunk = Signal(str, bytes, int)
    turnDone = Signal(str, dict)
    transcribed = Signal(str, dict)
    error = Signal(str, str)
    engineDied = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.ids = count(1)
        self.started = 0
        self.loaded: list[tuple] = []
        self.requests: list[Respond] = []
        self.transcriptions: list[Transcribe] = []
        self.sent: list[str] = []  # ids of respond and transcribe requests, in the order they went out
        self.prefetched: list[bytes] = []
        self.cancelled: list[str] = []
        self.resets = 0
        self.stopped = False

    def start(self) -> None:
        self.started += 1

    def load_model(self, path: str, precision: str | None = None, device: str | None = None) -> str:
        self.loaded.append((str(path), precision, device))
        return "load"

    def respond(self, pcm: bytes | None, rate: int, image: bytes | None, text: str | None, max_new_tokens: int,
                speak: bool = True) -> str:
        turn_id = f"turn{next(self.ids)}"
        self.requests.append(Respond(turn_id, pcm, rate, image, text, max_new_tokens))
        self.sent.append(turn_id)
        return turn_id

    def transcribe(self, pcm: bytes, rate: int, max_new_tokens: int) -> str:
        request_id = f"transcribe{next(self.ids)}"
        self.transcriptions.append(Transcribe(request_id, pcm, rate, max_new_tokens))
        self.sent.append(request_id)
        return request_id

    def prefetch(self, image: bytes) -> str:
        self.prefetched.append(image)
        return "prefetch"

    def cancel(self, turn_id: str) -> None:
        self.cancelled.append(turn_id)

    def reset(self) -> None:
        self.resets += 1

    def shutdown(self) -> None:
        self.stopped = True

    def reply(self, text: str, audio_seconds: float = 0.5, cancelled: bool = False, turn_id: str | None = None) -> None:
        """Stream `text` word by word with some audio, then finish the turn (the last request by default)."""
        turn_id = turn_id or self.requests[-1].turn_id
        for word in text.split(" "):
            self.textDelta.emit(turn_id, word + " ")
        pcm = (0.1 * np.sin(np.arange(int(16000 * audio_seconds)) / 10)).astype("<f4").tobytes()
        self.audioChunk.emit(turn_id, pcm, 16000)
        self.turnDone.emit(turn_id, {"text": " ".join(text.split(" ")) + " ", "audio_seconds": audio_seconds,
                                     "timings_ms": {"first_text": 120.0, "first_audio": 310.0, "total": 900.0},
                                     "tokens": {}, "adapter": None, "cancelled": cancelled})


@dataclass
class FakeVoice:
    """Records what the window asks of the voice loop."""

    window: object = None
    hands_free: list[bool] = field(default_factory=list)
    pushes: list[str] = field(default_factory=list)
    played: list[bytes] = field(default_factory=list)
    stops: int = 0
    ends: list[bool] = field(default_factory=list)  # end_playback's interrupted
    prefs: list = field(default_factory=list)
    shut: bool = False

    def attach(self, window: object) -> None:
        self.window = window

    def set_hands_free(self, on: bool) -> None:
        self.hands_free.append(on)

    def press_to_talk(self) -> None:
        self.pushes.append("press")

    def release_to_talk(self) -> None:
        self.pushes.append("release")

    def play(self, pcm: bytes, rate: int) -> None:
        self.played.append(pcm)

    def stop_playback(self) -> None:
        self.stops += 1

    def end_playback(self, turn_id: str, interrupted: bool) -> None:
        self.ends.append(interrupted)

    def apply_preferences(self, prefs: object) -> None:
        self.prefs.append(prefs)

    def shutdown(self) -> None:
        self.shut = True


class FakeModelManager(QObject):
    """The model manager's signals and methods; the test says what the catalogue holds."""

    listed = Signal(list)
    progress = Signal(str, object, object)
    installed = Signal(str, str)
    stopped = Signal(str, str)
    removed = Signal(str, str)
    failed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0
        self.downloading: str | None = None
        self.removing: str | None = None
        self.shut = False

    def refresh(self) -> None:
        self.refreshes += 1

    def download(self, name: str) -> bool:
        self.downloading = name
        return True

    def remove(self, name: str) -> bool:
        self.removing = name
        return True

    def cancel(self) -> None:
        self.downloading = None

    def shutdown(self) -> None:
        self.shut = True
