"""The Lyra omni model assembled from transformers' own modules.

    image  → Qwen2-VL ViT (its patch merger already outputs the LLM width)
    speech → Whisper encoder on 30 s clips → SpeechProjector (5-frame stacking MLP)
    tokens → Qwen2-VL text decoder with 3-row M-RoPE → lm_head
    final hidden state of every step → CTC speech generator → units (→ vocoder, elsewhere)

The decoder is driven layer by layer here (not through `Qwen2VLTextModel.forward`) so the
prefill can drop media tokens between layers and every layer can keep a cache of its own length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, WhisperConfig
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLTextModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from engine.config import LyraConfig
from engine.model.speech_generator import CTCSpeechGenerator, parse_ctc_decoder_config
from engine.model.speech_projector import SpeechProjector

WHISPER_HEAD_DIM = 64  # every Whisper size uses 64-wide heads; the head count follows from d_model
VISION_KEYS = ("depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads",
               "patch_size", "spatial_merge_size", "temporal_patch_size")
ADAPTERS = ("speech", "long_speech")
GROUPED_SDPA = "omnivox_sdpa"  # the LLM's SDPA, registered with transformers below


@dataclass(frozen=True)
class SpeechEncoderDims:
    """Whisper encoder sizes, read from the checkpoint's tensor shapes (config.json lacks them)."""

    n_mels: int
    width: int
    layers: int
    ffn: int
    positions: int
    projector_hidden: int


def text_config(config: LyraConfig, attn_implementation: str) -> Qwen2VLTextConfig:
    text = config.text
    return Qwen2VLTextConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_layers,
        num_attention_heads=text.num_heads,
        num_key_value_heads=text.num_kv_heads,
        hidden_act=text.hidden_act,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": text.rope_theta,
                         "mrope_section": list(text.mrope_section)},
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation=attn_implementation,
    )


def vision_config(config: LyraConfig, attn_implementation: str) -> Qwen2VLVisionConfig:
    raw = dict(config.vision)
    if "in_chans" in raw:  # transformers 4.45 spelling
        raw["in_channels"] = raw.pop("in_chans")
    values = {k: raw[k] for k in VISION_KEYS if k in raw}
    values["hidden_size"] = config.text.hidden_size  # the merger projects into the LLM width
    values["in_channels"] = raw.get("in_channels", 3)
    return Qwen2VLVisionConfig(**values, attn_implementation=attn_implementation)


