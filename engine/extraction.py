"""Latent multi-modality extractor: drop media tokens the question does not attend to.

The decoder's layers are split into `blocks` blocks. At the last layer of every block but the
final one, each media token (image patch or speech frame) is scored by the attention the
instruction tokens — the text at or after the first media token — give it at that layer
(softmax over all keys in fp32, averaged over heads and queries). The top `keep_rate` share
of the media (at least 32) moves on to the next block; text always does. Kept tokens keep their
M-RoPE positions, so later layers see the same geometry with fewer tokens, and every layer's
KV cache simply holds the tokens that reached it: decode needs no special handling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb

from engine.errors import OmnivoxError

MIN_KEPT = 32
SCORE_CHUNK_ELEMENTS = 1 << 24  # ≈ 64 MB of fp32 attention probabilities per scoring chunk


@dataclass(frozen=True)
class ExtractionSettings:
    blocks: int = 4
    keep_rate: float = 0.7

    def validate(self, num_layers: int) -> None:
        if not 0.0 < self.keep_rate <= 1.0:
            raise OmnivoxError(f"keep rate must be in (0, 1], got {self.keep_rate}.")
        if not 1 <= self.blocks <= num_layers:
            raise OmnivoxError(f"extraction blocks must be between 1 and {num_layers} (the model's layers), "
                               f"got {self.blocks}; use 'off' to disable.")

    def scoring_layers(self, num_layers: int) -> list[int]:
        """Index of the last layer of every block except the final one."""
        gap = num_layers // self.blocks
        return [gap * (block + 1) - 1 for block in range(self.blocks - 1)]


@dataclass
class ExtractionStats:
    media_in: int = 0
    media_kept_per_block: list[int] = field(default_factory=list)  # media tokens each block sees
    kept_index: torch.Tensor | None = None  # prompt indices that reached the last layer


def kept_count(media: int, keep_rate: float) -> int:
    if media <= MIN_KEPT:
        return media
    return max(MIN_KEPT, math.ceil(media * keep_rate))


def media_attention_scores(
    attention: torch.nn.Module,
    layer_input: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    keys: torch.Tensor,
    query_index: torch.Tensor,
    key_offset: int,
) -> torch.Tensor:
    """Mean attention each key receives from the queries at `query_index` (indices into this prefill).

    layer_input: (1, T, H) input of the attention block (after its RMSNorm); keys: (1, kv_heads,
    past + T, head_dim) from the layer's cache, already rotated. Queries are processed in
    chunks so memory stays bounded however long the media is.
    """
    cos, sin = rotary
    queries = attention.q_proj(layer_input[:, query_index])
    heads, head_dim = attention.config.num_attention_heads, attention.head_dim
    queries = queries.view(1, -1, heads, head_dim).transpose(1, 2)
    queries, _ = apply_rotary_pos_emb(queries, queries, cos[:, query_index], sin[:, query_index])
    keys = keys.repeat_interleave(heads // keys.shape[1], dim=1).float()
    total = torch.zeros(keys.shape[2], dtype=torch.float32, device=keys.device)
    key_positions = torch.arange(keys.shape[2], device=keys.device)
    chunk = max(1, SCORE_CHUNK_ELEMENTS // (heads * keys.shape[2]))
    for start in range(0, query_index.numel(), chunk):
        q = queries[:, :, start:start + chunk].float()
        logits = torch.matmul(q, keys.transpose(-1, -2)) * attention.scaling
        visible = key_positions[None, :] <= (query_index[start:start + chunk, None] + key_offset)
        logits = logits.masked_fill(~visible, float("-inf"))
        total += logits.softmax(dim=-1).sum(dim=(0, 1, 2))
    return total / (heads * query_index.numel())


def select_tokens(scores: torch.Tensor, media_mask: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """Sorted indices to keep: every text token and the top-scoring share of the media."""
    media_index = media_mask.nonzero().squeeze(1)
    keep = kept_count(media_index.numel(), keep_rate)
    top_media = media_index[scores[media_index].topk(keep).indices]
    text_index = (~media_mask).nonzero().squeeze(1)
    return torch.cat([text_index, top_media]).sort().values


@dataclass
class PrefixState:
    """A prompt prefix already run through layers [0, stop) while the user was still talking.

    With extraction on, a prefix (system prompt and image) can only go up to the first scoring
    layer: which of its media tokens later layers see depends on the question, which comes after.
    Its output there (`hidden`) waits for the rest of the prompt; with extraction off it has been
    through every layer and only the cache is needed.
    """

    hidden: torch.Tensor  # (1, P, H) output of layer stop - 1
    positions: torch.Tensor  # (3, P)
    media_mask: torch.Tensor  # (P,)
    stop: int


def prefix_stop(settings: ExtractionSettings | None, num_layers: int) -> int:
    """How deep a prefix can be prefilled before the question is known."""
    scoring = settings.scoring_layers(num_layers) if settings else []
    return scoring[0] + 1 if scoring else num_layers


def prefill(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    media_mask: torch.Tensor,
    cache: Cache,
    settings: ExtractionSettings | None,
    prefix: PrefixState | None = None,
) -> tuple[torch.Tensor, ExtractionStats]:
    """Run a prompt (1, T, H) through every layer, extracting media at block boundaries.

    With `prefix`, the prompt continues one prefilled ahead: it joins the prefix's tokens at the
    prefix's stop layer. Returns the final position's hidden state (before the final norm) and
    what was kept.
    """
    layers = len(model.llm.layers)
    merge_at = prefix.stop - 1 if prefix is not None and prefix.stop < layers else None
    media_in = int(media_mask.sum()) + (int(prefix.media_mask.sum()) if prefix is not None else 0)
    stats = ExtractionStats(media_in=media_in, media_kept_per_block=[media_in])
    scoring = set(settings.scoring_layers(layers)) if settings and media_in else set()
    rotary = model.rotary(hidden, positions)
    stats.kept_index = torch.arange(hidden.shape[1])
    for index in range(layers):
        layer_input = hidden
        hidden = model.run_layer(index, hidden, rotary, cache)
        if index == merge_at:  # the prefix's tokens join here, ahead of this prompt's
            joined = prefix.hidden.shape[1]  # type: ignore[union-attr]
            layer_input = torch.cat([layer_input.new_zeros(1, joined, layer_input.shape[2]), layer_input], dim=1)
            hidden = torch.cat([prefix.hidden, hidden], dim=1)  # type: ignore[union-attr]
            positions = torch.cat([prefix.positions, positions], dim=1)  # type: ignore[union-attr]
            media_mask = torch.cat([prefix.media_mask, media_mask])  # type: ignore[union-attr]
            rotary = model.rotary(hidden, positions)
            stats.kept_index = torch.arange(hidden.shape[1])
        if index not in scoring:
            continue
        text_after_media = ~media_mask & (torch.arange(media_mask.numel()) >= media_mask.nonzero()[0, 0])
        query_index = text_after_media.nonzero().squeeze(1)
        attention = model.llm.layers[index].self_attn
        normed = model.llm.layers[index].input_layernorm(layer_input)
        keys = cache.layers[index].keys
        key_offset = keys.shape[2] - hidden.shape[1]  # earlier turns come first in the cache
        scores = media_attention_scores(attention, normed, rotary, keys, query_index.to(hidden.device), key_offset)
        keep = select_tokens(scores[key_offset:].cpu(), media_mask, settings.keep_rate)  # type: ignore[union-attr]
        keep_here = keep.to(hidden.device)
        hidden, media_mask = hidden[:, keep_here], media_mask[keep]
        rotary = (rotary[0][:, keep_here], rotary[1][:, keep_here])  # kept tokens keep their positions
        stats.kept_index = stats.kept_index[keep]
        stats.media_kept_per_block.append(int(media_mask.sum()))
    return hidden[:, -1:], stats


def prefill_prefix(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    media_mask: torch.Tensor,
    cache: Cache,
    settings: ExtractionSettings | None,
) -> PrefixState:
    """Run a prefix (1, P, H) as deep as it can go before the question is known."""
    stop = prefix_stop(settings, len(model.llm.layers))
    rotary = model.rotary(hidden, positions)
    for index in range(stop):
        hidden = model.run_layer(index, hidden, rotary, cache)
    return PrefixState(hidden, positions, media_mask, stop)


def kv_cache_tokens(cache: Cache) -> int:
    """Cached positions summed over layers (what KV memory is proportional to)."""
    return sum(layer.get_seq_length() for layer in cache.layers)
