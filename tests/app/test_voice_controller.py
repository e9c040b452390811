"""The voice controller with a fake engine and the fake sounddevice under real Capture, Endpointer and Playback.

The microphone is fed generated speech through the fake input stream (the listener's reader thread
runs for real); the speaker advances only when a test pulls its blocks, so playback is deterministic.
"""

from __future__ import annotations

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Callable, Iterator  # noqa: E402 - Qt must see the platform first
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QCoreApplication, QObject, Signal  # noqa: E402

from app.audio.capture import Capture  # noqa: E402
from app.audio.echo import CANCELLED_DB, EchoCanceller  # noqa: E402
from app.audio.endpointer import ECHO_GAIN_DB, PRESETS, Level, SpeechEnded, SpeechStarted  # noqa: E402
from app.audio.playback import OutputBuffer, Playback  # noqa: E402
from app.visual.context import Picture  # noqa: E402
from app.voice_controller import Heard, LevelThrottle, VoiceController, VoiceSettings, WindowVoice  # noqa: E402
from tests.app.audio.fake_sounddevice import FakeSoundDevice, device, feed  # noqa: E402
from tests.app.audio.sounds import quiet, speech  # noqa: E402


@dataclass
class Request:
    pcm: bytes | None
    rate: int
    image: bytes | None
    text: str | None
    max_new_tokens: int


class FakeEngine(QObject):
    textDelta = Signal(str, str)
    audioChunk = Signal(str, bytes, int)
    turnDone = Signal(str, dict)
    error = Signal(str, str)
    engineDied = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.responds: list[Request] = []
        self.prefetches: list[bytes] = []
        self.cancels: list[str] = []

    def respond(self, pcm: bytes | None, rate: int, image: bytes | None, text: str | None, max_new_tokens: int) -> str:
        self.responds.append(Request(pcm, rate, image, text, max_new_tokens))
        return f"t{len(self.responds)}"

    def prefetch(self, image: bytes) -> str:
        self.prefetches.append(image)
        return f"p{len(self.prefetches)}"

    def cancel(self, turn_id: str) -> None:
        self.cancels.append(turn_id)


class Clock:
    """Time moves only when the test says so, so timings can be checked to the millisecond."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def voice_reply(seconds: float) -> bytes:
    """A spoken-like reply at -26 dBFS (its echo must look like speech to the endpointer)."""
    return (speech(seconds, dbfs=-26.0).astype(np.float32) / 32768).astype("<f4").tobytes()


def reply(seconds: float, rate: int = 16000, amplitude: float = 0.05) -> bytes:
    """Reply audio quiet enough that the echo gate lets the user's -20 dBFS voice through."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype("<f4").tobytes()


