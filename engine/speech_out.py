"""From the LLM's hidden states to streamed 16 kHz audio.

hidden state per generated token → incremental CTC generator (units) → chunker → streaming
vocoder. The first chunk is small so the user hears the reply early; later chunks are larger
because every vocoder call pays for its context margins.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.model.speech_generator import CTCSpeechGenerator
from engine.model.streaming_vocoder import StreamingVocoder
from engine.model.vocoder import UnitVocoder

FIRST_CHUNK_UNITS = 6
LATER_CHUNK_UNITS = 40


class SpeechOutput:
    def __init__(
        self,
        generator: CTCSpeechGenerator,
        vocoder: UnitVocoder,
        first_chunk: int = FIRST_CHUNK_UNITS,
        later_chunk: int = LATER_CHUNK_UNITS,
    ) -> None:
        self.units = generator.new_stream()
        self.vocoder = StreamingVocoder(vocoder)
        self.first_chunk, self.later_chunk = first_chunk, later_chunk
        self.waiting: list[int] = []
        self.sent_any = False
        self.unit_count = 0

    def push(self, hidden_state: torch.Tensor) -> np.ndarray:
        """Feed one generated token's final hidden state; returns audio that is now final (maybe empty)."""
        return self.push_frames(self.frames(hidden_state).tolist())

    def frames(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """First half of `push`: the token's CTC frame ids, computed on the generator's device."""
        return self.units.frames(hidden_state)

    def push_frames(self, frame_ids: list[int]) -> np.ndarray:
        """Second half of `push`: the frame ids `frames` returned, brought to the host."""
        new_units = self.units.collapse(frame_ids)
        self.unit_count += len(new_units)
        self.waiting += new_units
        if len(self.waiting) < (self.later_chunk if self.sent_any else self.first_chunk):
            return np.zeros(0, dtype=np.float32)
        units, self.waiting = self.waiting, []
        audio = self.vocoder.push(units)
        self.sent_any = self.sent_any or audio.size > 0
        return audio

    def flush(self) -> np.ndarray:
        """End of turn: everything still held back, so a short reply is not lost."""
        units, self.waiting = self.waiting, []
        tail = self.vocoder.push(units) if units else np.zeros(0, dtype=np.float32)
        return np.concatenate([tail, self.vocoder.flush()]).astype(np.float32)
