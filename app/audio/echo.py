"""Acoustic echo cancellation: take our own reply out of the microphone signal before the endpointer hears it.

With speakers, the reply comes back into the microphone. WebRTC's echo canceller (AEC3, from its
audio processing module, through LiveKit's maintained binding: `livekit.rtc.AudioProcessingModule`)
learns the room's echo path from what we play and subtracts it, so the user can talk over a reply
at a normal voice. Without the binding, `make_echo_canceller` returns None and the endpointer's
echo gate works alone: then the user must be louder than the echo of the reply.

Two things AEC3 does that we work around: it takes 10-50 dB off a user talking over a reply when
*no* echo reaches the mic at all (speakers far away or muted, a headset while "speakers" is set):
it assumes an echo it cannot find hides under the voice. A faint copy of the reply mixed into
what it hears (FAINT_ECHO_DB down, FAINT_ECHO_MS late) is an echo it always finds, and it takes
that out too. And it delays and filters what it passes (a few ms, by its internal resampling), so
while no reply is audible the microphone's own frames go on (AEC3 still hears them, to keep learning).

Threads: the speaker's audio callback hands each played block to `played`, which only queues it;
the listener thread calls `clean` for each microphone frame, which feeds the queued reference to
the canceller first, so every call into the binding happens on that one thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np
import soxr

from engine.protocol import SAMPLE_RATE

CHUNK = SAMPLE_RATE // 100  # the canceller works on 10 ms
# Our estimate of (reference fed → its echo captured): the output and input buffers plus the room.
# AEC3 finds the real delay itself; this only tells it where to start looking.
DELAY_MS = 60
# How far under the echo the canceller's leftover stays, for the endpointer's echo gate: AEC3
# takes 25-35 dB off once it has converged, about 12 dB in the first second of a reply.
CANCELLED_DB = 12.0
FAINT_ECHO_DB = -30.0  # 30 dB of coupling is enough for AEC3 to leave the user whole, 40 dB is not
FAINT_ECHO_MS = 60
ECHO_TAIL_MS = 600  # after the reply's last sound: the output and input buffers, the room's reverberation
SILENT = 16  # int16 peak under which a reference chunk is silence (-66 dBFS)


class Apm(Protocol):
    """The canceller proper: 10 ms of 16 kHz mono int16 at a time, changed in place."""

    def render(self, chunk: np.ndarray) -> None: ...

    def capture(self, chunk: np.ndarray) -> None: ...


class LiveKitApm:
    """WebRTC's audio processing module with only the echo canceller on (our endpointer does the rest)."""

    def __init__(self, delay_ms: int = DELAY_MS) -> None:
        from livekit import rtc  # noqa: PLC0415 - optional: the gate works without it

        self.rtc = rtc
        self.apm = rtc.AudioProcessingModule(echo_cancellation=True)
        self.delay_ms = delay_ms

    def render(self, chunk: np.ndarray) -> None:
        self.apm.process_reverse_stream(self.frame(chunk))

    def capture(self, chunk: np.ndarray) -> None:
        frame = self.frame(chunk)
        self.apm.set_stream_delay_ms(self.delay_ms)  # WebRTC wants it with every captured frame
        self.apm.process_stream(frame)
        chunk[:] = np.frombuffer(frame.data, np.int16)

    def frame(self, chunk: np.ndarray):  # -> rtc.AudioFrame
        return self.rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, len(chunk))


class EchoCanceller:
    def __init__(self, apm: Apm) -> None:
        self.apm = apm
        self.lock = threading.Lock()
        self.pending: deque[tuple[np.ndarray, int]] = deque()  # played blocks, float32 mono, and their rate
        self.resampler: soxr.ResampleStream | None = None
        self.resampler_rate = SAMPLE_RATE
        self.reference = np.zeros(0, np.float32)  # 16 kHz, not yet a whole 10 ms chunk
        self.faint_lag = SAMPLE_RATE * FAINT_ECHO_MS // 1000
        self.history = np.zeros(self.faint_lag + SAMPLE_RATE // 10)  # the latest rendered reference, int16 scale
        self.since_sound = SAMPLE_RATE * ECHO_TAIL_MS // 1000  # rendered samples since the reference last sounded

    def played(self, block: np.ndarray, rate: int) -> None:
        """Any thread (the speaker's callback): a block just handed to the speaker, float32 mono."""
        with self.lock:
            self.pending.append((block.copy(), rate))

    def clean(self, frame: bytes) -> bytes:
        """Listener thread: a microphone frame (16 kHz int16, a multiple of 10 ms) without our echo."""
        self.feed_reference()
        raw = np.frombuffer(frame, np.int16)
        faint = self.history[len(self.history) - self.faint_lag - len(raw) : len(self.history) - self.faint_lag]
        samples = np.clip(np.round(raw + faint * 10 ** (FAINT_ECHO_DB / 20)), -32768, 32767).astype(np.int16)
        for start in range(0, len(samples) - CHUNK + 1, CHUNK):
            self.apm.capture(samples[start : start + CHUNK])
        if self.since_sound >= SAMPLE_RATE * ECHO_TAIL_MS // 1000:
            return frame  # no reply to hear: the microphone as it is
        return samples.tobytes()

    def feed_reference(self) -> None:
        with self.lock:
            blocks, self.pending = list(self.pending), deque()
        for block, rate in blocks:
            if rate != SAMPLE_RATE:
                if self.resampler is None or rate != self.resampler_rate:
                    self.resampler, self.resampler_rate = soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32"), rate
                block = self.resampler.resample_chunk(block)
            self.reference = np.concatenate([self.reference, block])
        whole = len(self.reference) // CHUNK * CHUNK
        pcm = np.clip(np.round(self.reference[:whole] * 32768), -32768, 32767).astype(np.int16)
        self.reference = self.reference[whole:]
        for start in range(0, whole, CHUNK):
            chunk = pcm[start : start + CHUNK]
            self.apm.render(chunk)
            self.since_sound = 0 if np.abs(chunk).max() > SILENT else self.since_sound + CHUNK
        if whole:
            self.history = np.concatenate([self.history, pcm])[-len(self.history) :]


def make_echo_canceller(apm: Callable[[], Apm] = LiveKitApm) -> EchoCanceller | None:
    """The echo canceller, or None where the binding cannot load (not installed, no wheel for this machine)."""
    try:
        return EchoCanceller(apm())
    except (ImportError, OSError, RuntimeError):
        return None
