"""The echo canceller: reference plumbing on a stand-in, and WebRTC's AEC3 (LiveKit binding) on a simulated room."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soxr

from app.audio.echo import (
    CANCELLED_DB,
    ECHO_TAIL_MS,
    FAINT_ECHO_DB,
    FAINT_ECHO_MS,
    EchoCanceller,
    LiveKitApm,
    make_echo_canceller,
)
from app.audio.spectrum import rms_db
from tests.app.audio.sounds import speech

RATE = 16000


class RecordingApm:
    def __init__(self) -> None:
        self.rendered: list[np.ndarray] = []
        self.captured: list[np.ndarray] = []
        self.threads: set[str] = set()

    def render(self, chunk: np.ndarray) -> None:
        self.threads.add(threading.current_thread().name)
        self.rendered.append(chunk.copy())

    def capture(self, chunk: np.ndarray) -> None:
        self.threads.add(threading.current_thread().name)
        self.captured.append(chunk.copy())
        chunk[:] = 0  # "all echo"


def test_played_blocks_at_the_device_rate_reach_the_canceller_at_16_khz_in_10_ms_chunks_before_the_frame() -> None:
    apm = RecordingApm()
    canceller = EchoCanceller(apm)
    played = (speech(0.5) / 32768).astype(np.float32)
    at_48k = soxr.resample(played, RATE, 48000).astype(np.float32)
    player = threading.Thread(target=lambda: [canceller.played(at_48k[i : i + 960], 48000)
                                              for i in range(0, len(at_48k), 960)], name="portaudio")
    player.start()
    player.join()
    assert apm.rendered == []  # the speaker's thread only queues
    cleaned = canceller.clean(speech(0.03).tobytes())
    assert apm.threads == {threading.current_thread().name}
    assert {len(chunk) for chunk in apm.rendered} == {160} and len(apm.captured) == 3
    reference = np.concatenate(apm.rendered).astype(np.float64)
    # What was rendered is what was played (the resampler holds back a few ms of its filter).
    assert len(reference) >= len(played) - 480
    expected = played[: len(reference)] * 32768
    assert np.corrcoef(reference[480:], expected[480:])[0, 1] > 0.99
    assert cleaned == bytes(960)


def test_with_no_reply_audible_the_microphone_passes_as_it_is_and_the_canceller_still_hears_it() -> None:
    apm = RecordingApm()
    canceller = EchoCanceller(apm)
    voice = speech(0.03).tobytes()
    canceller.played(np.zeros(480, np.float32), RATE)  # the speaker plays silence between replies
    assert canceller.clean(voice) == voice and len(apm.captured) == 3
    canceller.played((speech(0.1) / 32768).astype(np.float32), RATE)  # a reply sounds: its echo comes out
    assert canceller.clean(voice) == bytes(960)
    canceller.played(np.zeros(RATE * ECHO_TAIL_MS // 1000 + 480, np.float32), RATE)  # ...and its echo has died away
    assert canceller.clean(voice) == voice


def test_the_canceller_hears_a_faint_late_copy_of_the_reply_on_top_of_the_microphone() -> None:
    apm = RecordingApm()
    canceller = EchoCanceller(apm)
    reply = np.full(RATE // 2, 0.5, np.float32)  # played: 0.5 s at half scale
    canceller.played(reply, RATE)
    canceller.clean(bytes(960))
    assert len(reply) >= FAINT_ECHO_MS / 1000 * RATE + 480  # so the 30 ms heard, FAINT_ECHO_MS late, are all reply
    heard = np.concatenate(apm.captured).astype(np.float64)
    assert np.allclose(heard, 0.5 * 32768 * 10 ** (FAINT_ECHO_DB / 20), atol=1)


def test_without_the_binding_there_is_no_canceller_and_the_gate_works_alone() -> None:
    def missing() -> LiveKitApm:
        raise ImportError("No module named 'livekit'")

    assert make_echo_canceller(missing) is None


def spoken_like(seconds: float, dbfs: float = -20.0) -> np.ndarray:
    """A reply's sound for the canceller: noise swelling and fading at the syllable rate, float32.

    Broadband like speech: AEC3 finds the echo's delay by correlation, which a pure harmonic tone
    (the same every few milliseconds) leaves ambiguous.
    """
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.default_rng(1).standard_normal(len(t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return (noise / np.sqrt(np.mean(noise**2)) * 10 ** (dbfs / 20)).astype(np.float32)


def room(far: np.ndarray, delay_s: float = 0.07, gain: float = 0.8) -> np.ndarray:
    """What the mic hears of the speaker: delayed, with a reflection, louder than a quiet room."""
    d = int(delay_s * RATE)
    echo = np.zeros_like(far)
    echo[d:] += gain * far[:-d]
    echo[d + 200 :] += 0.3 * gain * far[: -d - 200]
    return echo


def test_webrtc_aec3_takes_the_echo_out_and_keeps_the_user_talking_over_it() -> None:
    canceller = make_echo_canceller()
    assert canceller is not None, "livekit (WebRTC audio processing) is a dependency"
    far = spoken_like(6.0)
    user = np.zeros_like(far)
    user[4 * RATE : 5 * RATE] = speech(1.0, dbfs=-24.0)[::-1] / 32768  # a different "voice" over the reply
    mic = room(far) + user + np.random.default_rng(0).standard_normal(len(far)).astype(np.float32) * 3e-4
    at_48k = soxr.resample(far, RATE, 48000).astype(np.float32)
    cleaned = []
    for i in range(len(far) // 480):  # the speaker plays 30 ms, the mic delivers 30 ms
        canceller.played(at_48k[i * 1440 : (i + 1) * 1440], 48000)
        frame = np.clip(mic[i * 480 : (i + 1) * 480] * 32768, -32768, 32767).astype(np.int16)
        cleaned.append(np.frombuffer(canceller.clean(frame.tobytes()), np.int16))
    out = np.concatenate(cleaned)

    def level(signal: np.ndarray, second: int) -> float:
        return rms_db(signal[second * RATE : (second + 1) * RATE] * (32768 if signal.dtype != np.int16 else 1))

    for second in (1, 2, 3):  # converged
        assert level(out, second) <= level(mic, second) - 25
    for second in (0, 5):  # converging, and finding the path again after the user spoke: what the gate counts on
        assert level(out, second) <= level(mic, second) - CANCELLED_DB
    assert level(out, 4) == pytest.approx(level(user, 4), abs=3)  # the user over the reply is kept


def test_webrtc_aec3_leaves_a_user_whole_when_no_echo_reaches_the_mic() -> None:
    # Speakers set, but none of the reply reaches the mic (muted, far away, a headset): AEC3 alone
    # takes 10-50 dB off the user talking over it; with the faint known echo it does not.
    canceller = make_echo_canceller()
    assert canceller is not None
    t = np.arange(4 * RATE) / RATE
    reply = (0.1 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)  # a tone: the hardest for AEC3
    mic = np.zeros(len(t))
    mic[RATE : 3 * RATE] = speech(2.0, dbfs=-15.0)
    cleaned = []
    for i in range(len(t) // 480):
        canceller.played(reply[i * 480 : (i + 1) * 480], RATE)
        frame = mic[i * 480 : (i + 1) * 480].astype(np.int16).tobytes()
        cleaned.append(np.frombuffer(canceller.clean(frame), np.int16))
    out = np.concatenate(cleaned)
    for start in range(RATE, 3 * RATE, RATE // 4):
        assert rms_db(out[start : start + RATE // 4]) == pytest.approx(rms_db(mic[start : start + RATE // 4]), abs=3)
