"""Streaming wrapper around UnitVocoder whose concatenated output equals one-shot vocoding.

Units arrive in chunks while the language model speaks. Two things are not final right away:

* a unit's duration: the duration predictor sees two units on each side (two k=3 convs), so a unit's
  frame count is fixed once two more units have arrived, or at the end of the turn;
* a frame's audio: the generator is non-causal, so the samples of frame k are fixed once
  `CONTEXT_FRAMES` frames to its right are known, or at the end of the turn.

Each push vocodes only a window: `CONTEXT_FRAMES` frames of already-emitted left context, the frames
whose audio is now final, and `CONTEXT_FRAMES` frames of right context; it keeps the middle. Outside
its receptive field the generator cannot tell the window from the whole utterance, so the kept
samples match the one-shot output up to float rounding. The utterance start gets no synthetic left
context, because the one-shot run zero-pads there too; likewise the last window ends at the true end.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.model.vocoder import UnitVocoder

# The generator's one-sided receptive field is 6418 output samples, about 20.06 frames of 320 samples.
# The last sample of frame k (320k + 319) must see through 320k + 319 + 6418, which needs frames up to
# k + 21; symmetric on the left. 21 frames = 420 ms of look-ahead latency.
CONTEXT_FRAMES = 21

# The duration predictor's one-sided context in units: two stacked k=3 convs.
DURATION_CONTEXT_UNITS = 2


class StreamingVocoder:
    """Turns a stream of unit ids into final 16 kHz float32 audio, chunk by chunk.

    `min_chunk_frames` trades latency for compute: each vocoded window costs 2 * CONTEXT_FRAMES frames
    of context on top of the frames it emits, so emitting only once that many new frames are final
    keeps the overhead down when units are pushed one at a time. Output is the same for any value.
    """

    context_frames = CONTEXT_FRAMES

    def __init__(
        self, vocoder: UnitVocoder, *, dur_prediction: bool = True, min_chunk_frames: int = 1
    ) -> None:
        if dur_prediction and vocoder.dur_predictor is None:
            raise ValueError("this vocoder has no duration predictor; use dur_prediction=False")
        if min_chunk_frames < 1:
            raise ValueError(f"min_chunk_frames must be at least 1, got {min_chunk_frames}")
        self.vocoder = vocoder
        self.dur_prediction = dur_prediction
        self.min_chunk_frames = min_chunk_frames
        self.sample_rate = vocoder.sample_rate
        self.reset()

    def reset(self) -> None:
        """Forget the current turn."""
        # Units from absolute index `_unit_base` on: the last DURATION_CONTEXT_UNITS units with final
        # durations (left context for the predictor) plus every unit whose duration is still open.
        self._units: list[int] = []
        self._unit_base = 0
        self._units_final = 0  # absolute count of units whose frames have been appended
        # Frame unit ids from absolute frame `_frame_base` on: up to CONTEXT_FRAMES emitted frames as
        # left context, then the frames not yet emitted.
        self._frames: list[int] = []
        self._frame_base = 0
        self._frames_emitted = 0

    def push(self, units: list[int]) -> np.ndarray:
        """Add units; return the audio that became final (float32, possibly empty)."""
        self._check_units(units)
        self._units.extend(int(u) for u in units)
        received = self._unit_base + len(self._units)
        self._finalize_units(received - DURATION_CONTEXT_UNITS if self.dur_prediction else received)
        return self._emit(end_of_turn=False)

    def flush(self) -> np.ndarray:
        """End the turn: return all remaining audio and reset for the next turn."""
        self._finalize_units(self._unit_base + len(self._units))
        audio = self._emit(end_of_turn=True)
        self.reset()
        return audio

    def _check_units(self, units: list[int]) -> None:
        limit = self.vocoder.config.num_embeddings
        for unit in units:
            if isinstance(unit, bool) or not isinstance(unit, int | np.integer) or not 0 <= unit < limit:
                raise ValueError(f"unit {unit!r} is not an id in 0..{limit - 1} (remove CTC blanks first)")

    def _finalize_units(self, upto: int) -> None:
        """Fix the durations of units [_units_final, upto) and append their frames."""
        if upto <= self._units_final:
            return
        if self.dur_prediction:
            # Predict on the new units plus up to two units of context on each side, which the
            # predictor sees exactly as in a one-shot run (zero padding only at the true edges).
            start = max(self._unit_base, self._units_final - DURATION_CONTEXT_UNITS)
            stop = min(self._unit_base + len(self._units), upto + DURATION_CONTEXT_UNITS)
            window = torch.tensor(self._units[start - self._unit_base : stop - self._unit_base])
            first = self._units_final - start
            durations = self.vocoder.durations(window)[first : first + upto - self._units_final].tolist()
        else:
            durations = [1] * (upto - self._units_final)
        new_units = self._units[self._units_final - self._unit_base : upto - self._unit_base]
        for unit, count in zip(new_units, durations, strict=True):
            self._frames.extend([unit] * count)
        self._units_final = upto
        keep_from = max(self._unit_base, upto - DURATION_CONTEXT_UNITS)
        del self._units[: keep_from - self._unit_base]
        self._unit_base = keep_from

    def _emit(self, *, end_of_turn: bool) -> np.ndarray:
        known = self._frame_base + len(self._frames)
        final = known if end_of_turn else known - CONTEXT_FRAMES
        ready = final - self._frames_emitted
        if ready <= 0 or (not end_of_turn and ready < self.min_chunk_frames):
            return np.zeros(0, dtype=np.float32)
        # The window is every kept frame: left context from _frame_base, right context up to `known`.
        audio = self.vocoder.synthesize_frames(torch.tensor(self._frames))
        hop = self.vocoder.hop_length
        kept = audio[(self._frames_emitted - self._frame_base) * hop : (final - self._frame_base) * hop]
        self._frames_emitted = final
        keep_from = max(0, final - CONTEXT_FRAMES)
        del self._frames[: keep_from - self._frame_base]
        self._frame_base = keep_from
        return kept.float().cpu().numpy()