class Rig:
    def __init__(self, qtbot, *, microphone: bool = True, echo: EchoCanceller | None = None,
                 buffers: tuple[OutputBuffer, ...] = (OutputBuffer(20, "low"),), **settings) -> None:
        self.qtbot = qtbot
        devices = [device("speaker", outputs=1, rate=16000)] + ([device("mic", inputs=1, rate=16000)] * microphone)
        self.sd = FakeSoundDevice(devices, default=(1 if microphone else -1, 0))
        self.clock = Clock()
        self.engine = FakeEngine()
        self.frame: bytes | None = b"frame 1"
        self.playback = Playback(self.sd, clock=self.clock, buffers=buffers)
        self.controller = VoiceController(self.engine, self.playback, lambda: Capture(self.sd), self.picture,
                                          settings=VoiceSettings(**settings), clock=self.clock,
                                          echo_canceller=lambda: echo)
        self.states: list[str] = []
        self.finished: list[dict] = []
        self.notices: list[str] = []
        self.texts: list[tuple[str, str]] = []
        self.levels: list[float] = []
        self.controller.stateChanged.connect(self.states.append)
        self.controller.turnFinished.connect(lambda turn_id, record: self.finished.append({"id": turn_id, **record}))
        self.controller.notice.connect(self.notices.append)
        self.controller.replyText.connect(lambda turn_id, text: self.texts.append((turn_id, text)))
        self.controller.levelChanged.connect(self.levels.append)

    def picture(self) -> Picture | None:
        """The camera's frame, encoded already (the tests of a picture still encoding make their own)."""
        return Picture(self.frame) if self.frame is not None else None

    def type_turn(self, text: str) -> str:
        """A typed turn; returns its turn id."""
        self.controller.send_text(text)
        return f"t{len(self.engine.responds)}"

    def stream(self, kind: str):
        return next(s for s in self.sd.streams if s.kind == kind)

    def say(self, audio: np.ndarray) -> None:
        feed(self.stream("input"), audio)

    def heard_all(self) -> None:
        """Wait until the reader has taken in everything fed and its events have reached the controller."""
        listener = self.controller.listener
        self.qtbot.waitUntil(listener.capture.blocks.empty, timeout=5000)
        # The reader runs commands between frames: once this one ran, the last frame's events are posted.
        caught_up = threading.Event()
        listener.commands.put(lambda: caught_up.set() or [])
        self.qtbot.waitUntil(caught_up.is_set, timeout=5000)
        QCoreApplication.processEvents()  # deliver what the reader posted before the marker

    def wait_state(self, state: str) -> None:
        self.qtbot.waitUntil(lambda: self.controller.state == state, timeout=5000)

    def wait_requests(self, count: int) -> Request:
        self.qtbot.waitUntil(lambda: len(self.engine.responds) >= count, timeout=5000)
        return self.engine.responds[count - 1]

    def pull(self, blocks: int = 1) -> np.ndarray:
        return np.concatenate([self.stream("output").pull() for _ in range(blocks)])

    def play_out(self) -> np.ndarray:
        """The speaker plays until the playback has nothing left."""
        played = [self.pull()]
        while self.playback.playing:
            played.append(self.pull())
            assert len(played) < 1000
        return np.concatenate(played)

    def reply_spoken(self, turn_id: str) -> None:
        """The engine's reply starts: some text, then audio that reaches the speaker."""
        self.engine.textDelta.emit(turn_id, "It is ")
        self.engine.audioChunk.emit(turn_id, reply(2.0), 16000)
        self.pull(5)


@pytest.fixture
def make_rig(qtbot) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(**kwargs) -> Rig:
        rigs.append(Rig(qtbot, **kwargs))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.controller.shutdown()


@pytest.fixture
def rig(make_rig) -> Rig:
    rig = make_rig()
    assert rig.controller.start()
    return rig


