"""Generated sounds for the audio tests: speech-like voicing and quiet room noise, 16 kHz int16.

`RNG` is shared, seeded once: the tests that draw noise from it see the same samples every run.
"""

from __future__ import annotations

import numpy as np

RATE = 16000
RNG = np.random.default_rng(0)


def speech(seconds: float, dbfs: float = -20.0) -> np.ndarray:
    """Voiced-like int16 audio at about dbfs RMS: harmonics of a pitch gliding around 150 Hz as
    intonation does, with a syllable-rate wobble. (A held pitch is a note: see `note`.)"""
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(150 * (1 + 0.25 * np.sin(2 * np.pi * 2.5 * t))) / RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (wave / np.sqrt(np.mean(wave**2)) * 10 ** (dbfs / 20) * 32767).astype(np.int16)


def quiet(seconds: float, dbfs: float = -65.0) -> np.ndarray:
    """Room noise well under the floor."""
    return (RNG.standard_normal(int(seconds * RATE)) * 10 ** (dbfs / 20) * 32767).astype(np.int16)
