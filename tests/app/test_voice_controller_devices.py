"""The voice controller on the real sounddevice against PulseAudio's virtual microphone and speaker.

espeak-ng speech is played into "micsrc" (heard on the virtual microphone "mic"); a fake engine
answers; what the controller plays to "spk" is recorded back from "spk.monitor". Skipped without
pulseaudio/espeak-ng, failed instead under OMNIVOX_E2E=require.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess  # noqa: E402 - Qt must see the platform first
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from app.audio.capture import Capture  # noqa: E402
from app.audio.endpointer import PRESETS  # noqa: E402
from app.audio.playback import Playback  # noqa: E402
from app.visual.context import Picture  # noqa: E402
from app.voice_controller import VoiceController  # noqa: E402
from tests.app.fakes import FakeEngine  # noqa: E402
from tests.e2e_env import Recorder  # noqa: E402


class Loop:
    """A started controller on the default (virtual) devices, recording what it reports."""

    def __init__(self, qtbot) -> None:
        self.qtbot = qtbot
        self.engine = FakeEngine()
        self.controller = VoiceController(self.engine, Playback(), Capture, lambda: Picture(b"the screen"))
        self.states: list[str] = []
        self.records: list[dict] = []
        self.controller.stateChanged.connect(self.states.append)
        self.controller.turnFinished.connect(lambda turn_id, record: self.records.append(record))
        levels: list[float] = []
        self.controller.levelChanged.connect(levels.append)
        assert self.controller.start(), "the virtual microphone did not open"
        assert self.controller.playback.available, "the virtual speaker did not open"
        # The ALSA pulse plugin stalls for a second or so after a stream starts: wait for a second of
        # audio (~30 meter updates), so the pre-roll before the question is there.
        qtbot.waitUntil(lambda: len(levels) >= 30, timeout=10000)

    def ask(self, path: Path, env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(["paplay", "--device=micsrc", str(path)], env=env)

    def answer(self, turn_id: str, seconds: float, amplitude: float) -> None:
        """The engine streams a 330 Hz reply in 100 ms chunks."""
        t = np.arange(int(seconds * 16000)) / 16000
        self.engine.textDelta.emit(turn_id, "On the screen ")
        for chunk in np.split((amplitude * np.sin(2 * np.pi * 330 * t)).astype("<f4"), int(seconds * 10)):
            self.engine.audioChunk.emit(turn_id, chunk.tobytes(), 16000)


def loud_seconds(recorded: np.ndarray, amplitude: float) -> float:
    return float((np.abs(recorded) > 0.1 * 32768 * amplitude).sum() / 16000)  # a sine is above 10 % of its peak 94 %


def test_a_spoken_question_is_one_turn_and_the_reply_is_heard_on_the_speaker(pulse, question, qtbot) -> None:
    path, speech_seconds = question
    loop = Loop(qtbot)
    try:
        loop.ask(path, pulse).wait(timeout=30)
        qtbot.waitUntil(lambda: len(loop.engine.requests) > 0, timeout=5000)
        qtbot.wait(1000)  # nothing more may follow
        assert len(loop.engine.requests) == 1
        request = loop.engine.requests[0]
        # The speech with the 0.5 s pre-roll before it and the 0.2 s tail after it.
        assert len(request.pcm) / 4 / 16000 == pytest.approx(speech_seconds + 0.7, abs=0.3)
        assert request.image == b"the screen" and loop.engine.prefetched == [b"the screen"]

        recorder = Recorder(pulse)
        qtbot.wait(300)
        loop.answer(request.turn_id, 1.0, 0.3)
        loop.engine.turnDone.emit(request.turn_id, {"timings_ms": {"first_audio": 120.0}})
        qtbot.waitUntil(lambda: len(loop.records) > 0, timeout=5000)
        qtbot.wait(300)
        recorded = recorder.stop()
    finally:
        loop.controller.shutdown()
    assert loop.states == ["listening", "user speaking", "thinking", "speaking", "listening", "idle"]
    assert loud_seconds(recorded, 0.3) == pytest.approx(0.94, abs=0.15)
    spectrum = np.abs(np.fft.rfft(recorded.astype(np.float64)))
    assert np.fft.rfftfreq(len(recorded), 1 / 16000)[spectrum.argmax()] == pytest.approx(330, abs=5)
    ms = loop.records[0]["timings_ms"]
    assert 0 <= ms["endpoint"] <= ms["request_sent"] <= ms["first_text"] <= ms["first_audio_played"]
    assert ms["endpoint"] == pytest.approx(PRESETS["normal"].hangover_ms, abs=150)  # the hangover, as the user waits it


def test_speaking_over_the_reply_stops_it_and_becomes_the_next_turn(pulse, question, qtbot) -> None:
    path, _ = question
    loop = Loop(qtbot)
    loop.controller.send_text("describe the screen")
    turn_id = loop.engine.requests[0].turn_id
    recorder = Recorder(pulse)
    try:
        qtbot.wait(300)
        # A 4 s reply at -23 dBFS: loud on the speaker, but the user at about -15 dBFS is louder than
        # its echo would be, so the echo gate (on: speakers, not headphones) lets them through.
        loop.answer(turn_id, 4.0, 0.1)  # the engine is still on it: no turnDone yet
        qtbot.wait(800)
        speaker = loop.ask(path, pulse)
        qtbot.waitUntil(lambda: len(loop.records) > 0, timeout=5000)
        assert loop.engine.cancelled == [turn_id] and loop.records[0]["interrupted"]
        speaker.wait(timeout=30)
        qtbot.waitUntil(lambda: len(loop.engine.requests) == 2, timeout=5000)
        recorded = recorder.stop()
    finally:
        loop.controller.shutdown()
    assert loop.states == ["listening", "thinking", "speaking", "user speaking", "thinking", "idle"]
    assert 0.3 < loud_seconds(recorded, 0.1) < 2.0  # it played, and was cut short of the 4 s that were queued