def test_a_full_turn_goes_through_every_state_and_records_its_timings(rig: Rig) -> None:
    rig.say(np.concatenate([quiet(0.5), speech(1.0), quiet(1.2)]))
    request = rig.wait_requests(1)
    assert rig.states == ["listening", "user speaking", "thinking"]
    # Pre-roll (all 0.5 s of the quiet before), the speech and the 0.2 s tail, as float32 for the engine.
    assert len(request.pcm) / 4 / 16000 == pytest.approx(1.7, abs=0.05)
    assert (request.rate, request.image, request.text, request.max_new_tokens) == (16000, b"frame 1", None, 512)

    rig.clock.now += 0.3
    rig.engine.textDelta.emit("t1", "A cup ")
    rig.clock.now += 0.2
    rig.engine.audioChunk.emit("t1", reply(0.5), 16000)
    rig.pull()
    rig.clock.now += 0.1
    rig.engine.textDelta.emit("t1", "of tea.")
    rig.engine.turnDone.emit("t1", {"text": "A cup of tea.", "timings_ms": {"prefill": 80.0}, "cancelled": False})
    assert rig.states[-1] == "speaking"  # until the last sample has played
    played = rig.play_out()
    rig.wait_state("listening")

    assert rig.states == ["listening", "user speaking", "thinking", "speaking", "listening"]
    assert rig.texts == [("t1", "A cup "), ("t1", "of tea.")]
    assert np.abs(played).max() == pytest.approx(0.05, abs=0.005)
    (record,) = rig.finished
    assert record["id"] == "t1" and not record["interrupted"] and record["error"] is None
    assert np.frombuffer(record["user_pcm"], "<i2").astype(np.float32).tobytes() == (
        np.frombuffer(request.pcm, "<f4") * 32768).tobytes()
    assert record["image"] == b"frame 1" and record["reply_text"] == "A cup of tea."
    assert record["reply_audio"] == reply(0.5) and record["engine_timings_ms"] == {"prefill": 80.0}
    ms = record["timings_ms"]
    # The user stopped one hangover (a quiet room's, to a 30 ms frame) before the endpointer said so;
    # the request went out at once; then 300 ms to the first text and 500 ms to the first sound.
    hangover = PRESETS["normal"].hangover_ms
    assert ms["speech_end"] == 0 and hangover <= ms["endpoint"] <= hangover + 30
    assert ms["request_sent"] == ms["endpoint"]
    assert ms["first_text"] == pytest.approx(ms["endpoint"] + 300)
    assert ms["first_audio_played"] == pytest.approx(ms["endpoint"] + 500)
    assert record["timings"]["first_audio_played"] == pytest.approx(100.5)
    assert record["timings"]["speech_end"] < record["timings"]["endpoint"] <= record["timings"]["first_text"]


def test_the_picture_is_the_one_current_when_the_user_started_speaking(rig: Rig) -> None:
    rig.say(np.concatenate([quiet(0.5), speech(0.8)]))
    rig.wait_state("user speaking")
    assert rig.engine.prefetches == [b"frame 1"]  # sent while the user is still talking
    rig.frame = b"frame 2"  # the camera moves on while they talk
    rig.say(np.concatenate([speech(0.5), quiet(1.2)]))
    assert rig.wait_requests(1).image == b"frame 1"
    assert rig.engine.prefetches == [b"frame 1"]


def test_no_picture_means_no_prefetch_and_a_failing_camera_costs_only_the_picture(rig: Rig) -> None:
    rig.frame = None
    rig.say(np.concatenate([quiet(0.5), speech(0.8), quiet(1.2)]))
    assert rig.wait_requests(1).image is None
    rig.engine.turnDone.emit("t1", {})

    def broken() -> Picture:
        raise OSError("camera unplugged")

    rig.controller.visual_context = broken
    rig.say(np.concatenate([speech(0.8), quiet(1.2)]))
    assert rig.wait_requests(2).image is None
    assert rig.engine.prefetches == []
    assert rig.notices == ["Could not take the picture for this turn: camera unplugged"]


def test_a_picture_encoded_while_the_user_speaks_is_prefetched_then(rig: Rig) -> None:
    picture = Picture()  # still being encoded on a worker
    rig.controller.visual_context = lambda: picture
    rig.say(np.concatenate([quiet(0.5), speech(0.8)]))
    rig.wait_state("user speaking")
    assert rig.engine.prefetches == []
    picture.arrive(b"frame png")
    assert rig.engine.prefetches == [b"frame png"]
    rig.say(np.concatenate([speech(0.5), quiet(1.2)]))
    assert rig.wait_requests(1).image == b"frame png"


