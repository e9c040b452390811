"""Capture with a fake sounddevice: native format, resampling from 48 kHz stereo, no device, device lost."""

from __future__ import annotations

import numpy as np
import pytest

from app.audio.capture import Capture
from tests.app.audio.fake_sounddevice import FakeSoundDevice, device


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_opens_16k_mono_and_cuts_frames() -> None:
    sd = FakeSoundDevice([device("mic", inputs=1)])
    capture = Capture(sd, frame_ms=30)
    assert capture.open() is None and capture.running
    (stream,) = sd.streams
    assert (stream.samplerate, stream.channels, stream.dtype) == (16000, 1, "int16")
    audio = (sine(440, 0.1, 16000) * 32767).astype(np.int16)
    for i in range(0, len(audio), 256):  # device blocks need not match frames
        stream.feed(audio[i : i + 256, None])
    frames = [capture.read(timeout=0.1) for _ in range(3)]
    assert all(len(f) == 960 for f in frames)
    assert b"".join(frames) == audio[: 3 * 480].tobytes()
    assert capture.read(timeout=0.01) is None  # 100 ms in, 90 ms handed out: no whole frame left


def test_the_callback_keeps_a_copy() -> None:
    sd = FakeSoundDevice([device("mic", inputs=1)])
    capture = Capture(sd)
    capture.open()
    block = np.ones((480, 1), np.int16)
    sd.streams[0].feed(block)
    block[:] = 7  # PortAudio reuses its buffer after the callback returns
    assert capture.read(timeout=0.1) == np.ones(480, np.int16).tobytes()


def test_a_48k_stereo_only_device_is_resampled_and_mixed_down() -> None:
    sd = FakeSoundDevice([device("USB stereo mic", inputs=2, rate=48000)], supported={(0, 48000, 2)})
    capture = Capture(sd)
    capture.open()
    (stream,) = sd.streams
    assert (stream.samplerate, stream.channels) == (48000, 2)
    left = sine(440, 1.0, 48000, 0.5)
    stereo = (np.stack([left, left * 0.5], axis=1) * 32767).astype(np.int16)  # mixed down: 0.375 amplitude
    for i in range(0, len(stereo), stream.blocksize):
        stream.feed(stereo[i : i + stream.blocksize])
    pcm = b""
    while (frame := capture.read(timeout=0.05)) is not None:
        pcm += frame
    audio = np.frombuffer(pcm, np.int16) / 32767
    assert len(audio) == pytest.approx(16000, abs=1000)  # less the filter delay and a partial frame
    assert dominant_frequency(audio, 16000) == pytest.approx(440, abs=3)
    steady = audio[2000:-2000]
    assert np.sqrt(np.mean(steady**2)) == pytest.approx(0.375 / np.sqrt(2), rel=0.02)


def test_no_input_device_is_a_notice() -> None:
    capture = Capture(FakeSoundDevice([device("HDMI", outputs=2)], default=(-1, 0)))
    notice = capture.open()
    assert "No microphone found" in notice and not capture.running


def test_a_device_that_will_not_open_is_a_notice() -> None:
    sd = FakeSoundDevice([device("mic", inputs=1)])

    def broken(**kwargs):
        raise sd.PortAudioError("Device unavailable")

    sd.InputStream = broken
    capture = Capture(sd)
    assert "Device unavailable" in capture.open() and not capture.running


def test_device_lost_mid_stream_ends_reading() -> None:
    sd = FakeSoundDevice([device("mic", inputs=1)])
    capture = Capture(sd)
    capture.open()
    sd.streams[0].fail()
    assert capture.read(timeout=1.0) is None and capture.ended and not capture.running


def test_close_is_not_a_lost_device() -> None:
    sd = FakeSoundDevice([device("mic", inputs=1)])
    capture = Capture(sd)
    capture.open()
    capture.close()
    assert not capture.ended and sd.streams[0].closed


def test_without_portaudio_there_is_no_microphone_but_no_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.audio.capture.load_sounddevice", lambda: None)
    capture = Capture()
    assert "No microphone found" in capture.open() and not capture.running
