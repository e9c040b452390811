"""Weight memory of a Lyra architecture at each precision, computed without any weights.

The model is built on the meta device and every parameter is priced as the loader would store
it: bitsandbytes block matrices at their packed size plus quantization statistics, the rest in
half precision (fp32 only in `fp32` mode).
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from engine.config import LyraConfig
from engine.model.lyra import LyraModel, SpeechEncoderDims
from engine.quantize import NF4_BLOCK, PRECISIONS, storage_format
from engine.testing import ModelSize

VOCODER_PARAMETERS = 13_475_010  # the LJ unit HiFi-GAN after weight-norm folding (vocoder.md)
PARTS = ("llm", "lm_head", "vision_tower", "speech_tower", "speech_projectors", "speech_generator")


def build_on_meta(config: LyraConfig, size: ModelSize) -> LyraModel:
    from engine.loading import parameters_on_meta

    dims = SpeechEncoderDims(n_mels=128, width=size.whisper_width, layers=size.whisper_layers,
                             ffn=size.whisper_ffn, positions=1500, projector_hidden=size.projector_hidden)
    with parameters_on_meta():
        return LyraModel(config, dims)


def linear_bytes(weight_numel: int, out_features: int, fmt: str) -> int:
    if fmt == "nf4":
        blocks = weight_numel // NF4_BLOCK
        # 4-bit codes + 8-bit absmax per block (double quantization) + fp32 absmax per 256 blocks,
        # plus the per-layer lookup tables (16 NF4 levels, 256 absmax levels, one offset)
        return weight_numel // 2 + blocks + 4 * -(-blocks // 256) + 4 * (16 + 256 + 1)
    return weight_numel + 4 * out_features  # int8 codes + fp32 row scale


def weight_bytes_by_part(model: LyraModel, mode: str, half_bytes: int = 2) -> dict[str, int]:
    """Bytes per top-level part; `fp32` keeps 4 bytes, every other mode keeps the rest at half."""
    if mode not in PRECISIONS:
        raise ValueError(f"unknown precision {mode!r}")
    plain = 4 if mode == "fp32" else half_bytes
    parts: dict[str, int] = defaultdict(int)
    tied = model.config.text.tie_word_embeddings
    for name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            part = name.split(".")[0]
            if part == "lm_head" and tied:
                continue  # shares the embedding matrix
            fmt = storage_format(name, module.in_features, mode) if isinstance(module, nn.Linear) else None
            if fmt is not None and leaf == "weight":
                parts[part] += linear_bytes(param.numel(), module.out_features, fmt)
            else:
                parts[part] += param.numel() * plain
    parts["vocoder"] = VOCODER_PARAMETERS * plain
    return dict(parts)


def lora_bytes(config: LyraConfig, rank: int, half_bytes: int = 2) -> int:
    """One adapter's A and B matrices on q, k, v, o, gate, up, down of every LLM layer."""
    text = config.text
    head_dim = text.hidden_size // text.num_heads
    kv = text.num_kv_heads * head_dim
    h, f = text.hidden_size, text.intermediate_size
    per_layer = (h + h) + (h + kv) * 2 + (h + h) + (h + f) * 2 + (f + h)
    return rank * per_layer * text.num_layers * half_bytes
