"""Playback with a fake sounddevice: resampling to 48 kHz stereo, barge-in stop, underruns, telemetry."""

from __future__ import annotations

import numpy as np
import pytest

from app.audio.endpointer import SILENT_DB
from app.audio.playback import OutputBuffer, Playback
from tests.app.audio.fake_sounddevice import FakeSoundDevice, device


def reply(seconds: float, freq: float = 220.0, amplitude: float = 0.5) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<f4").tobytes()


def opened(supported=None, **kwargs) -> tuple[Playback, object]:
    sd = FakeSoundDevice([device("speaker", outputs=2, rate=48000)], supported=supported)
    playback = Playback(sd, **kwargs)
    assert playback.open() is None
    return playback, sd.streams[0]


def play_out(stream, seconds: float) -> np.ndarray:
    """What the device plays in `seconds`, pulled a block at a time."""
    return np.concatenate([stream.pull() for _ in range(round(seconds * stream.samplerate / stream.blocksize))])


def test_resamples_16k_to_a_48k_stereo_device() -> None:
    playback, stream = opened(supported={(0, 48000, 2)})
    assert (stream.samplerate, stream.channels, playback.rate) == (48000, 2, 48000)
    playback.write(reply(0.25))
    playback.write(reply(0.25))
    playback.finish()
    out = play_out(stream, 0.8)
    assert not np.isnan(out).any() and np.array_equal(out[:, 0], out[:, 1])
    sound = np.flatnonzero(np.abs(out[:, 0]) > 1e-4)
    assert (sound[-1] - sound[0]) / 48000 == pytest.approx(0.5, abs=0.01)
    spectrum = np.abs(np.fft.rfft(out[sound[0] : sound[-1], 0]))
    assert np.fft.rfftfreq(sound[-1] - sound[0], 1 / 48000)[spectrum.argmax()] == pytest.approx(220, abs=3)
    assert playback.wait_done(0) and not playback.playing


def test_chunk_seams_and_underruns_never_click() -> None:
    playback, stream = opened(prebuffer_ms=40)
    max_step = 2 * np.pi * 220 * 0.5 / 16000  # the steepest step of the sine itself
    speech = reply(0.18)  # one continuous sine, arriving in three chunks
    chunk = [speech[: 1600 * 4], speech[1600 * 4 : 2080 * 4], speech[2080 * 4 :]]
    playback.write(chunk[0])
    out = play_out(stream, 0.2)  # runs dry after 100 ms: an underrun, filled with silence
    assert np.abs(out[-800:]).max() == 0.0
    playback.write(chunk[1])  # less than the prebuffer: waits
    assert np.abs(play_out(stream, 0.04)).max() == 0.0
    playback.write(chunk[2])  # now enough
    playback.finish()
    out = np.concatenate([out, play_out(stream, 0.2)])
    assert np.abs(np.diff(out[:, 0])).max() <= max_step * 1.05  # fades at every gap, no jumps


def test_stop_silences_the_output_within_one_block() -> None:
    playback, stream = opened()
    playback.write(reply(3.0))
    play_out(stream, 0.2)
    playback.stop()
    block = stream.pull()
    fade = int(0.005 * playback.rate)
    assert np.abs(block[fade:]).max() == 0.0  # silent after a 5 ms fade, inside the very next block
    assert np.abs(np.diff(block[:, 0])).max() < 0.05  # the fade: no click
    assert np.abs(play_out(stream, 0.1)).max() == 0.0
    assert playback.wait_done(0) and playback.level_db == SILENT_DB


def test_a_new_reply_after_stop_plays_from_its_start() -> None:
    playback, stream = opened()
    playback.write(reply(1.0))
    play_out(stream, 0.1)
    playback.stop()
    playback.write(reply(0.2, freq=440))
    playback.finish()
    out = play_out(stream, 0.4)[:, 0]
    assert np.count_nonzero(np.abs(out) > 1e-4) == pytest.approx(0.2 * 16000, abs=200)


def test_reports_level_and_when_the_first_sample_reached_the_speaker() -> None:
    now = [100.0]
    playback, stream = opened(clock=lambda: now[0])
    assert playback.level_db == SILENT_DB and playback.first_sample_time is None
    playback.write(reply(0.5, amplitude=0.5))
    stream.pull(dac_delay=0.03)
    assert playback.first_sample_time == pytest.approx(100.03)  # written now, heard after the device latency
    now[0] = 100.02
    play_out(stream, 0.02)
    assert playback.first_sample_time == pytest.approx(100.03)  # the first sample, not the latest
    assert playback.level_db == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.5)