def test_a_turn_waits_for_its_picture_and_turns_go_out_in_the_order_they_came(rig: Rig) -> None:
    pictures: list[Picture] = []
    rig.controller.visual_context = lambda: pictures.append(Picture()) or pictures[-1]
    rig.say(np.concatenate([quiet(0.5), speech(0.8), quiet(1.2)]))
    rig.wait_state("thinking")
    rig.heard_all()
    assert rig.engine.responds == []  # the speech has ended, its picture is not encoded yet
    rig.controller.send_text("and this?")  # typed meanwhile, with a picture encoded sooner
    pictures[1].arrive(b"typed frame")
    assert rig.engine.responds == []
    pictures[0].arrive(b"spoken frame")
    assert [(r.image, r.text) for r in rig.engine.responds] == [(b"spoken frame", None), (b"typed frame", "and this?")]
    assert rig.engine.prefetches == []  # too late to be ahead of anything: the turn carries the picture
    assert rig.engine.cancels == ["t1"] and rig.controller.state == "thinking"  # the newer turn wins


def test_a_picture_that_cannot_be_encoded_costs_only_the_picture(rig: Rig) -> None:
    picture = Picture()
    rig.controller.visual_context = lambda: picture
    rig.say(np.concatenate([quiet(0.5), speech(0.8), quiet(1.2)]))
    rig.wait_state("thinking")
    picture.fail("MemoryError: out of memory")
    assert rig.wait_requests(1).image is None and rig.engine.prefetches == []
    assert rig.notices == ["The picture could not be encoded (MemoryError: out of memory); the turn was sent "
                           "without it."]


def test_barge_in_stops_the_reply_cancels_it_and_the_new_speech_is_the_next_turn(rig: Rig) -> None:
    rig.say(np.concatenate([quiet(0.5), speech(1.0), quiet(1.2)]))
    rig.wait_requests(1)
    rig.reply_spoken("t1")
    assert rig.controller.state == "speaking" and rig.playback.playing

    rig.clock.now += 1.0
    rig.say(speech(1.0))
    rig.wait_state("user speaking")
    assert rig.engine.cancels == ["t1"]
    (record,) = rig.finished
    assert record["interrupted"] and record["reply_text"] == "It is " and record["timings"]["first_audio_played"] == 100
    after = rig.pull(2)
    assert np.abs(after[:320]).max() <= 0.05 and np.abs(after[320:]).max() == 0  # a fade, then silence
    assert not rig.playback.playing

    rig.say(quiet(1.2))
    second = rig.wait_requests(2)
    assert len(second.pcm) / 4 / 16000 == pytest.approx(1.7, abs=0.05)  # pre-roll, the new speech, its tail
    assert rig.states == ["listening", "user speaking", "thinking", "speaking", "user speaking", "thinking"]
    rig.engine.textDelta.emit("t1", "late words of the cancelled reply")
    assert rig.texts == [("t1", "It is ")]


def test_a_reply_the_speaker_ran_short_in_moves_it_to_the_bigger_buffer_once_the_turn_is_over(make_rig) -> None:
    rig = make_rig(buffers=(OutputBuffer(20, 0.03), OutputBuffer(20, "low")))
    assert rig.controller.start()
    rig.say(np.concatenate([quiet(0.5), speech(1.0), quiet(1.2)]))
    rig.wait_requests(1)
    rig.reply_spoken("t1")
    speaker = rig.stream("output")
    speaker.pull(underflow=True)
    assert speaker.latency == 0.03 and not speaker.closed  # never mid-reply
    rig.engine.turnDone.emit("t1", {"text": "It is ", "cancelled": False})
    rig.play_out()
    rig.wait_state("listening")
    assert speaker.closed and rig.sd.streams[-1].latency == "low" and rig.sd.streams[-1].started
    assert rig.notices == []


def test_with_barge_in_off_speech_over_the_reply_is_ignored(make_rig) -> None:
    rig = make_rig(barge_in=False)
    assert rig.controller.start()
    rig.say(np.concatenate([quiet(0.5), speech(1.0), quiet(1.2)]))
    rig.wait_requests(1)
    rig.reply_spoken("t1")
    rig.say(np.concatenate([speech(1.0), quiet(1.2)]))
    rig.heard_all()
    assert rig.engine.cancels == [] and len(rig.engine.responds) == 1
    assert rig.controller.state == "speaking" and rig.finished == []

    rig.engine.turnDone.emit("t1", {})
    assert np.abs(rig.play_out()).max() > 0.04  # the reply played on
    rig.wait_state("listening")
    assert not rig.finished[0]["interrupted"]
    assert len(rig.engine.responds) == 1


