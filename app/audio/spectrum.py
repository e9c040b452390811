"""What the endpointer hears in a frame beyond its overall level, from one FFT of the last 30 ms.

- The level in the speech band (150 Hz up): a fan's rumble and the hum of mains carry most of
  their power below it and swing by several dB from frame to frame, so with them in, the
  background looks like it keeps rising out of itself.
- Whether any band stands out of its own background: a final "s" or the burst of a final "t"
  is lost in the overall level of a low rumble but clear in its own band.
- Whether the sound holds still: a note (music, a beep, a ring tone) keeps the same spectrum
  for hundreds of milliseconds, while a voice's pitch and formants keep moving.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from engine.protocol import SAMPLE_RATE

SILENT_DB = -100.0  # the level reported for digital silence
WINDOW = 480  # 30 ms
SPEECH_FROM_HZ = 150
# Bands (Hz) judged on their own, and how far a band must rise over its tracked floor to count as
# sound: above the 99.9th percentile of (band level - its 2 s minimum) for stationary noise of any
# colour, in a 30 ms Hann window. Narrow bands hold few FFT bins, so their level wobbles more.
BANDS_HZ = ((100, 250), (250, 500), (500, 1000), (1000, 2000), (2000, 3000), (3000, 4000), (4000, 6000),
            (6000, 8000))
BAND_MARGINS_DB = (16.5, 13.5, 9.5, 7.0, 7.0, 7.0, 5.0, 5.0)
# Spectra 30 ms apart (150 Hz - 4 kHz, magnitudes) at least this alike count as holding still.
# espeak-ng's voices, steadier than people's, stay under it in 60 % or more of their voiced frames;
# notes with harmonics and vibrato stay over it in 75 % or more.
STEADY_SIMILARITY = 0.9


def rms_db(samples: np.ndarray) -> float:
    """RMS level in dBFS of int16 (or float, full scale 1.0 scaled to 32768) samples."""
    mean_square = float(np.mean(np.square(samples, dtype=np.float64))) if len(samples) else 0.0
    return power_db(mean_square)


def power_db(mean_square: float) -> float:
    return 10 * np.log10(mean_square) - 90.309 if mean_square > 1e-3 else SILENT_DB  # 90.309 = 20 log10(32768)


class NoiseTracker:
    """Background level as the minimum frame level over the last few seconds (minimum statistics).

    Speech has gaps between syllables and words that fall back to the background, so the
    minimum follows a fan or traffic but not the voice; kept as per-block minima so each frame
    costs O(1).
    """

    def __init__(self, window_s: float = 2.0, blocks: int = 8) -> None:
        self.block_s = window_s / blocks
        self.minima: deque[float] = deque(maxlen=blocks)
        self.block_fill = self.block_s  # start a fresh block with the first frame

    def update(self, db: float, seconds: float) -> float:
        if self.block_fill >= self.block_s:
            self.minima.append(db)
            self.block_fill = 0.0
        self.minima[-1] = min(self.minima[-1], db)
        self.block_fill += seconds
        return min(self.minima)


@dataclass(frozen=True, slots=True)
class Analysis:
    speech_db: float  # level in the speech band, dBFS
    band_above: bool  # some band stands out of its own background
    steady: bool  # the spectrum is where it was 30 ms ago


class Spectrum:
    """Feed every frame in order; each call looks at the newest 30 ms."""

    def __init__(self) -> None:
        self.window = np.hanning(WINDOW)
        self.window_power = float(np.mean(self.window**2))
        freqs = np.fft.rfftfreq(WINDOW, 1 / SAMPLE_RATE)
        self.speech_from = int(np.searchsorted(freqs, SPEECH_FROM_HZ))
        self.steady_bins = slice(self.speech_from, int(np.searchsorted(freqs, 4000)))
        self.edges = [int(np.searchsorted(freqs, lo)) for lo, _ in BANDS_HZ] + [
            int(np.searchsorted(freqs, BANDS_HZ[-1][1]))]
        self.margins = np.array(BAND_MARGINS_DB)
        self.floors = [NoiseTracker() for _ in BANDS_HZ]
        self.recent: np.ndarray | None = None
        self.past: deque[np.ndarray] = deque()  # magnitude spectra of the last 30 ms of calls

    def analyse(self, samples: np.ndarray) -> Analysis:
        if self.recent is None:  # fill the first window with the first frame, not with silence: the
            self.recent = np.resize(samples.astype(np.float64), WINDOW)  # floors would start far too low
        self.recent = np.concatenate([self.recent[len(samples) :], samples])[-WINDOW:]
        power = np.square(np.abs(np.fft.rfft(self.recent * self.window)))
        # Parseval, counting each one-sided bin twice and undoing the window's loss of power.
        speech_db = power_db(2 * float(power[self.speech_from :].sum()) / (WINDOW**2 * self.window_power))
        bands = 10 * np.log10(np.add.reduceat(power, self.edges)[:-1] + 1.0)  # +1: digital silence stays finite
        seconds = len(samples) / SAMPLE_RATE
        floors = np.array([floor.update(db, seconds) for floor, db in zip(self.floors, bands, strict=True)])
        return Analysis(speech_db, bool(np.any(bands >= floors + self.margins)), self.holds_still(power, len(samples)))

    def holds_still(self, power: np.ndarray, frame_len: int) -> bool:
        """Whether the spectrum matches the one of a whole window ago (so the two share no samples)."""
        magnitude = np.sqrt(power[self.steady_bins])
        self.past.append(magnitude)
        if len(self.past) <= -(-WINDOW // frame_len):
            return False
        before = self.past.popleft()
        norm = float(np.sqrt((magnitude @ magnitude) * (before @ before)))
        return norm > 0 and float(magnitude @ before) / norm >= STEADY_SIMILARITY
