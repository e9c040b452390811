"""Speech projector: Whisper frames → LLM embeddings (Lyra's "simple_mlp")."""

import torch
from torch import nn


class SpeechProjector(nn.Module):
    """Stack `downsample` consecutive encoder frames, then a two-layer ReLU MLP.

    1500 Whisper frames of a 30 s clip become 300 tokens (10 tokens per second of audio).
    """

    def __init__(self, encoder_width: int, llm_width: int, downsample: int, hidden: int = 2048) -> None:
        super().__init__()
        self.downsample = downsample
        self.linear1 = nn.Linear(encoder_width * downsample, hidden)
        self.linear2 = nn.Linear(hidden, llm_width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (clips, T, encoder_width) → (clips · T // downsample, llm_width)."""
        clips, length, width = frames.shape
        length -= length % self.downsample  # drop the frames that do not fill a stack
        stacked = frames[:, :length].reshape(clips, length // self.downsample, width * self.downsample)
        tokens = self.linear2(torch.relu(self.linear1(stacked)))
        return tokens.reshape(-1, tokens.shape[-1])