def test_push_to_talk_turns_run_from_press_to_release_and_a_press_always_interrupts(make_rig) -> None:
    rig = make_rig(mode="push_to_talk", barge_in=False)
    assert rig.controller.start()
    assert rig.controller.state == "idle"
    rig.say(np.concatenate([quiet(1.0), speech(1.0)]))  # speaking without the key starts nothing
    rig.heard_all()
    assert rig.states == []
    rig.controller.press()
    rig.wait_state("user speaking")
    rig.say(np.concatenate([speech(1.0), quiet(0.3)]))
    rig.heard_all()
    rig.controller.release()
    first = rig.wait_requests(1)
    assert len(first.pcm) / 4 / 16000 == pytest.approx(0.5 + 1.3, abs=0.06)  # pre-roll, then press to release

    rig.reply_spoken("t1")
    rig.controller.press()  # the key is never the reply's echo: it interrupts even with barge-in off
    rig.wait_state("user speaking")
    assert rig.engine.cancels == ["t1"] and rig.finished[0]["interrupted"]
    rig.pull()  # the speaker takes in the stop
    rig.say(speech(0.6))
    rig.heard_all()
    rig.controller.release()
    rig.wait_requests(2)
    rig.engine.turnDone.emit("t2", {})
    rig.wait_state("idle")  # push-to-talk rests in idle
    assert rig.states == ["user speaking", "thinking", "speaking", "user speaking", "thinking", "idle"]

    rig.controller.set_mode("hands_free")
    assert rig.controller.state == "listening"
    rig.say(np.concatenate([speech(1.0), quiet(1.2)]))
    rig.wait_requests(3)
    rig.controller.set_mode("push_to_talk")  # mid-turn: the turn goes on, the rest state changes
    rig.engine.turnDone.emit("t3", {})
    rig.wait_state("idle")


def test_a_typed_turn_takes_the_same_path_with_the_current_picture(rig: Rig) -> None:
    rig.frame = b"screen"
    rig.clock.now = 200.0
    turn_id = rig.type_turn("what is this?")
    assert rig.engine.responds == [Request(None, 16000, b"screen", "what is this?", 512)]
    assert rig.controller.state == "thinking"
    rig.clock.now += 0.4
    rig.engine.textDelta.emit(turn_id, "A chart.")
    rig.engine.turnDone.emit(turn_id, {})
    rig.wait_state("listening")
    (record,) = rig.finished
    assert record["user_text"] == "what is this?" and record["user_pcm"] is None and record["reply_audio"] == b""
    assert record["timings_ms"] == {"speech_end": None, "endpoint": None, "request_sent": 0.0, "first_text": 400.0,
                                    "first_audio_played": None}


def test_typing_over_a_reply_cancels_it(rig: Rig) -> None:
    first = rig.type_turn("tell me a story")
    rig.reply_spoken(first)
    rig.type_turn("never mind")
    assert rig.engine.cancels == [first] and rig.finished[0]["interrupted"]
    assert rig.controller.state == "thinking"


def test_reply_audio_at_another_rate_is_resampled_for_the_speaker(rig: Rig) -> None:
    turn_id = rig.type_turn("hi")
    for chunk in np.split(np.frombuffer(reply(1.0, rate=24000), "<f4"), 4):
        rig.engine.audioChunk.emit(turn_id, chunk.tobytes(), 24000)
    rig.engine.turnDone.emit(turn_id, {})
    played = rig.play_out()
    rig.wait_state("listening")
    assert len(rig.finished[0]["reply_audio"]) / 4 == pytest.approx(16000, abs=2)
    # A sine is above 10 % of its peak 94 % of the time: all of the second arrived, at the right speed.
    assert (np.abs(played) > 0.005).sum() == pytest.approx(16000 * 0.94, rel=0.02)


