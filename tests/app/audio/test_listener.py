"""The reader thread with a fake device: turns, push-to-talk from another thread, silence and loss notices."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from app.audio.capture import Capture
from app.audio.devices import SilenceWatch
from app.audio.endpointer import Endpointer, Level, SpeechEnded, SpeechStarted
from app.audio.listener import Listener, Notice
from tests.app.audio.fake_sounddevice import FakeSoundDevice, device, feed
from tests.app.audio.sounds import quiet, speech


class Collector:
    def __init__(self) -> None:
        self.events: list = []
        self.changed = threading.Condition()

    def __call__(self, event) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, kind: type, count: int = 1, timeout: float = 5.0) -> list:
        with self.changed:
            self.changed.wait_for(lambda: len(self.of(kind)) >= count, timeout)
        return self.of(kind)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def started(**kwargs) -> tuple[Listener, object, Collector]:
    sd = FakeSoundDevice([device("mic", inputs=1)])
    collector = Collector()
    listener = Listener(Capture(sd), Endpointer(**kwargs), collector)
    assert listener.start()
    return listener, sd.streams[0], collector


def test_speech_through_the_thread_becomes_a_turn() -> None:
    listener, stream, collector = started()
    feed(stream, np.concatenate([quiet(1.0), speech(1.0), quiet(1.5)]))
    (turn,) = collector.wait_for(SpeechEnded)
    levels = collector.wait_for(Level, int(3.5 / 0.03))  # the frames after the turn's end are still coming
    listener.stop()
    assert turn.end_t - turn.start_t == pytest.approx(1.0, abs=0.1)
    assert len(levels) == int(3.5 / 0.03)


def test_push_to_talk_from_the_gui_thread() -> None:
    listener, stream, collector = started(hands_free=False)
    feed(stream, quiet(1.0))
    time.sleep(0.2)  # let the reader catch up: the press lands after the audio already queued
    listener.press()
    collector.wait_for(SpeechStarted)
    feed(stream, speech(1.0))
    time.sleep(0.2)
    listener.release()
    (turn,) = collector.wait_for(SpeechEnded)
    listener.stop()
    assert turn.reason == "released" and turn.pcm_start_t == pytest.approx(turn.start_t - 0.5)
    assert turn.end_t - turn.start_t == pytest.approx(1.0, abs=0.05)


def test_a_lost_device_flushes_the_turn_and_says_so() -> None:
    listener, stream, collector = started()
    feed(stream, np.concatenate([quiet(1.0), speech(1.0)]))
    stream.fail()
    (turn,) = collector.wait_for(SpeechEnded)
    (notice,) = collector.wait_for(Notice)
    listener.stop()
    assert turn.reason == "flush" and "microphone stopped" in notice.text


def test_digital_silence_is_reported() -> None:
    sd = FakeSoundDevice([device("Wrong Mic (hw:1,0)", inputs=1)])
    collector = Collector()
    listener = Listener(Capture(sd), Endpointer(), collector, silence=SilenceWatch(seconds=1.0))
    listener.start()
    feed(sd.streams[0], np.zeros(16000 * 2, np.int16))
    (notice,) = collector.wait_for(Notice)
    listener.stop()
    assert "Wrong Mic" in notice.text and "silence" in notice.text


def test_the_echo_gate_reads_the_playback_level() -> None:
    sd = FakeSoundDevice([device("mic", inputs=1)])
    collector = Collector()
    listener = Listener(Capture(sd), Endpointer(), collector, playback_level=lambda: -10.0)
    listener.start()
    feed(sd.streams[0], np.concatenate([quiet(1.0), speech(1.0, dbfs=-25.0), quiet(1.5)]))
    collector.wait_for(Level, int(3.5 / 0.03))
    listener.stop()
    assert collector.of(SpeechStarted) == []


def test_no_microphone_is_a_notice_and_no_thread() -> None:
    collector = Collector()
    listener = Listener(Capture(FakeSoundDevice([], default=(-1, -1))), Endpointer(), collector)
    assert not listener.start()
    assert [type(e) for e in collector.events] == [Notice]
    listener.stop()
