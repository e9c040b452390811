"""Test signals shared by the engine and app tests."""

import numpy as np


def tone(seconds: float, rate: int = 16000, channels: int = 1, amplitude: float = 0.3) -> np.ndarray:
    """A voiced-like test signal: harmonics of 150 Hz with a slow amplitude wobble."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wave = (amplitude * wave / np.abs(wave).max()).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave
