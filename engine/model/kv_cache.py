"""A KV cache whose layers grow by doubling instead of concatenating.

transformers' `DynamicLayer` `torch.cat`s its whole key/value tensors on every update, so each
decode step copies everything cached so far: per-token cost grows with the reply (the CTC
generator appends 25 frames per token) and with the prompt (16k media tokens × every layer).
Here each layer writes into spare capacity and hands out views; appending is amortised O(new).
Each layer still has its own length, which token extraction relies on.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

MIN_CAPACITY = 256


class GrowingLayer(DynamicLayer):
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.length = 0
        self.key_buffer = key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[3])
        self.value_buffer = value_states.new_empty(*value_states.shape[:2], 0, value_states.shape[3])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[2]
        if end > self.key_buffer.shape[2]:
            self.reserve(max(end, 2 * self.key_buffer.shape[2], MIN_CAPACITY))
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def reserve(self, capacity: int) -> None:
        """Move the cached states into buffers of `capacity` positions."""
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], capacity, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def truncate(self, length: int) -> None:
        """Forget everything after the first `length` positions."""
        if self.is_initialized and length < self.length:
            self.length = length
            self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def release_spare(self) -> None:
        """Shrink the buffers to what the layer holds (after a failed turn grew them for nothing)."""
        if self.is_initialized and self.key_buffer.shape[2] > max(self.length, MIN_CAPACITY):
            self.reserve(max(self.length, MIN_CAPACITY))
            self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False


class GrowingCache(Cache):
    """A cache of `GrowingLayer`s, created as layers first write to it."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=GrowingLayer)

    def lengths(self) -> list[int]:
        return [layer.get_seq_length() for layer in self.layers]

    def truncate(self, lengths: list[int]) -> None:
        """Roll every layer back to `lengths` (layers created since then back to empty)."""
        for index, layer in enumerate(self.layers):
            layer.truncate(lengths[index] if index < len(lengths) else 0)

    def release_spare(self) -> None:
        for layer in self.layers:
            layer.release_spare()
