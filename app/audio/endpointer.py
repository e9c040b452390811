"""Turn detection over microphone frames: when the user starts talking and when they are done.

Pure logic, no I/O and no Qt: feed 10, 20 or 30 ms frames of 16 kHz mono int16 PCM to `push`,
get plain events back. Hands-free mode lets the voice-activity decision start and end turns;
push-to-talk drives the same object with `press` / `release`. Both keep the pre-roll, so the
first syllable (spoken before the detector was sure) is part of the turn.

A frame counts as speech only when webrtcvad says so *and* it is loud enough: above a fixed
floor, above the tracked background noise by a margin (fans, hum), above the echo of our own
playback (speakers, not headphones), and not a single impulse (keyboard clicks). Once a turn
runs, quieter sound just above the background also holds it open: the ends of words fade into
the noise, and webrtcvad drops them, so a pause measured by the VAD alone is longer than the
pause the user made. Levels are taken in the speech band, and "above the background" is judged
per frequency band as well as overall (app/audio/spectrum.py). Two kinds of sound get past
webrtcvad and the level tests but are not a voice, and a turn of them is discarded, not sent:
notes (music, a beep), whose spectrum holds still from frame to frame, and a new steady noise (a
fan switched on), which stands out only until the background tracker catches up (two seconds)
and has none of the rise and fall of syllables.

The hangover (quiet that ends a turn) is counted from the last sound the detector could hear.
In noise, the faded ends and soft onsets of words sink under the background, so a pause looks
longer than it is by roughly what the noise hides; the hangover grows by up to
`noise_hangover_ms` as the turn's speech stands less far above the background. The end of the
turn is heard early by the same amount, so the wait after the user's real last sound stays
about the same.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad

from app.audio.spectrum import SILENT_DB, Analysis, NoiseTracker, Spectrum, rms_db
from engine.protocol import SAMPLE_RATE

FRAME_MS = (10, 20, 30)  # the frame lengths webrtcvad accepts

EndReason = Literal["silence", "max_length", "released", "flush"]


@dataclass(frozen=True)
class Sensitivity:
    vad_mode: int  # webrtcvad aggressiveness: 0 keeps the most, 3 filters the most non-speech
    floor_db: float  # frames quieter than this (dBFS RMS) are never speech
    start_margin_db: float  # how far above the background a frame must be to count as speech
    hold_margin_db: float  # how far above the background sound must stay to keep a turn open
    hangover_ms: int  # quiet that ends a turn, in a quiet room
    noise_hangover_ms: int  # added when the speech is only MURKY_SNR_DB above the background


# "low" reacts to less (noisy rooms) and answers sooner, "high" hears quiet voices and waits longer.
# Tuned with benchmarks/endpointing.py: pauses of 500 ms inside a sentence plus the word endings
# lost in the noise must stay under the hangover.
PRESETS: dict[str, Sensitivity] = {
    "low": Sensitivity(vad_mode=3, floor_db=-42.0, start_margin_db=8.0, hold_margin_db=5.0, hangover_ms=480,
                       noise_hangover_ms=30),
    "normal": Sensitivity(vad_mode=3, floor_db=-48.0, start_margin_db=6.0, hold_margin_db=4.0, hangover_ms=570,
                          noise_hangover_ms=30),
    "high": Sensitivity(vad_mode=2, floor_db=-55.0, start_margin_db=5.0, hold_margin_db=3.5, hangover_ms=750,
                        noise_hangover_ms=60),
}
ECHO_GAIN_DB = -10.0  # our own voice reaches the mic about this far below what we play (speakers)
HOLD_MS = 60  # sound above the hold margin must last this long: single noise frames poke above it
# The turn's speech level over the background at which the hangover starts to grow (CLEAR) and
# where it has grown by the whole noise_hangover_ms (MURKY): at 20 dB little of a word sinks
# under the noise, at 8 dB its last and first 100-200 ms can.
CLEAR_SNR_DB = 18.0
MURKY_SNR_DB = 8.0
SPEECH_LEVEL_S = 3.0  # the speech level follows the last few seconds of voiced frames
TONAL_SHARE = 0.6  # a turn with more of its voiced frames holding still than this is not a voice
# Syllables make a voice's level swing: between the 10th and 90th percentile of a turn's frames,
# espeak-ng sentences span 8-10 dB at 5 dB SNR (noise fills the dips) and 16 dB or more at 20 dB;
# a fan spinning up spans 3-5 dB.
SYLLABIC_SPREAD_DB = 7.0


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    t: float  # stream seconds where speech began (the first voiced frame)


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    pcm: bytes  # 16 kHz mono int16, from pcm_start_t: pre-roll, the speech and a short tail
    start_t: float  # first voiced frame (or the key press)
    end_t: float  # end of the last voiced frame (or the key release, or the cap)
    reason: EndReason
    pcm_start_t: float


@dataclass(frozen=True, slots=True)
class SpeechDiscarded:
    """A started turn that held too little speech to send (a cough, a bump, a tap on the key)."""

    start_t: float
    end_t: float


@dataclass(frozen=True, slots=True)
class Level:
    t: float  # stream seconds at the end of the frame
    db: float  # frame RMS in dBFS, for the level meter
    voiced: bool  # whether the frame counted as speech


Event = SpeechStarted | SpeechEnded | SpeechDiscarded | Level


class Endpointer:
    """Splits a stream of frames into turns. Not thread-safe: one thread pushes and presses."""

    def __init__(
        self,
        sensitivity: str | Sensitivity = "normal",
        *,
        hands_free: bool = True,
        pre_roll_ms: int = 500,
        start_window_ms: int = 300,
        start_voiced_ms: int = 150,
        min_speech_ms: int = 250,
        tail_ms: int = 200,
        max_turn_s: float = 60.0,
        echo_gain_db: float = ECHO_GAIN_DB,
        echo_margin_db: float = 6.0,
        echo_hold_ms: int = 300,
        headphones: bool = False,
    ) -> None:
        self.sensitivity = PRESETS[sensitivity] if isinstance(sensitivity, str) else sensitivity
        self.hands_free = hands_free
        self.headphones = headphones
        # Speech starts when start_voiced_ms of the last start_window_ms were voiced: a lone
        # click or a short bump never gets there.
        self.start_window = ms_to_samples(start_window_ms)
        self.start_voiced = ms_to_samples(start_voiced_ms)
        self.pre_roll = ms_to_samples(pre_roll_ms)
        self.min_speech = ms_to_samples(min_speech_ms)
        self.tail = ms_to_samples(tail_ms)  # audio kept after the last sound, so the last consonant is whole
        self.max_turn = int(max_turn_s * SAMPLE_RATE)
        # Our own voice reaches the mic about echo_gain_db below what we play; the user has to
        # be echo_margin_db louder than that. Held over echo_hold_ms for room and device delay.
        self.echo_gain_db = echo_gain_db
        self.echo_margin_db = echo_margin_db
        self.echo_hold = ms_to_samples(echo_hold_ms)
        self.vad = webrtcvad.Vad(self.sensitivity.vad_mode)
        self.noise = NoiseTracker()
        self.noise_db = SILENT_DB
        self.spectrum = Spectrum()
        self.speech_db: float | None = None  # level of the user's voiced frames lately, for the hangover
        self.playback_db = SILENT_DB
        self.echo_levels: deque[tuple[int, float]] = deque()
        self.now = 0  # samples pushed so far
        self.loud_run = 0  # samples in a row above the hold margin
        # (start sample, pcm, voiced, voiced and steady, speech-band dB) of recent frames: pre-roll and
        # the start decision.
        self.recent: deque[tuple[int, bytes, bool, bool, float]] = deque()
        self.delivered_until = 0  # a new turn's pre-roll never repeats audio already sent
        self.turn: Turn | None = None
        self.held = False

    @property
    def in_turn(self) -> bool:
        return self.turn is not None

    def set_sensitivity(self, sensitivity: str | Sensitivity) -> None:
        self.sensitivity = PRESETS[sensitivity] if isinstance(sensitivity, str) else sensitivity
        self.vad.set_mode(self.sensitivity.vad_mode)

    def set_playback_level(self, db: float) -> None:
        """The level (dBFS) of what the speaker is playing now; SILENT_DB when nothing plays."""
        self.playback_db = db

    @property
    def echo_db(self) -> float:
        """The loudest echo of our own playback the mic may be hearing now."""
        return max(level for _, level in self.echo_levels) + self.echo_gain_db

    def push(self, frame: bytes) -> list[Event]:
        samples = np.frombuffer(frame, dtype=np.int16)
        if len(samples) * 1000 // SAMPLE_RATE not in FRAME_MS or len(samples) * 1000 % SAMPLE_RATE:
            raise ValueError(f"frames must be 10, 20 or 30 ms of 16 kHz int16, got {len(samples)} samples")
        start, self.now = self.now, self.now + len(samples)
        analysis = self.spectrum.analyse(samples)
        voiced, sounding = self.classify(frame, samples, analysis)
        steady = voiced and analysis.steady
        self.remember(start, frame, voiced, steady, analysis.speech_db)
        events: list[Event] = [Level(self.now / SAMPLE_RATE, rms_db(samples), voiced)]
        if self.turn is None:
            if self.hands_free and self.voiced_in_window() >= self.start_voiced:
                onset = next(s for s, _, v, _, _ in self.recent if v and s >= self.now - self.start_window)
                events.append(self.begin(onset))
            return events
        if self.now - self.turn.pcm_start > self.max_turn:
            # Cut before this frame and carry on in a new turn at once: a long monologue arrives in
            # pieces, none longer than the cap, none lost.
            events.append(self.finish(start, "max_length"))
            events.append(self.begin(start, continued=True))
            return events
        self.turn.add(frame, voiced, sounding, self.now, steady, analysis.speech_db)
        if not self.held and self.now - self.turn.last_sound >= ms_to_samples(self.hangover_ms()):
            events.append(self.finish(self.turn.last_sound, "silence"))
        return events

    def press(self) -> list[Event]:
        """Push-to-talk key down: a turn starts now (with pre-roll) and lasts until release."""
        self.held = True
        return [] if self.turn is not None else [self.begin(self.now)]

    def release(self) -> list[Event]:
        """Push-to-talk key up: the turn ends now, however much silence it holds."""
        self.held = False
        return [] if self.turn is None else [self.finish(self.now, "released")]

    def flush(self) -> list[Event]:
        """The stream ended (device lost, app closing): deliver the turn in progress."""
        self.held = False
        return [] if self.turn is None else [self.finish(self.now, "flush")]

    def hangover_ms(self) -> float:
        """The quiet that ends the turn now: longer the less the speech stands out of the background."""
        preset = self.sensitivity
        if self.speech_db is None:
            return preset.hangover_ms
        murk = (CLEAR_SNR_DB - (self.speech_db - self.noise_db)) / (CLEAR_SNR_DB - MURKY_SNR_DB)
        return preset.hangover_ms + preset.noise_hangover_ms * min(max(murk, 0.0), 1.0)

    def classify(self, frame: bytes, samples: np.ndarray, analysis: Analysis) -> tuple[bool, bool]:
        """(voiced, sounding): speech that may start a turn, and sound that keeps one open."""
        preset = self.sensitivity
        seconds = len(samples) / SAMPLE_RATE
        db = analysis.speech_db
        self.noise_db = noise_db = self.noise.update(db, seconds)
        self.echo_levels.append((self.now, self.playback_db))
        while self.echo_levels[0][0] < self.now - self.echo_hold:
            self.echo_levels.popleft()
        audible = db >= preset.floor_db and (self.headphones or db >= self.echo_db + self.echo_margin_db)
        loud = audible and (db >= noise_db + preset.hold_margin_db or analysis.band_above)
        self.loud_run = self.loud_run + len(samples) if loud else 0
        voiced = (
            audible
            and db >= noise_db + preset.start_margin_db
            and not impulsive(samples)
            and self.vad.is_speech(frame, SAMPLE_RATE)
        )
        if voiced:
            self.speech_db = db if self.speech_db is None else self.speech_db + (db - self.speech_db) * min(
                1.0, seconds / SPEECH_LEVEL_S)
        return voiced, voiced or self.loud_run >= ms_to_samples(HOLD_MS)

    def remember(self, start: int, frame: bytes, voiced: bool, steady: bool, db: float) -> None:
        self.recent.append((start, frame, voiced, steady, db))
        keep = max(self.pre_roll, self.start_window) + self.start_window
        while self.recent[0][0] < self.now - keep:
            self.recent.popleft()

    def voiced_in_window(self) -> int:
        window_start = self.now - self.start_window
        return sum(len(pcm) // 2 for s, pcm, v, _, _ in self.recent if v and s >= window_start)

    def begin(self, onset: int, continued: bool = False) -> SpeechStarted:
        pcm_start = max(onset - self.pre_roll, self.delivered_until, 0)
        self.turn = Turn(onset, pcm_start, continued)
        for start, pcm, voiced, steady, db in self.recent:
            end = start + len(pcm) // 2
            if end > pcm_start:
                counted = voiced and start >= onset
                self.turn.add(pcm[max(0, pcm_start - start) * 2 :], counted, counted, end, counted and steady, db)
        return SpeechStarted(onset / SAMPLE_RATE)

    def finish(self, end: int, reason: EndReason) -> SpeechEnded | SpeechDiscarded:
        turn, self.turn = self.turn, None
        assert turn is not None
        if reason == "released":  # the user held the key: whatever it holds is theirs
            wanted = end - turn.onset >= self.min_speech
        else:  # a continued turn always goes out: it carries on real speech, and nothing is lost
            wanted = (turn.voiced >= self.min_speech or (turn.continued and turn.voiced > 0)) and turn.voice_like
        if not wanted:
            return SpeechDiscarded(turn.onset / SAMPLE_RATE, end / SAMPLE_RATE)
        pcm_end = min(self.now, end + self.tail) if reason == "silence" else end
        self.delivered_until = pcm_end
        pcm = bytes(turn.pcm[: (pcm_end - turn.pcm_start) * 2])
        return SpeechEnded(pcm, turn.onset / SAMPLE_RATE, end / SAMPLE_RATE, reason, turn.pcm_start / SAMPLE_RATE)


class Turn:
    """The audio and voicing bookkeeping of the turn in progress."""

    def __init__(self, onset: int, pcm_start: int, continued: bool) -> None:
        self.onset = onset
        self.pcm_start = pcm_start
        self.continued = continued
        self.pcm = bytearray()
        self.voiced = 0  # voiced samples, for the minimum speech length
        self.steady = 0  # voiced samples whose spectrum held still: notes, not a voice
        self.levels: list[float] = []  # speech-band dB of each frame, for the rise and fall of syllables
        self.last_sound = onset  # end of the last frame that held the turn open: the hangover counts from here

    @property
    def voice_like(self) -> bool:
        """Not notes (a held spectrum) and not a flat new noise (no syllables)."""
        spread = float(np.subtract(*np.percentile(self.levels, [90, 10]))) if self.levels else 0.0
        return self.steady <= TONAL_SHARE * self.voiced and spread >= SYLLABIC_SPREAD_DB

    def add(self, pcm: bytes, voiced: bool, sounding: bool, end: int, steady: bool, db: float) -> None:
        self.pcm += pcm
        self.levels.append(db)
        if voiced:
            self.voiced += len(pcm) // 2
        if steady:
            self.steady += len(pcm) // 2
        if sounding:
            self.last_sound = end


def impulsive(samples: np.ndarray, block: int = 80, share: float = 0.7) -> bool:
    """Whether most of the frame's energy sits in one 5 ms stretch: a click or a knock, not a voice.

    Voiced speech repeats a glottal pulse every 2.5–10 ms, so its energy spreads over the frame.
    """
    per_block = np.square(samples, dtype=np.float64).reshape(-1, block).sum(axis=1)
    total = per_block.sum()
    return bool(total > 0 and per_block.max() > share * total)


def ms_to_samples(ms: float) -> int:
    return int(ms * SAMPLE_RATE / 1000)
