"""What a turn yields, in order: text deltas and audio chunks as they are ready, then TurnDone.

Plain data only, so the same events cross a process or socket boundary without pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.media import SAMPLE_RATE


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class AudioChunk:
    pcm: np.ndarray  # float32 mono
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class TurnDone:
    text: str
    audio_seconds: float
    timings_ms: dict[str, float]
    tokens: dict[str, object]
    adapter: str | None
    cancelled: bool = False
    extra: dict[str, object] = field(default_factory=dict)


Event = TextDelta | AudioChunk | TurnDone
