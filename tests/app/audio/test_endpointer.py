"""The endpointer on generated frames: speech-like tones, pauses, clicks, long monologues, push-to-talk, echo."""

from __future__ import annotations

import numpy as np
import pytest

from app.audio.endpointer import (
    MURKY_SNR_DB,
    PRESETS,
    Endpointer,
    Level,
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
)
from app.audio.spectrum import Spectrum
from tests.app.audio.sounds import RATE, RNG, quiet, speech
from tests.signals import tone


def note(seconds: float, dbfs: float = -20.0) -> np.ndarray:
    """A held note with harmonics (music, a ring tone): the same spectrum frame after frame."""
    wave = tone(seconds)
    return (wave / np.sqrt(np.mean(wave**2)) * 10 ** (dbfs / 20) * 32767).astype(np.int16)


def rumble(seconds: float, dbfs: float, rng: np.random.Generator = RNG) -> np.ndarray:
    """Background whose power sits in the low frequencies (pink noise: as much per octave)."""
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0))
    wave = np.fft.irfft(spectrum, n)
    return wave / np.sqrt(np.mean(wave**2)) * 10 ** (dbfs / 20) * 32767


def hiss(seconds: float, dbfs: float) -> np.ndarray:
    """A fricative's noise ("s", the burst of a final "t"): only 4-7 kHz."""
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(RNG.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[(freqs < 4000) | (freqs > 7000)] = 0
    wave = np.fft.irfft(spectrum, n)
    return wave / np.sqrt(np.mean(wave**2)) * 10 ** (dbfs / 20) * 32767


def mixed(background: np.ndarray, *parts: tuple[float, np.ndarray]) -> np.ndarray:
    """background with each (start seconds, audio) added, as int16."""
    out = background.astype(np.float64)
    for start, audio in parts:
        out[int(start * RATE) : int(start * RATE) + len(audio)] += audio
    return np.clip(out, -32768, 32767).astype(np.int16)


def clicks(seconds: float, per_second: float = 8.0) -> np.ndarray:
    """Keyboard-like clicks: loud noise bursts decaying within a few ms."""
    out = quiet(seconds).astype(np.float64)
    for start in np.arange(0.1, seconds - 0.05, 1 / per_second):
        n = int(0.008 * RATE)
        i = int(start * RATE)
        out[i : i + n] += RNG.standard_normal(n) * np.exp(-np.arange(n) / (0.0015 * RATE)) * 20000
    return np.clip(out, -32768, 32767).astype(np.int16)


def run(endpointer: Endpointer, audio: np.ndarray, frame_ms: int = 30) -> list:
    n = RATE * frame_ms // 1000
    events = []
    for i in range(0, len(audio) - n + 1, n):
        events += [e for e in endpointer.push(audio[i : i + n].tobytes()) if not isinstance(e, Level)]
    return events


def turns(events: list) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_one_utterance_is_one_turn_of_the_right_length(frame_ms: int) -> None:
    audio = np.concatenate([quiet(1.0), speech(1.5), quiet(1.5)])
    events = run(Endpointer(), audio, frame_ms)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert started.t == pytest.approx(1.0, abs=0.05)
    assert ended.reason == "silence"
    assert ended.end_t - ended.start_t == pytest.approx(1.5, abs=0.1)
    # Pre-roll before the onset and a short tail after the last sound are part of the audio.
    assert ended.pcm_start_t == pytest.approx(ended.start_t - 0.5, abs=0.01)
    assert len(ended.pcm) / 2 / RATE == pytest.approx(ended.end_t + 0.2 - ended.pcm_start_t, abs=0.01)


def test_pre_roll_keeps_the_audio_before_the_detector_was_sure() -> None:
    onset = speech(1.0)
    audio = np.concatenate([quiet(1.0), onset, quiet(1.5)])
    (ended,) = turns(run(Endpointer(), audio))
    pcm = np.frombuffer(ended.pcm, np.int16)
    offset = int((1.0 - ended.pcm_start_t) * RATE)
    assert offset >= int(0.3 * RATE)  # at least 300 ms before the onset
    assert np.array_equal(pcm[offset : offset + 1600], onset[:1600])  # the first 100 ms of speech, intact


def test_pauses_shorter_than_the_hangover_do_not_cut() -> None:
    hangover = PRESETS["normal"].hangover_ms / 1000
    audio = np.concatenate([quiet(1.0), speech(0.8), quiet(hangover - 0.2), speech(0.8), quiet(1.5)])
    (ended,) = turns(run(Endpointer(), audio))
    assert ended.end_t - ended.start_t == pytest.approx(0.8 * 2 + hangover - 0.2, abs=0.1)


def test_a_long_pause_ends_the_turn() -> None:
    audio = np.concatenate([quiet(1.0), speech(0.8), quiet(1.2), speech(0.8), quiet(1.5)])
    assert len(turns(run(Endpointer(), audio))) == 2


def test_clicks_do_not_start_a_turn() -> None:
    events = run(Endpointer(), np.concatenate([quiet(0.5), clicks(4.0)]))
    assert events == []


def test_a_short_bump_is_discarded_not_sent() -> None:
    endpointer = Endpointer(min_speech_ms=400)
    events = run(endpointer, np.concatenate([quiet(1.0), speech(0.25), quiet(1.5)]))
    assert [type(e) for e in events] == [SpeechStarted, SpeechDiscarded]


def test_a_monologue_is_cut_into_capped_turns_and_nothing_is_lost() -> None:
    monologue = speech(5.0)
    audio = np.concatenate([quiet(1.0), monologue, quiet(1.5)])
    ended = turns(run(Endpointer(max_turn_s=2.0), audio))
    assert len(ended) == 3 and {e.reason for e in ended[:2]} == {"max_length"}
    assert all(len(e.pcm) / 2 / RATE <= 2.0 + 1e-9 for e in ended)
    pcm = np.frombuffer(b"".join(e.pcm for e in ended), np.int16)
    # Consecutive pieces join exactly: the whole monologue is there once, in order.
    for first, second in zip(ended, ended[1:], strict=False):
        assert second.pcm_start_t == pytest.approx(first.pcm_start_t + len(first.pcm) / 2 / RATE)
    start = int((1.0 - ended[0].pcm_start_t) * RATE)
    assert np.array_equal(pcm[start : start + len(monologue)], monologue)


def test_push_to_talk_turn_runs_from_press_to_release_with_pre_roll() -> None:
    endpointer = Endpointer(hands_free=False)
    assert run(endpointer, np.concatenate([quiet(1.0), speech(1.0), quiet(1.0)])) == []  # voice alone does nothing
    events = endpointer.press()
    events += run(endpointer, np.concatenate([speech(1.0), quiet(1.5)]))  # a silence inside does not end it
    events += endpointer.release()
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    ended = events[-1]
    assert ended.reason == "released"
    assert ended.start_t == pytest.approx(3.0, abs=0.01)
    assert ended.end_t == pytest.approx(5.5, abs=0.03)
    assert ended.pcm_start_t == pytest.approx(2.5, abs=0.01)


def test_a_tap_on_the_key_is_discarded() -> None:
    endpointer = Endpointer(hands_free=False)
    run(endpointer, quiet(1.0))
    events = endpointer.press() + run(endpointer, quiet(0.06)) + endpointer.release()
    assert [type(e) for e in events] == [SpeechStarted, SpeechDiscarded]


def test_holding_the_key_in_hands_free_mode_keeps_the_turn_open() -> None:
    endpointer = Endpointer()
    events = run(endpointer, np.concatenate([quiet(1.0), speech(0.8)]))
    events += endpointer.press() + run(endpointer, quiet(2.0)) + endpointer.release()
    assert [(type(e), getattr(e, "reason", None)) for e in events] == [(SpeechStarted, None),
                                                                        (SpeechEnded, "released")]


def test_echo_of_our_own_reply_does_not_start_a_turn_unless_on_headphones() -> None:
    echo = np.concatenate([quiet(1.0), speech(2.0, dbfs=-28.0), quiet(1.0)])  # the reply, heard through the air
    for headphones, expected in ((False, 0), (True, 1)):
        endpointer = Endpointer(headphones=headphones)
        endpointer.set_playback_level(-20.0)  # what we are playing
        assert len(turns(run(endpointer, echo))) == expected


def test_the_user_talking_over_the_reply_still_gets_through() -> None:
    endpointer = Endpointer()
    endpointer.set_playback_level(-20.0)  # echo estimate -30 dBFS, so speech needs -24 dBFS or more
    assert len(turns(run(endpointer, np.concatenate([quiet(1.0), speech(1.0, dbfs=-15.0), quiet(1.5)])))) == 1


def test_sensitivity_presets_trade_waiting_for_cutting() -> None:
    audio = np.concatenate([quiet(1.0), speech(1.0), quiet(2.0)])
    ends = {}
    for name in ("low", "normal", "high"):
        endpointer, when = Endpointer(name), None
        for i in range(0, len(audio) - 479, 480):
            if any(isinstance(e, SpeechEnded) for e in endpointer.push(audio[i : i + 480].tobytes())):
                when = endpointer.now / RATE
        ends[name] = when
    assert ends["low"] < ends["normal"] < ends["high"]
    endpointer = Endpointer("low")
    endpointer.set_sensitivity("high")
    assert endpointer.sensitivity == PRESETS["high"]


def test_quiet_speech_under_the_floor_is_not_a_turn() -> None:
    assert run(Endpointer(), np.concatenate([quiet(1.0), speech(1.5, dbfs=-60.0), quiet(1.0)])) == []


def test_level_events_report_every_frame() -> None:
    endpointer = Endpointer()
    levels = [e for e in endpointer.push(speech(0.03).tobytes()) if isinstance(e, Level)]
    assert len(levels) == 1 and levels[0].db == pytest.approx(-20.0, abs=1.0)
    assert [e.db for e in endpointer.push(bytes(960)) if isinstance(e, Level)] == [-100.0]


def test_frames_must_be_10_20_or_30_ms() -> None:
    with pytest.raises(ValueError, match="10, 20 or 30 ms"):
        Endpointer().push(bytes(2 * 400))


def test_flush_delivers_the_turn_in_progress() -> None:
    endpointer = Endpointer()
    run(endpointer, np.concatenate([quiet(1.0), speech(1.0)]))
    (ended,) = endpointer.flush()
    assert isinstance(ended, SpeechEnded) and ended.reason == "flush"


def test_a_word_ending_lost_in_the_overall_noise_still_holds_the_turn_in_its_own_band() -> None:
    # Pink noise at -35 dBFS; the final "s" at -42 dBFS is 7 dB under it overall, but stands out in 4-7 kHz.
    voice = speech(1.0, dbfs=-20.0)
    without = mixed(rumble(6.0, -35.0), (2.0, voice))
    with_s = mixed(rumble(6.0, -35.0), (2.0, voice), (3.0, hiss(0.3, -42.0)))
    (plain,) = turns(run(Endpointer(), without))
    (ended,) = turns(run(Endpointer(), with_s))
    assert plain.end_t < 3.2  # the noise's own wobble may hold a frame or three
    assert ended.end_t == pytest.approx(3.3, abs=0.06)  # the turn runs to the end of the "s"


@pytest.mark.parametrize("colour", ["white", "pink"])
def test_stationary_noise_rarely_stands_out_in_a_band_and_does_not_hold_a_turn(colour: str) -> None:
    rng = np.random.default_rng(1)  # noise stands out by chance now and then: keep this run the same
    background = (rng.standard_normal(30 * RATE) * 10 ** (-38 / 20) * 32767 if colour == "white"
                  else rumble(30.0, -38.0, rng))
    spectrum = Spectrum()
    hits = [spectrum.analyse(background[i : i + 480]).band_above for i in range(0, len(background) - 479, 480)]
    assert np.mean(hits[70:]) < 0.02  # after the floors settle (2 s): about one frame in a hundred
    for start in (3.0, 13.0, 23.0):
        (ended,) = turns(run(Endpointer(), mixed(background[: int((start + 5) * RATE)], (start, speech(1.0)))))
        assert ended.end_t == pytest.approx(start + 1.0, abs=0.06)


def test_the_hangover_grows_as_the_speech_sinks_toward_the_noise() -> None:
    preset = PRESETS["normal"]
    quiet_room = Endpointer()
    run(quiet_room, np.concatenate([quiet(3.0), speech(1.0, dbfs=-20.0)]))
    assert quiet_room.hangover_ms() == preset.hangover_ms
    noisy_room = Endpointer()
    run(noisy_room, mixed(rumble(4.0, -20.0 - MURKY_SNR_DB), (3.0, speech(1.0, dbfs=-20.0))))
    assert preset.hangover_ms + preset.noise_hangover_ms / 2 < noisy_room.hangover_ms()
    assert noisy_room.hangover_ms() <= preset.hangover_ms + preset.noise_hangover_ms


def test_in_noise_a_pause_just_over_the_quiet_room_hangover_does_not_cut() -> None:
    preset = PRESETS["normal"]
    pause = (preset.hangover_ms + preset.noise_hangover_ms / 2) / 1000
    voice = speech(1.0, dbfs=-20.0)
    for background, expected in ((quiet(8.0).astype(np.float64), 2), (rumble(8.0, -27.0), 1)):
        audio = mixed(background, (3.0, voice), (4.0 + pause, voice))
        assert len(turns(run(Endpointer(), audio, frame_ms=10))) == expected  # 10 ms: the pause is 15 ms over


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_a_held_note_is_discarded_not_sent_but_a_voice_is(frame_ms: int) -> None:
    tune = np.concatenate([quiet(1.0), note(0.6), note(0.4, dbfs=-24.0), note(0.8), quiet(1.5)])
    assert [type(e) for e in run(Endpointer(), tune, frame_ms)] == [SpeechStarted, SpeechDiscarded]
    voice = np.concatenate([quiet(1.0), speech(1.8), quiet(1.5)])
    assert [type(e) for e in run(Endpointer(), voice, frame_ms)] == [SpeechStarted, SpeechEnded]


def test_a_note_held_on_the_push_to_talk_key_is_sent() -> None:
    endpointer = Endpointer(hands_free=False)
    run(endpointer, quiet(1.0))
    events = endpointer.press() + run(endpointer, note(1.0)) + endpointer.release()
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]  # the key says it is the user


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_noise_from_the_first_frame_on_is_background_not_a_turn(frame_ms: int) -> None:
    assert run(Endpointer(), rumble(4.0, -27.0, np.random.default_rng(3)).astype(np.int16), frame_ms) == []


def fan(seconds: float, dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """A fan switched on: a rumble whose power sits under 150 Hz plus mains hum, spinning up over 1 s."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    rumble_ = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.maximum(np.fft.rfftfreq(n, 1 / RATE), 30.0), n)
    wave = rumble_ / rumble_.std() + 0.3 * sum(np.sin(2 * np.pi * 100 * h * t) / h for h in (1, 2, 3))
    return wave / np.sqrt(np.mean(wave**2)) * 10 ** (dbfs / 20) * 32767 * np.clip(t, 0, 1)


def test_a_fan_switched_on_is_discarded_not_sent() -> None:
    # Until the background tracker catches up (2 s) the fan passes for speech, but its level in the
    # speech band has none of the rise and fall of syllables.
    rng = np.random.default_rng(4)
    room = rumble(8.0, -40.0, rng)
    events = run(Endpointer(), mixed(room, (1.0, fan(7.0, -26.0, rng))))
    assert SpeechStarted in {type(e) for e in events} and turns(events) == []
    assert len(turns(run(Endpointer(), mixed(room, (1.0, speech(1.5)))))) == 1  # a voice in the same room is sent