def test_the_stop_button_ends_the_reply_and_rests(make_rig) -> None:
    for mode, rest in (("hands_free", "listening"), ("push_to_talk", "idle")):
        rig = make_rig(mode=mode)
        assert rig.controller.start()
        turn_id = rig.type_turn("hi")
        rig.reply_spoken(turn_id)
        rig.controller.stop()
        assert rig.controller.state == rest
        assert rig.engine.cancels == [turn_id] and rig.finished[0]["interrupted"]
        rig.pull()
        assert not rig.playback.playing
        rig.controller.stop()  # nothing to stop: harmless
        assert len(rig.finished) == 1


def test_an_engine_error_ends_the_turn_with_a_notice(rig: Rig) -> None:
    turn_id = rig.type_turn("hi")
    rig.engine.error.emit("p7", "could not decode the image")  # about another request: the turn goes on
    assert rig.controller.state == "thinking" and rig.notices == []
    rig.engine.textDelta.emit(turn_id, "Hel")
    rig.engine.error.emit(turn_id, "CUDA out of memory")
    assert rig.controller.state == "listening"
    assert rig.notices == ["The reply failed: CUDA out of memory"]
    (record,) = rig.finished
    assert record["error"] == "CUDA out of memory" and record["interrupted"] and record["reply_text"] == "Hel"
    assert rig.engine.cancels == []


def test_the_engine_dying_mid_reply_ends_the_turn_and_listening_goes_on(rig: Rig) -> None:
    rig.engine.engineDied.emit("the engine process was killed (SIGKILL)")  # between turns: the window's business
    assert rig.notices == [] and rig.finished == []
    rig.say(np.concatenate([quiet(0.5), speech(1.0), quiet(1.2)]))
    rig.wait_requests(1)
    rig.reply_spoken("t1")
    rig.engine.engineDied.emit("the engine process was killed (SIGKILL)")
    assert rig.controller.state == "listening"
    assert rig.finished[0]["error"] == "the engine stopped: the engine process was killed (SIGKILL)"
    assert rig.notices == ["The reply failed: the engine stopped: the engine process was killed (SIGKILL)"]
    rig.pull()
    assert not rig.playback.playing
    rig.say(np.concatenate([speech(1.0), quiet(1.2)]))  # the next turn goes to the restarted engine
    rig.wait_requests(2)


def test_the_rest_of_a_capped_monologue_carries_on_even_with_barge_in_off(make_rig) -> None:
    rig = make_rig(barge_in=False)
    assert rig.controller.start()
    pcm = speech(1.0).tobytes()
    rig.controller.on_heard(Heard(SpeechStarted(0.0), 100.0, 0.2))
    rig.controller.on_heard(Heard(SpeechEnded(pcm, 0.0, 1.0, "max_length", 0.0), 100.8, 1.0))
    rig.controller.on_heard(Heard(SpeechStarted(1.0), 100.8, 1.0))
    assert rig.engine.cancels == ["t1"] and rig.controller.state == "user speaking"


def test_no_microphone_leaves_typing_working(make_rig) -> None:
    rig = make_rig(microphone=False)
    assert not rig.controller.start()
    assert rig.notices == ["No microphone found. Typing still works."]
    rig.controller.press()  # no mic: nothing to press
    turn_id = rig.type_turn("hi")
    rig.engine.turnDone.emit(turn_id, {})
    rig.wait_state("idle")
    assert rig.states == ["thinking", "idle"]


def test_speaker_loss_is_a_notice(rig: Rig) -> None:
    rig.stream("output").fail()
    rig.qtbot.waitUntil(lambda: rig.notices == ["The speaker stopped (unplugged?). Replies are text only."])


