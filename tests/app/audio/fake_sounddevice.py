"""A stand-in for the sounddevice module: devices described by the test, callbacks driven by the test."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


class PortAudioError(Exception):
    pass


def device(name: str, inputs: int = 0, outputs: int = 0, rate: float = 48000.0) -> dict:
    return {"name": name, "hostapi": 0, "max_input_channels": inputs, "max_output_channels": outputs,
            "default_samplerate": rate}


class FakeStream:
    def __init__(self, kind: str, samplerate, blocksize, device, channels, dtype, latency, callback,
                 finished_callback) -> None:
        self.kind, self.samplerate, self.blocksize, self.device = kind, samplerate, blocksize, device
        self.channels, self.dtype, self.latency = channels, dtype, latency
        self.callback, self.finished_callback = callback, finished_callback
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True
        self.finished_callback()  # PortAudio reports every stream that ends, closed by us or not

    def feed(self, block: np.ndarray) -> None:
        """An input block arrives from the device."""
        self.callback(block, len(block), None, None)

    def pull(self, frames: int | None = None, dac_delay: float = 0.0, underflow: bool = False) -> np.ndarray:
        """The device asks for the next output block (after running short, with `underflow`)."""
        frames = frames or self.blocksize
        out = np.full((frames, self.channels), np.nan, np.float32)  # NaN shows any sample left unwritten
        self.callback(out, frames, SimpleNamespace(currentTime=10.0, outputBufferDacTime=10.0 + dac_delay),
                      SimpleNamespace(output_underflow=underflow))
        return out

    def fail(self) -> None:
        """The device goes away mid-stream."""
        self.finished_callback()


class FakeSoundDevice:
    """Only the formats in `supported` ({(device index, rate, channels)}) open; None means any."""

    PortAudioError = PortAudioError

    def __init__(self, devices: list[dict], default: tuple[int, int] = (0, 0),
                 supported: set[tuple[int, int, int]] | None = None) -> None:
        self.devices = [{**d, "index": i} for i, d in enumerate(devices)]
        self.default = SimpleNamespace(device=list(default))
        self.supported = supported
        self.streams: list[FakeStream] = []

    def query_devices(self) -> list[dict]:
        return self.devices

    def query_hostapis(self) -> tuple[dict, ...]:
        return ({"name": "ALSA"},)

    def check(self, device: int, channels: int, samplerate: int) -> None:
        if self.supported is not None and (device, int(samplerate), channels) not in self.supported:
            raise PortAudioError("Invalid sample rate")

    def check_input_settings(self, device=None, channels=None, dtype=None, samplerate=None) -> None:
        self.check(device, channels, samplerate)

    def check_output_settings(self, device=None, channels=None, dtype=None, samplerate=None) -> None:
        self.check(device, channels, samplerate)

    def InputStream(self, **kwargs) -> FakeStream:  # noqa: N802 - sounddevice's name
        self.streams.append(FakeStream("input", **kwargs))
        return self.streams[-1]

    def OutputStream(self, **kwargs) -> FakeStream:  # noqa: N802 - sounddevice's name
        self.check(kwargs["device"], kwargs["channels"], kwargs["samplerate"])
        self.streams.append(FakeStream("output", **kwargs))
        return self.streams[-1]


def feed(stream: FakeStream, audio: np.ndarray) -> None:
    """Microphone audio arriving in 30 ms blocks."""
    for i in range(0, len(audio), 480):
        stream.feed(audio[i : i + 480, None])
