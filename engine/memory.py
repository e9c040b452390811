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


# ---- GPU memory of a turn ------------------------------------------------------------------------

CUDA_CONTEXT_BYTES = 600_000_000  # the CUDA context plus cuBLAS / cuDNN workspaces
TRANSCRIPTION_TEXT_TOKENS = 64  # system prompt, instruction and the transcript's own reply, beside the speech
SPEECH_TOKENS_PER_CLIP = 300  # one 30 s clip after the projector's 5-frame stacking


def adapter_bytes(config: LyraConfig, size: ModelSize, half_bytes: int = 2) -> int:
    """Both LoRA adapters: they are injected at load time and stay resident, whichever one a turn uses."""
    return lora_bytes(config, size.lora_rank, half_bytes) + lora_bytes(config, size.long_lora_rank, half_bytes)


def kv_bytes_per_token(config: LyraConfig, half_bytes: int = 2) -> int:
    """Keys and values of one position in one layer."""
    text = config.text
    return 2 * text.num_kv_heads * (text.hidden_size // text.num_heads) * half_bytes


def decode_kv_bytes(config: LyraConfig, tokens: int, half_bytes: int = 2) -> int:
    """KV cache once decoding follows a prefill that brought the conversation to `tokens`.

    The growing cache (engine/model/kv_cache.py) holds exactly the prompt after the prefill and
    doubles a layer's capacity at its first decode step, one layer after the other: at the last
    layer every layer holds 2·tokens and that layer's old buffer still lives beside its new one.
    """
    per_layer = kv_bytes_per_token(config, half_bytes) * tokens
    return (2 * config.text.num_layers + 1) * per_layer


def prefill_peak_bytes(config: LyraConfig, tokens: int, mode: str, lora: bool, half_bytes: int = 2) -> int:
    """Transient memory at the largest step of a prefill over `tokens` new positions: a decoder MLP.

    At `up_proj`, `act(gate)` is alive beside the projection's result; a LoRA layer adds its B output and
    the sum (peft computes `result + lora_B(lora_A(x)) * scaling` out of place): (3 + lora) · T × ffn,
    plus the layer's input, its normed copy and the residual (3 · T × hidden), measured on the meta device
    (tests/engine/test_memory.py). bitsandbytes dequantizes one block matrix at a time for a prefill.
    Attention (memory-efficient or flash kernels), extraction scoring (64 MB chunks) and the media
    encoders (one 30 s clip, one image) stay below the MLP at the shapes Lyra has.
    """
    text = config.text
    hidden, ffn = text.hidden_size, text.intermediate_size
    activations = ((3 + int(lora)) * ffn + 3 * hidden) * tokens * half_bytes
    dequantized = ffn * hidden * half_bytes if mode in ("nf4", "int8") else 0
    return activations + dequantized


def transcription_bytes(config: LyraConfig, clips: int, mode: str, half_bytes: int = 2) -> int:
    """A transcription builds a cache of its own beside the conversation's (Session.aside)."""
    tokens = SPEECH_TOKENS_PER_CLIP * clips + TRANSCRIPTION_TEXT_TOKENS
    return decode_kv_bytes(config, tokens, half_bytes) + prefill_peak_bytes(config, tokens, mode, True, half_bytes)


def gpu_bytes_needed(model: LyraModel, size: ModelSize, mode: str, tokens: int, new_tokens: int) -> int:
    """Peak GPU memory of a spoken turn (LoRA active) that brings the conversation to `tokens`, `new_tokens`
    of them in its prompt, followed by the transcription of its 30 s clip."""
    config = model.config
    half = 4 if mode == "fp32" else 2
    weights = sum(weight_bytes_by_part(model, mode).values()) + adapter_bytes(config, size, half)
    cached = kv_bytes_per_token(config, half) * config.text.num_layers * tokens
    prefill = cached + prefill_peak_bytes(config, new_tokens, mode, True, half)
    decode = decode_kv_bytes(config, tokens, half)
    transcription = 2 * cached + transcription_bytes(config, 1, mode, half)  # the reply's cache stays doubled
    return CUDA_CONTEXT_BYTES + weights + max(prefill, decode, transcription)