def test_the_meter_gets_about_30_levels_a_second_with_the_peaks(rig: Rig) -> None:
    rig.say(np.concatenate([quiet(1.0), speech(0.1, dbfs=-10.0), quiet(0.9)]))
    rig.heard_all()
    assert len(rig.levels) == pytest.approx(60, abs=3)
    assert max(rig.levels) == pytest.approx(-10, abs=1.5)


def test_level_throttle_keeps_the_loudest_level_between_updates() -> None:
    for frame_s in (0.01, 0.02, 0.03):
        throttle = LevelThrottle()
        shown = [throttle.push(Level(i * frame_s, -60.0, False)) for i in range(1, round(2 / frame_s) + 1)]
        assert len([db for db in shown if db is not None]) == pytest.approx(60, abs=2)
    throttle = LevelThrottle()
    assert throttle.push(Level(0.01, -50.0, False)) == -50.0
    assert throttle.push(Level(0.02, -5.0, True)) is None
    assert throttle.push(Level(0.03, -50.0, False)) is None
    assert throttle.push(Level(0.04, -50.0, False)) == -5.0


def test_settings_reach_the_endpointer_on_its_thread(rig: Rig) -> None:
    endpointer = rig.controller.listener.endpointer
    rig.controller.set_headphones(True)
    rig.controller.set_sensitivity("high")
    rig.controller.set_mode("push_to_talk")
    rig.say(quiet(0.1))  # the reader applies changes between frames
    rig.qtbot.waitUntil(lambda: endpointer.headphones and not endpointer.hands_free, timeout=5000)
    assert endpointer.sensitivity == PRESETS["high"]
    with pytest.raises(ValueError, match="sensitivity"):
        rig.controller.set_sensitivity("loud")
    with pytest.raises(ValueError, match="mode"):
        rig.controller.set_mode("walkie-talkie")


