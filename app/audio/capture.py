"""Microphone capture: any input device in, 16 kHz mono int16 frames out.

The PortAudio callback runs on the audio thread, where a late return means dropped audio, so
it only copies the block into a queue. `read` (on the reader's thread) does everything else:
mixing down to mono, resampling with soxr when the device cannot run at 16 kHz, and cutting
the stream into frames of the size the endpointer wants.
"""

from __future__ import annotations

import contextlib
import queue
from types import ModuleType

import numpy as np
import soxr

from app.audio.devices import Device, choose_device, load_sounddevice, negotiate
from engine.protocol import SAMPLE_RATE


class Capture:
    """One input stream. `open`, then `read` frames until it returns None with `ended` set."""

    def __init__(self, sd: ModuleType | None = None, remembered: str | None = None, frame_ms: int = 30,
                 max_queued_s: float = 10.0) -> None:
        self.sd = sd if sd is not None else load_sounddevice()  # None without PortAudio: "no device" notices
        self.remembered = remembered
        self.frame_bytes = SAMPLE_RATE * frame_ms // 1000 * 2
        self.frame_ms = frame_ms
        self.blocks: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=int(max_queued_s * 1000 / frame_ms))
        self.pending = bytearray()  # 16 kHz mono int16 not yet handed out as a whole frame
        self.device: Device | None = None
        self.rate = SAMPLE_RATE
        self.channels = 1
        self.resampler: soxr.ResampleStream | None = None
        self.stream = None
        self.closing = False
        self.ended = False  # the stream stopped by itself (device unplugged, driver error)
        self.dropped_blocks = 0  # the reader fell more than max_queued_s behind

    @property
    def running(self) -> bool:
        return self.stream is not None and not self.ended

    def open(self) -> str | None:
        """Start recording. Returns a notice for the user (fallback device, or no microphone), else None."""
        self.device, notice = choose_device(self.sd, "input", self.remembered)
        if self.device is None:
            return notice
        self.rate, self.channels = negotiate(self.sd, self.device, "input", "int16", SAMPLE_RATE)
        if self.rate != SAMPLE_RATE or self.channels != 1:
            self.resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32")
        try:
            self.stream = self.sd.InputStream(
                samplerate=self.rate, blocksize=self.rate * self.frame_ms // 1000, device=self.device.index,
                channels=self.channels, dtype="int16", latency="low",
                callback=self.on_block, finished_callback=self.on_finished,
            )
            self.stream.start()
        except Exception as error:  # PortAudioError, or a device that vanished between listing and opening
            self.stream = None
            return f"Could not open the microphone “{self.device.stable_name}”: {error}. Typing still works."
        return notice

    def on_block(self, indata: np.ndarray, frames: int, time, status) -> None:
        try:
            self.blocks.put_nowait(indata.copy())
        except queue.Full:
            self.dropped_blocks += 1

    def on_finished(self) -> None:
        if not self.closing:
            self.ended = True
            self.blocks.put(None)  # wake the reader

    def read(self, timeout: float | None = None) -> bytes | None:
        """The next frame of 16 kHz mono int16, or None after timeout seconds or once the stream ended."""
        while len(self.pending) < self.frame_bytes:
            try:
                block = self.blocks.get(timeout=timeout)
            except queue.Empty:
                return None
            if block is None:
                return None
            self.pending += self.convert(block)
        frame = bytes(self.pending[: self.frame_bytes])
        del self.pending[: self.frame_bytes]
        return frame

    def convert(self, block: np.ndarray) -> bytes:
        if self.resampler is None:
            return block.tobytes()
        mono = block.astype(np.float32).mean(axis=1) / 32768
        out = self.resampler.resample_chunk(mono)
        return np.clip(np.round(out * 32768), -32768, 32767).astype(np.int16).tobytes()

    def close(self) -> None:
        self.closing = True
        if self.stream is not None:
            with contextlib.suppress(Exception):  # closing a stream whose device is gone can fail; it is closed anyway
                self.stream.close()
            self.stream = None