def test_no_output_device_means_text_only() -> None:
    playback = Playback(FakeSoundDevice([device("mic", inputs=1)], default=(0, -1)))
    assert "text only" in playback.open()
    playback.write(reply(0.1))  # dropped, no error
    playback.finish()
    playback.stop()
    assert not playback.available and not playback.playing


def test_losing_the_speaker_mid_reply_is_a_notice() -> None:
    notices = []
    playback, stream = opened(on_notice=notices.append)
    playback.write(reply(1.0))
    stream.fail()
    assert notices == ["The speaker stopped (unplugged?). Replies are text only."]
    assert not playback.available and not playback.playing
    playback.write(reply(0.1))  # text-only from now on


def test_close_is_not_a_lost_device() -> None:
    notices = []
    playback, stream = opened(on_notice=notices.append)
    playback.close()
    assert notices == [] and stream.closed


def test_the_level_is_over_the_last_20_ms_whatever_the_block() -> None:
    playback, stream = opened(buffers=(OutputBuffer(10, 0.03),))
    sine_then_silence = np.concatenate([np.frombuffer(reply(0.1, amplitude=0.5), "<f4"), np.zeros(800, "<f4")])
    playback.write(sine_then_silence.tobytes())
    play_out(stream, 0.11)  # the last 10 ms block is all silence
    # Half of the 20 ms is sine, half silence: 3 dB under the sine's own level, not the silent block's.
    assert playback.level_db == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)) - 3.0, abs=0.5)


SMALL, BIG = OutputBuffer(10, 0.03), OutputBuffer(20, "low")


def played(underflow_while_sounding: bool) -> tuple[Playback, FakeSoundDevice, list[str]]:
    """A reply played on the small buffer; the device runs short before it, after it, and maybe during it."""
    notices: list[str] = []
    sd = FakeSoundDevice([device("speaker", outputs=2, rate=48000)])
    playback = Playback(sd, buffers=(SMALL, BIG), on_notice=notices.append)
    assert playback.open() is None
    stream = sd.streams[0]
    stream.pull(underflow=True)  # the stream's start: nothing to cut
    playback.write(reply(0.3))
    playback.finish()
    stream.pull()  # the reply's first block
    stream.pull(underflow=underflow_while_sounding)
    for _ in range(40):
        stream.pull()
    assert not playback.playing
    stream.pull(underflow=True)  # silence between replies: nothing to cut either
    return playback, sd, notices


def test_a_speaker_that_ran_short_in_a_reply_gets_the_bigger_buffer_before_the_next() -> None:
    playback, sd, notices = played(underflow_while_sounding=True)
    small_stream = sd.streams[0]
    assert (small_stream.blocksize, small_stream.latency) == (160, 0.03)  # 10 ms at 16 kHz
    playback.settle()
    assert small_stream.closed and len(sd.streams) == 2 and notices == []  # closing it is no lost device
    big_stream = sd.streams[1]
    assert (big_stream.blocksize, big_stream.latency, big_stream.started) == (320, "low", True)
    assert playback.buffer == BIG and playback.stream is big_stream
    playback.write(reply(0.1))
    playback.finish()
    out = np.concatenate([big_stream.pull() for _ in range(10)])
    assert np.abs(out).max() == pytest.approx(0.5, abs=0.01)  # the next reply plays on the new stream
    big_stream.pull(underflow=True)
    playback.settle()
    assert len(sd.streams) == 2  # no bigger buffer to move to


def test_underruns_while_no_reply_sounds_keep_the_small_buffer() -> None:
    playback, sd, _ = played(underflow_while_sounding=False)
    playback.settle()
    assert len(sd.streams) == 1 and playback.buffer == SMALL


def test_the_buffer_never_changes_while_a_reply_plays() -> None:
    playback, sd, _ = played(underflow_while_sounding=True)
    stream = sd.streams[0]
    playback.write(reply(1.0))
    stream.pull()
    playback.settle()  # mid-reply: reopening would stall the speaker
    assert len(sd.streams) == 1 and not stream.closed
    playback.stop()
    stream.pull()
    playback.settle()  # now quiet, and the count was kept
    assert len(sd.streams) == 2 and playback.buffer == BIG


def test_a_speaker_that_will_not_reopen_says_so() -> None:
    playback, sd, notices = played(underflow_while_sounding=True)
    sd.supported = set()  # the device vanished between replies
    playback.settle()
    assert not playback.available
    assert notices == ["Could not reopen the speaker: Invalid sample rate. Replies are text only."]