class RecordingWindow:
    """The window's side of the seam (app/voice.py), recording what the adapter tells it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes | None]] = []
        self.states: list[str] = []
        self.notices: list[str] = []
        self.levels: list[float] = []
        self.timings: dict[str, dict] = {}

    def set_mic_level(self, db: float) -> None:
        self.levels.append(db)

    def set_voice_state(self, state: str) -> None:
        self.states.append(state)

    def show_notice(self, message: str) -> None:
        self.notices.append(message)

    def on_turn_sent(self, turn_id: str, pcm: bytes, rate: int, image: bytes | None) -> None:
        self.sent.append((turn_id, rate, image))

    def on_voice_turn_finished(self, turn_id: str, timings_ms: dict, interrupted: bool) -> None:
        self.timings[turn_id] = timings_ms

    def picture(self) -> Picture:
        return Picture(b"the window's picture")


def test_window_voice_reports_sent_turns_and_plays_only_typed_replies(make_rig) -> None:
    rig = make_rig()
    voice, window = WindowVoice(rig.controller), RecordingWindow()
    voice.attach(window)  # starts listening
    rig.say(np.concatenate([quiet(0.5), speech(1.0), quiet(1.2)]))
    rig.wait_requests(1)
    assert window.sent == [("t1", 16000, b"the window's picture")] and window.states[-1] == "thinking"
    voice.play(reply(0.5), 16000)  # the window echoing the spoken turn's reply: already played by the controller
    assert rig.playback.buffered == 0
    rig.engine.turnDone.emit("t1", {"text": "", "timings_ms": {}, "cancelled": False})
    rig.play_out()
    rig.wait_state("listening")
    assert set(window.timings["t1"]) >= {"speech_end", "request_sent", "first_audio_played"}
    voice.play(reply(0.5, rate=8000), 8000)  # a typed turn's reply, at another rate
    assert rig.playback.buffered / 16000 == pytest.approx(0.5, abs=0.02)  # the fake speaker runs at 16 kHz
    rig.pull(30)  # the engine is slower than the speaker: it runs dry and waits for more
    voice.play(reply(0.05), 16000)  # the reply's last words, less than the jitter buffer's prebuffer
    voice.end_playback("typed", interrupted=False)
    tail = rig.play_out()
    assert np.abs(tail).max() > 0.04 and not rig.playback.playing  # played out, and the speaker is free
    voice.set_hands_free(False)
    assert rig.controller.settings.mode == "push_to_talk"


class SubtractingApm:
    """A stand-in canceller that knows the echo path exactly: the mic hears each played chunk times gain."""

    def __init__(self, gain: float) -> None:
        self.gain = gain
        self.rendered: list[np.ndarray] = []
        self.unheard: list[np.ndarray] = []

    def render(self, chunk: np.ndarray) -> None:
        self.rendered.append(chunk.copy())
        self.unheard.append(chunk.astype(np.float64) * self.gain)

    def capture(self, chunk: np.ndarray) -> None:
        if self.unheard:
            chunk[:] = np.clip(np.round(chunk - self.unheard.pop(0)), -32768, 32767)


def echo_into_the_mic(rig: Rig, seconds: float, gain: float = 3.0) -> None:
    """The room: what the speaker plays comes back into the mic, 10 dB louder than played (a speaker
    next to the mic), block by block."""
    for _ in range(int(seconds / 0.06)):
        played = rig.pull(3)
        rig.say(np.clip(played * gain * 32768, -32768, 32767).astype(np.int16))
    rig.heard_all()


def test_with_headphones_no_echo_canceller_touches_the_microphone(make_rig) -> None:
    rig = make_rig(echo=EchoCanceller(SubtractingApm(gain=3.0)), headphones=True)
    assert rig.controller.start()
    listener = rig.controller.listener
    assert listener.echo is None and rig.playback.reference is None  # nothing to cancel: the user's voice stays whole
    rig.controller.set_headphones(False)  # speakers: the reply's echo has to come out
    rig.say(quiet(0.1))  # the reader applies changes between frames
    rig.qtbot.waitUntil(lambda: listener.echo is not None, timeout=5000)
    assert rig.playback.reference is not None and listener.endpointer.echo_gain_db == ECHO_GAIN_DB - CANCELLED_DB
    rig.controller.set_headphones(True)
    rig.say(quiet(0.1))
    rig.qtbot.waitUntil(lambda: listener.echo is None, timeout=5000)
    assert rig.playback.reference is None and listener.endpointer.echo_gain_db == ECHO_GAIN_DB


@pytest.mark.parametrize("cancel", [True, False])
def test_an_echo_canceller_takes_the_reply_out_of_the_mic_where_the_gate_alone_would_not(make_rig, cancel) -> None:
    apm = SubtractingApm(gain=3.0)
    rig = make_rig(echo=EchoCanceller(apm) if cancel else None)
    assert rig.controller.start()
    rig.say(np.concatenate([quiet(0.5), speech(1.0), quiet(1.2)]))
    rig.wait_requests(1)
    # The stand-in pairs played and heard chunks in order: the question's quiet tail must be in
    # before anything plays, or a late quiet frame would take the first echo's place.
    rig.heard_all()
    rig.engine.textDelta.emit("t1", "It is ")
    rig.engine.audioChunk.emit("t1", voice_reply(2.0), 16000)
    rig.wait_state("speaking")
    echo_into_the_mic(rig, 1.5)
    if cancel:
        assert rig.controller.state == "speaking"  # the echo was taken out: no barge-in
        assert rig.controller.listener.endpointer.echo_gain_db == ECHO_GAIN_DB - CANCELLED_DB
        assert sum(len(chunk) for chunk in apm.rendered) >= 16000  # the reply reached the canceller
    else:
        assert rig.controller.state == "user speaking"  # the reply, 10 dB louder than played, barged in
        assert rig.controller.listener.endpointer.echo_gain_db == ECHO_GAIN_DB
        assert rig.playback.reference is None
