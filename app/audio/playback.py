"""Speaker playback of streamed replies: a jitter buffer in front of a PortAudio output stream.

The engine sends 16 kHz float32 chunks as it makes them, unevenly. `write` resamples them to the
device rate (soxr keeps its filter state across chunks, so chunk seams are inaudible) and
queues them; the output callback only copies queued samples out. It never waits for audio:
when the queue runs dry it fades out over a few milliseconds and plays silence, then waits
for `prebuffer_ms` to be queued again before fading back in, so a slow engine gives a short
gap rather than a click or a stutter. `stop` (barge-in) silences the output at the next block.

The stream opens with the smallest of `OUTPUT_BUFFERS`; `settle`, called between replies, moves a
speaker that ran short during a reply to the next bigger one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import soxr

from app.audio.devices import Device, choose_device, load_sounddevice, negotiate
from app.audio.endpointer import SILENT_DB, rms_db
from engine.protocol import SAMPLE_RATE

log = logging.getLogger("omnivox.audio")

LEVEL_MS = 20  # the echo gate's margins were set with levels over 20 ms: keep that whatever the block


@dataclass(frozen=True)
class OutputBuffer:
    """How the output stream is opened: PortAudio's block size and suggested latency."""

    block_ms: int
    latency: float | str


# Smallest first. Three 10 ms blocks put a sample ~35 ms from callback to DAC on PulseAudio's ALSA
# plugin, which keeps the app's share of the reply latency within its 60 ms goal; 20 ms blocks at
# "low" take ~60 ms. A speaker that runs short while a reply sounds moves to the next bigger buffer
# between replies. Never mid-reply: reopening stalls the plugin for ~1.9 s — as does a late callback
# (no callbacks for ~1.9 s after the underrun's recovery), which is why a single one is enough to grow.
OUTPUT_BUFFERS = (OutputBuffer(10, 0.03), OutputBuffer(20, "low"))


