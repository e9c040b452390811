"""The real sounddevice against PulseAudio's virtual microphone and speaker (started here, killed after).

paplay into "micsrc" is heard on the virtual microphone "mic"; what the app plays to "spk" is
recorded back from "spk.monitor". For the echo tests a loopback plays "spk.monitor" into
"micsrc" too: the room, with the speaker as loud at the mic as it plays. Skipped without
pulseaudio/espeak-ng, failed instead under OMNIVOX_E2E=require.
"""

from __future__ import annotations

import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soxr

from app.audio.capture import Capture
from app.audio.echo import CANCELLED_DB, make_echo_canceller
from app.audio.endpointer import ECHO_GAIN_DB, Endpointer, SpeechEnded, SpeechStarted
from app.audio.listener import Listener
from app.audio.playback import OUTPUT_BUFFERS, Playback
from tests.e2e_env import Recorder


def test_speech_into_the_virtual_mic_is_exactly_one_turn_of_the_right_length(pulse, question) -> None:
    path, speech_seconds = question
    turns: list[SpeechEnded] = []
    listener = Listener(Capture(), Endpointer(), lambda e: turns.append(e) if isinstance(e, SpeechEnded) else None)
    assert listener.start(), "the virtual microphone did not open"
    try:
        time.sleep(0.5)
        subprocess.run(["paplay", "--device=micsrc", str(path)], env=pulse, check=True, timeout=30)
        deadline = time.monotonic() + 5
        while not turns and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # nothing more may follow
    finally:
        listener.stop()
    assert len(turns) == 1
    assert turns[0].end_t - turns[0].start_t == pytest.approx(speech_seconds, abs=0.3)
    assert len(turns[0].pcm) / 2 / 16000 >= speech_seconds  # with pre-roll and tail around it


def test_a_reply_played_to_the_virtual_speaker_is_recorded_back(pulse) -> None:
    playback = Playback()
    assert playback.open() is None and playback.available
    recorder = Recorder(pulse)
    try:
        time.sleep(0.3)
        t = np.arange(16000) / 16000
        for chunk in np.split((0.3 * np.sin(2 * np.pi * 330 * t)).astype("<f4"), 10):  # streamed in pieces
            playback.write(chunk.tobytes())
        playback.finish()
        assert playback.wait_done(5)
        assert playback.first_sample_time is not None
        time.sleep(0.3)
    finally:
        recorded = recorder.stop()
        playback.close()
    loud = np.abs(recorded) > 0.1 * 32768 * 0.3  # a sine is above 10 % of its peak 94 % of the time
    assert loud.sum() / 16000 == pytest.approx(0.94, abs=0.15)
    spectrum = np.abs(np.fft.rfft(recorded.astype(np.float64)))
    assert np.fft.rfftfreq(len(recorded), 1 / 16000)[spectrum.argmax()] == pytest.approx(330, abs=5)


class WatchedPlayback(Playback):
    """Notes when each output block was written and its peak."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[tuple[float, float]] = []

    def on_block(self, outdata, frames, time_info, status) -> None:
        super().on_block(outdata, frames, time_info, status)
        self.blocks.append((time.monotonic(), float(np.abs(outdata).max())))


def until_steady(playback: WatchedPlayback) -> None:
    """The ALSA pulse plugin stalls for a second or so after a stream starts; the app keeps its
    stream open, so measure once the device asks for blocks steadily."""
    deadline = time.monotonic() + 10
    while len(playback.blocks) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)


def test_barge_in_stop_silences_the_output_within_one_block(pulse) -> None:
    playback = WatchedPlayback()
    assert playback.open() is None
    until_steady(playback)
    recorder = Recorder(pulse)
    try:
        t = np.arange(3 * 16000) / 16000
        playback.write((0.3 * np.sin(2 * np.pi * 330 * t)).astype("<f4").tobytes())
        time.sleep(0.6)
        stopped_at = time.monotonic()
        playback.stop()
        assert playback.wait_done(1.0)
        time.sleep(0.4)
    finally:
        recorded = recorder.stop()
        playback.close()
    after = [peak for when, peak in playback.blocks if when > stopped_at]
    assert after and after[0] <= 0.3  # the first block after stop only fades out
    assert max(after[1:]) == 0.0  # every later block is silent
    # On the speaker: about 0.6 s of sound, not the 3 s that were queued.
    loud = np.abs(recorded) > 0.1 * 32768 * 0.3
    assert 0.3 < loud.sum() / 16000 < 1.0


@pytest.fixture
def speakers(pulse) -> Iterator[None]:
    """The reply comes back into the microphone, through PulseAudio's buffers and a 30 ms loopback."""
    module = subprocess.run(["pactl", "load-module", "module-loopback", "source=spk.monitor", "sink=micsrc",
                             "latency_msec=30"], env=pulse, check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield
    finally:
        subprocess.run(["pactl", "unload-module", module], env=pulse, check=True)


def spoken_reply(folder: Path) -> np.ndarray:
    """A spoken reply, 16 kHz float32, 6 dB under the user's voice at the mic (their mouth is nearer)."""
    path = folder / "reply.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+f3", "-w", str(path), "Here is what I can see. A chart of sales by "
                    "month, falling since May, and a note that says call the bank"], check=True)
    with wave.open(str(path)) as f:
        audio = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768
        return soxr.resample(audio / 2, f.getframerate(), 16000).astype(np.float32)