def whisper_config(dims: SpeechEncoderDims, attn_implementation: str) -> WhisperConfig:
    return WhisperConfig(
        num_mel_bins=dims.n_mels,
        d_model=dims.width,
        encoder_layers=dims.layers,
        encoder_attention_heads=max(1, dims.width // WHISPER_HEAD_DIM),
        encoder_ffn_dim=dims.ffn,
        max_source_positions=dims.positions,
        attn_implementation=attn_implementation,
    )


def flash_takes_groups(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether SDPA can run grouped KV heads (`enable_gqa`) without a mask in a fused kernel.

    On the CPU the fused kernel takes them. On CUDA, torch 2.13 accepts grouped heads only in the flash
    kernel (the memory-efficient kernel checks `check_batch_size_and_num_heads_dense<supports_gqa=false>`,
    sdp_utils_cpp.h), and flash needs compute capability 8.0+, fp16/bf16 and head_dim ≤ 256.
    """
    if device.type != "cuda":
        return True
    return (torch.backends.cuda.flash_sdp_enabled() and dtype in (torch.float16, torch.bfloat16)
            and torch.cuda.get_device_capability(device) >= (8, 0) and head_dim <= 256 and head_dim % 8 == 0)


def grouped_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA, except for a maskless prefill that flash cannot take with grouped KV heads.

    transformers then passes `enable_gqa=True`, and without flash (Turing, or fp32) SDPA falls back to
    its math kernel: O(heads · T²) fp32 scores on a first-turn prefill, gigabytes at 16k tokens. Expanded
    KV heads (a transient heads/kv_heads copy of this layer's keys and values) let the memory-efficient
    kernel run instead.
    """
    length, heads = query.shape[2], query.shape[1]
    if attention_mask is None and length > 1 and key.shape[1] != heads and not flash_takes_groups(
            query.device, query.dtype, query.shape[-1]):
        groups = heads // key.shape[1]
        out = F.scaled_dot_product_attention(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                             is_causal=module.is_causal, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)


class LyraModel(nn.Module):
    def __init__(self, config: LyraConfig, speech_dims: SpeechEncoderDims, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        hidden = config.text.hidden_size
        self.attention = attn_implementation
        self.llm = Qwen2VLTextModel(text_config(config, attn_implementation))
        if attn_implementation == "sdpa":  # the LLM is the only part with grouped KV heads
            self.llm.config._attn_implementation = GROUPED_SDPA
        self.lm_head = nn.Linear(hidden, config.text.vocab_size, bias=False)
        self.vision_tower = Qwen2VisionTransformerPretrainedModel(vision_config(config, attn_implementation))
        self.speech_tower = WhisperEncoder(whisper_config(speech_dims, attn_implementation))
        # Each LoRA adapter was trained with its own projector; the request picks one.
        self.speech_projectors = nn.ModuleDict({
            name: SpeechProjector(speech_dims.width, hidden, config.speech_downsample, speech_dims.projector_hidden)
            for name in ADAPTERS
        })
        layers, width, heads, ffn = parse_ctc_decoder_config(config.ctc_decoder_config)
        self.speech_generator = CTCSpeechGenerator(
            hidden, layers=layers, width=width, heads=heads, ffn=ffn,
            unit_vocab_size=config.unit_vocab_size, upsample=config.ctc_upsample_factor,
        )

    # ---- media encoders -------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.norm.weight.device

    def encode_image(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Processor patches → (tokens, hidden) vision embeddings, one per 2×2 merged patch."""
        tower_dtype = self.vision_tower.patch_embed.proj.weight.dtype
        out = self.vision_tower(pixel_values.to(self.device, tower_dtype), grid_thw=grid_thw.to(self.device))
        return out.pooler_output.to(self.dtype)

    def encode_speech(self, features: torch.Tensor, adapter: str) -> torch.Tensor:
        """Log-mel features (clips, mels, 3000) → (300 · clips, hidden) speech embeddings."""
        tower_dtype = self.speech_tower.conv1.weight.dtype
        frames = self.speech_tower(features.to(self.device, tower_dtype)).last_hidden_state
        projector = self.speech_projectors[adapter]
        return projector(frames.to(projector.linear1.weight.dtype)).to(self.dtype)

    # ---- decoder ---------------------------------------------------------------------------

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.llm.embed_tokens(input_ids.to(self.device))

    def rotary(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (3, T) M-RoPE rows → cos/sin for a batch of one."""
        return self.llm.rotary_emb(hidden, positions.to(self.device)[:, None, :])

    def run_layer(
        self,
        index: int,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        cache: Cache,
    ) -> torch.Tensor:
        """One decoder layer over `hidden` (1, T, H) appended after what `cache` holds for it.

        Each layer's cache length is its own (token extraction shortens later layers), so the
        causal mask is built here from that layer's length rather than once for the model.
        """
        length = hidden.shape[1]
        past = cache.get_seq_length(index) if index < len(cache.layers) else 0
        mask = causal_mask(length, past, hidden.dtype, hidden.device) if self.needs_mask(length, past) else None
        return self.llm.layers[index](
            hidden, attention_mask=mask, position_embeddings=rotary, cache=cache, use_cache=True
        )

    def needs_mask(self, length: int, past: int) -> bool:
        """Whether attention needs an explicit causal mask for `length` new queries after `past` keys.

        A single decode query sees every cached key. Flash attention aligns a causal block to the
        end of the cache by itself, and SDPA's own is_causal is right when there is no past (a
        T×T float mask would cost 1 GB at 16k tokens). SDPA after a past (its is_causal would
        align to the start) and eager attention (no causality of its own) get the mask.
        """
        if length == 1 or self.attention.startswith("flash"):
            return False
        return not (self.attention == "sdpa" and past == 0)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.norm(hidden)

    def logits(self, normed_hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(normed_hidden.to(self.dtype)).float()


def causal_mask(length: int, past: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (1, 1, length, past + length) mask: query i sees keys ≤ past + i."""
    keys = torch.arange(past + length, device=device)
    queries = torch.arange(length, device=device)[:, None] + past
    blocked = keys[None, :] > queries
    mask = torch.zeros(length, past + length, dtype=dtype, device=device)
    mask.masked_fill_(blocked, torch.finfo(dtype).min)
    return mask[None, None]