class Playback:
    def __init__(self, sd: ModuleType | None = None, remembered: str | None = None, *,
                 buffers: tuple[OutputBuffer, ...] = OUTPUT_BUFFERS, prebuffer_ms: int = 80, fade_ms: float = 5.0,
                 on_notice: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sd = sd if sd is not None else load_sounddevice()  # None without PortAudio: "no device" notices
        self.remembered = remembered
        self.buffers, self.prebuffer_ms, self.fade_ms = buffers, prebuffer_ms, fade_ms
        self.buffer = buffers[0]  # the one the stream is open with
        self.on_notice = on_notice  # the device went away (PortAudio's thread) or would not reopen (settle)
        # Called from PortAudio's thread with each block as played (float32 mono) and the device
        # rate: the echo canceller's reference. It must only queue.
        self.reference: Callable[[np.ndarray, int], None] | None = None
        self.clock = clock
        self.device: Device | None = None
        self.rate, self.channels = SAMPLE_RATE, 1
        self.prebuffer = self.fade = 0  # in samples at the device rate, set by open
        self.stream = None
        # Shared with the audio callback, under `lock`; held only to move samples in or out.
        self.lock = threading.Lock()
        self.chunks: deque[np.ndarray] = deque()
        self.buffered = 0  # samples queued, at the device rate
        self.finishing = False  # the reply's last chunk is queued: play it out without waiting to prebuffer
        self.stop_requested = False
        self.underruns = 0  # the device ran short while a reply sounded, since the last `settle`
        # Written by the callback only.
        self.started = False  # playing, as opposed to waiting for the prebuffer
        self.last_sample = 0.0  # where a fade-out on stop starts from
        self.level = SILENT_DB
        self.level_span = 1  # LEVEL_MS in samples at the device rate, set by open
        self.recent = np.zeros(0, np.float32)  # the last LEVEL_MS played, for the level
        self.first_sample_time: float | None = None  # clock() when the reply's first sample reaches the speaker
        self.done = threading.Event()  # nothing queued or playing
        self.done.set()
        # Written by the caller's thread only.
        self.in_reply = False
        self.resampler: soxr.ResampleStream | None = None

    @property
    def available(self) -> bool:
        return self.stream is not None

    @property
    def playing(self) -> bool:
        return not self.done.is_set()

    @property
    def level_db(self) -> float:
        """The level of what is being played now, for the echo gate."""
        return self.level if self.playing else SILENT_DB

    def open(self) -> str | None:
        """Start the output stream. Returns a notice for the user (fallback device, or text-only), else None."""
        self.device, notice = choose_device(self.sd, "output", self.remembered)
        if self.device is None:
            return notice
        self.rate, self.channels = negotiate(self.sd, self.device, "output", "float32", SAMPLE_RATE)
        self.prebuffer = self.rate * self.prebuffer_ms // 1000
        self.fade = max(1, int(self.rate * self.fade_ms / 1000))
        self.level_span = self.rate * LEVEL_MS // 1000
        if error := self.start_stream():
            return f"Could not open the speaker “{self.device.stable_name}”: {error}. Replies are text only."
        return notice

    def start_stream(self) -> str | None:
        """Open and start the output stream on the chosen device with `self.buffer`; the error, if any."""
        assert self.device is not None
        try:
            stream = self.sd.OutputStream(
                samplerate=self.rate, blocksize=self.rate * self.buffer.block_ms // 1000, device=self.device.index,
                channels=self.channels, dtype="float32", latency=self.buffer.latency,
                callback=self.on_block, finished_callback=lambda: self.on_finished(stream),
            )
            self.stream = stream
            stream.start()
        except Exception as error:  # PortAudioError, or a device that vanished between listing and opening
            self.stream = None
            return str(error)
        return None

    def settle(self) -> None:
        """Between replies: if the speaker ran short in the last one, reopen it with the next bigger buffer."""
        if self.stream is None or self.playing:  # (a stopped reply still fading out: the next call decides)
            return
        with self.lock:
            underruns, self.underruns = self.underruns, 0
        bigger = self.buffers[self.buffers.index(self.buffer) + 1 :]
        if not underruns or not bigger:
            return
        log.warning("the speaker ran short %d times in a reply: reopening it with %d ms blocks, latency %s",
                    underruns, bigger[0].block_ms, bigger[0].latency)
        self.close()
        self.buffer = bigger[0]
        if error := self.start_stream():
            self.notify(f"Could not reopen the speaker: {error}. Replies are text only.")

    def write(self, pcm: bytes) -> None:
        """Queue a chunk of the reply: float32 little-endian, 16 kHz mono. Dropped when there is no speaker."""
        if self.stream is None:
            return
        if not self.in_reply:
            self.in_reply, self.first_sample_time = True, None
            self.resampler = (soxr.ResampleStream(SAMPLE_RATE, self.rate, 1, dtype="float32")
                              if self.rate != SAMPLE_RATE else None)
            with self.lock:
                self.finishing = False
            self.done.clear()
        audio = np.frombuffer(pcm, dtype="<f4")
        self.enqueue(self.resampler.resample_chunk(audio) if self.resampler else audio.copy())

    def finish(self) -> None:
        """The reply is complete: play out what is queued, however little."""
        if not self.in_reply:
            return
        if self.resampler is not None:
            self.enqueue(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        self.in_reply = False
        with self.lock:
            self.finishing = True

    def stop(self) -> None:
        """Barge-in: drop everything queued; the output fades to silence within the next block."""
        self.in_reply = False
        with self.lock:
            self.chunks.clear()
            self.buffered = 0
            self.finishing = False
            self.stop_requested = True
        if self.stream is None:
            self.done.set()

    def wait_done(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def close(self) -> None:
        stream, self.stream = self.stream, None  # no longer ours: its end is not a lost device
        if stream is not None:
            with contextlib.suppress(Exception):  # closing a stream whose device is gone can fail; it is closed anyway
                stream.close()
        self.done.set()

    def enqueue(self, audio: np.ndarray) -> None:
        if len(audio):
            with self.lock:
                self.chunks.append(audio.astype(np.float32, copy=False))
                self.buffered += len(audio)

    def on_block(self, outdata: np.ndarray, frames: int, time, status) -> None:
        out = np.zeros(frames, np.float32)
        with self.lock:
            if status.output_underflow and self.started:
                self.underruns += 1
            stopped, self.stop_requested = self.stop_requested, False
            if stopped:
                self.started = False
            resume = not self.started and (self.buffered >= self.prebuffer or (self.finishing and self.buffered > 0))
            n = self.take(out) if self.started or resume else 0
            reply_over = self.finishing and self.buffered == 0
            if reply_over:
                self.finishing = False
        if resume and n:
            out[: min(n, self.fade)] *= np.linspace(0, 1, min(n, self.fade), endpoint=False, dtype=np.float32)
        self.started = n == frames and not reply_over
        if n > 0 and not self.started:  # the queue ran dry (or the reply ended) inside this block
            k = min(n, self.fade)
            out[n - k : n] *= np.linspace(1, 0, k, dtype=np.float32)
        if self.last_sample and (stopped or n == 0):
            # The previous block ended on sound: ramp from its last sample down to silence (mixed
            # under a new reply's fade-in after a stop), never a jump.
            k = min(frames, self.fade)
            out[:k] += self.last_sample * np.linspace(1, 0, k, dtype=np.float32)
        if n and self.first_sample_time is None:
            latency = getattr(time, "outputBufferDacTime", 0.0) - getattr(time, "currentTime", 0.0)
            self.first_sample_time = self.clock() + (latency if 0 < latency < 1 else 0.0)
        outdata[:] = out[:, None]
        if self.reference is not None:
            self.reference(out, self.rate)
        self.last_sample = float(out[-1])
        self.recent = np.concatenate([self.recent, out])[-self.level_span :]
        self.level = rms_db(self.recent * 32768) if n else SILENT_DB
        if (reply_over or stopped) and not self.in_reply and not self.buffered:
            self.done.set()

    def take(self, out: np.ndarray) -> int:
        """Move up to len(out) queued samples into out; the caller holds the lock."""
        n = 0
        while n < len(out) and self.chunks:
            chunk = self.chunks[0]
            k = min(len(out) - n, len(chunk))
            out[n : n + k] = chunk[:k]
            if k == len(chunk):
                self.chunks.popleft()
            else:
                self.chunks[0] = chunk[k:]
            n += k
        self.buffered -= n
        return n

    def on_finished(self, stream) -> None:
        """PortAudio's thread: `stream` ended. Unless we closed it, its device went away."""
        if stream is not self.stream:
            return
        self.stream = None
        self.done.set()
        self.notify("The speaker stopped (unplugged?). Replies are text only.")

    def notify(self, notice: str) -> None:
        if self.on_notice is not None:
            self.on_notice(notice)