@pytest.mark.parametrize("cancel", [True, False])
def test_with_speakers_the_reply_echo_is_no_turn_but_the_user_over_it_is(pulse, speakers, question, tmp_path,
                                                                         cancel) -> None:
    echo = make_echo_canceller() if cancel else None
    assert echo is not None or not cancel, "livekit (WebRTC audio processing) is a dependency"
    playback = Playback()
    assert playback.open() is None
    playback.reference = echo.played if echo else None
    events: list = []
    endpointer = Endpointer(echo_gain_db=ECHO_GAIN_DB - (CANCELLED_DB if echo else 0.0))  # as the controller does
    listener = Listener(Capture(), endpointer, lambda e: events.append(e) if isinstance(e, SpeechStarted | SpeechEnded)
                        else None, playback_level=lambda: playback.level_db, echo=echo)
    assert listener.start()
    reply = spoken_reply(tmp_path)
    try:
        time.sleep(1.0)  # the ALSA pulse plugin settles
        playback.write(reply.tobytes())
        playback.finish()
        assert playback.wait_done(len(reply) / 16000 + 5)
        time.sleep(1.0)
        during_reply = list(events)
        playback.write(reply.tobytes())
        playback.finish()
        time.sleep(1.5)
        subprocess.run(["paplay", "--device=micsrc", str(question[0])], env=pulse, check=True, timeout=30)
        assert playback.wait_done(len(reply) / 16000 + 5)
        time.sleep(1.5)
    finally:
        listener.stop()
        playback.close()
    user_turns = [e for e in events[len(during_reply) :] if isinstance(e, SpeechEnded)]
    if cancel:
        assert during_reply == []  # the reply's echo never started a turn
        assert len(user_turns) == 1  # the user talking over it did
        assert user_turns[0].end_t - user_turns[0].start_t == pytest.approx(question[1], abs=0.5)
    else:
        assert during_reply != []  # the gate alone lets an echo this loud through: that is what cancelling is for


class StallingPlayback(WatchedPlayback):
    """A busy machine: once a reply sounds, the audio callback comes back late, once."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False

    def on_block(self, outdata, frames, time_info, status) -> None:
        super().on_block(outdata, frames, time_info, status)
        if self.started and not self.stalled:
            self.stalled = True
            time.sleep(0.1)  # more than the small buffer holds


def test_a_speaker_that_ran_short_in_a_reply_is_reopened_with_the_bigger_buffer(pulse) -> None:
    playback = StallingPlayback()
    assert playback.open() is None and playback.buffer == OUTPUT_BUFFERS[0]
    until_steady(playback)
    t = np.arange(16000) / 16000
    sine = (0.3 * np.sin(2 * np.pi * 330 * t)).astype("<f4")
    try:
        playback.write(sine.tobytes())
        playback.finish()
        assert playback.wait_done(10)
        assert playback.underruns == 1  # PortAudio flagged the late block
        small_stream = playback.stream
        playback.settle()
        assert playback.buffer == OUTPUT_BUFFERS[1] and playback.stream is not small_stream
        assert playback.stream.active and playback.stream.latency > small_stream.latency
        recorder = Recorder(pulse)
        try:
            playback.write(sine[:8000].tobytes())  # the next reply, on the new stream
            playback.finish()
            assert playback.wait_done(10)
            time.sleep(0.3)
        finally:
            recorded = recorder.stop()
    finally:
        playback.close()
    loud = np.abs(recorded) > 0.1 * 32768 * 0.3  # a sine is above 10 % of its peak 94 % of the time
    assert loud.sum() / 16000 == pytest.approx(0.5 * 0.94, abs=0.1)
