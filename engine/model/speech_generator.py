"""Lyra's CTC speech generator: LLM hidden states → discrete speech units (mHuBERT k-means-1000).

Each generation step contributes the LLM's final post-norm hidden state. A state is repeated
`upsample` (25) times, projected to the generator width, run through a few causal Qwen2 decoder
layers and projected onto `unit_vocab_size + 1` classes (the last one is the CTC blank). Greedy
CTC decoding (argmax, merge consecutive duplicates, drop blanks) turns the frames into unit ids.

The release re-runs the whole prefix every time a token arrives: O(N) frames per token, O(N²)
attention. `UnitStream` runs only the 25 new frames against a KV cache and yields exactly the same
units (see `UnitStream` for why); its projections and MLP cost the same at every token, only the
attention read over the cache grows with N.
"""

import re

import torch
from torch import nn
from transformers import Qwen2Config
from transformers.cache_utils import Cache
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

from engine.model.kv_cache import GrowingCache

_CONFIG_PATTERN = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")


def parse_ctc_decoder_config(text: str) -> tuple[int, int, int, int]:
    """Parse config.json's `ctc_decoder_config`, e.g. "(2,4096,32,11008)" → (layers, width, heads, ffn)."""
    match = _CONFIG_PATTERN.fullmatch(text.strip())
    if match is None or 0 in (values := tuple(int(group) for group in match.groups())):
        raise ValueError(f"ctc_decoder_config must be '(layers,width,heads,ffn)' > 0, got {text!r}")
    layers, width, heads, ffn = values
    return layers, width, heads, ffn


def ctc_collapse(
    frame_ids: list[int] | torch.Tensor, previous: int | None, blank: int
) -> tuple[list[int], int | None]:
    """Greedy CTC collapse of one chunk of frames: merge consecutive duplicates, then drop blanks.

    `previous` is the last frame id of the preceding chunk (None at the start), so a unit whose frames
    span a chunk boundary is emitted once. A blank between two equal frames keeps both: [5, 5, blank, 5]
    → [5, 5]. Returns the new units and the last frame id to pass with the next chunk.
    """
    if isinstance(frame_ids, torch.Tensor):
        frame_ids = frame_ids.tolist()
    units: list[int] = []
    for frame in frame_ids:
        if frame != previous and frame != blank:
            units.append(frame)
        previous = frame
    return units, previous


class CTCSpeechGenerator(nn.Module):
    """input_proj → causal Qwen2 decoder layers → output_proj, over `upsample` frames per LLM state.

    Parameter names match the released checkpoint under `speech_generator.` (`input_proj`, `layers.N.*`,
    `output_proj`); the rotary embedding holds only non-persistent buffers.
    """

    def __init__(
        self,
        llm_hidden: int,
        *,
        layers: int,
        width: int,
        heads: int,
        ffn: int,
        unit_vocab_size: int = 1000,
        upsample: int = 25,
        rope_theta: float = 1e6,
        rms_norm_eps: float = 1e-6,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"speech generator width {width} is not divisible by its {heads} heads")
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
        self.upsample = upsample
        self.blank = unit_vocab_size
        self.attn_implementation = attn_implementation
        self.config = Qwen2Config(
            hidden_size=width,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            rms_norm_eps=rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
            attn_implementation=attn_implementation,
        )
        self.input_proj = nn.Linear(llm_hidden, width)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(self.config, index) for index in range(layers))
        self.rotary_emb = Qwen2RotaryEmbedding(self.config)
        self.output_proj = nn.Linear(width, unit_vocab_size + 1)

    def forward(self, hidden_states: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """hidden_states: (N, llm_hidden) → frame logits (upsample · N, unit_vocab_size + 1).

        Without a cache this is the full-prefix run: frames at positions 0 … upsample·N − 1. With a
        cache the new frames continue at the cache's length and their keys/values are appended to it.
        """
        start = cache.get_seq_length() if cache is not None else 0
        # Projecting before repeating is the same as projecting each of the identical copies, 25× cheaper.
        projected = self.input_proj(hidden_states.to(self.input_proj.weight.dtype))
        x = projected.repeat_interleave(self.upsample, dim=0).unsqueeze(0)  # (1, T, width)
        length = x.shape[1]
        positions = torch.arange(start, start + length, device=x.device).unsqueeze(0)
        position_embeddings = self.rotary_emb(x, positions)
        mask = self._causal_mask(start, length, x)
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_embeddings=position_embeddings, cache=cache)
        return self.output_proj(x[0])

    def _causal_mask(self, start: int, length: int, x: torch.Tensor) -> torch.Tensor | None:
        """Additive mask letting the frame at position start + i see every key at position ≤ start + i.

        Explicit whenever keys come from a cache: with no mask, transformers' SDPA path uses is_causal,
        which aligns the triangle to the top left and even crops the keys to the first `length` cached
        ones, so appended frames would attend to the wrong keys. A full run under SDPA (no cache,
        queries == keys) passes None and gets the memory-light is_causal kernel; eager attention applies
        no causality of its own and always needs the mask.
        """
        if start == 0 and self.attn_implementation == "sdpa":
            return None
        query_positions = torch.arange(start, start + length, device=x.device)
        key_positions = torch.arange(start + length, device=x.device)
        visible = key_positions[None, :] <= query_positions[:, None]
        mask = torch.zeros(length, start + length, dtype=x.dtype, device=x.device)
        return mask.masked_fill(~visible, torch.finfo(x.dtype).min)[None, None]

    @torch.inference_mode()
    def units_from_hidden(self, hidden_states: torch.Tensor) -> list[int]:
        """Reference decoding, as the release does it: full re-run over all N states, argmax, collapse."""
        units, _ = ctc_collapse(self(hidden_states).argmax(-1), None, self.blank)
        return units

    def new_stream(self) -> "UnitStream":
        """An empty incremental decoder over this generator's weights."""
        return UnitStream(self)


class UnitStream:
    """Incremental decoding: each pushed state appends its 25 frames to a per-layer KV cache.

    Why this equals `units_from_hidden` on the concatenated states:
    - the layers are causal, so the frames of state i depend only on states 0 … i; frames computed
      earlier never change when later states arrive, and the full run recomputes them identically;
    - positions are absolute (frame j of state i sits at 25·i + j in both runs), so the rotary
      embeddings, and hence the cached keys, are the same as the full run's;
    - the new frames attend to the cached keys plus their own causal prefix, exactly the keys they
      see in the full run;
    - the CTC collapse carries the last frame id across pushes, so duplicates spanning a push
      boundary merge just as they do within one sequence.
    Only floating-point rounding differs (different matmul shapes), far below argmax margins.
    """

    def __init__(self, generator: CTCSpeechGenerator) -> None:
        self.generator = generator
        self.cache = GrowingCache()
        self.previous_frame: int | None = None
        self._units: list[int] = []

    @torch.inference_mode()
    def push(self, hidden_state: torch.Tensor) -> list[int]:
        """Append one LLM state, (llm_hidden,) or (1, llm_hidden); return the units it adds."""
        return self.collapse(self.frames(hidden_state).tolist())

    @torch.inference_mode()
    def frames(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """Run one LLM state's frames through the generator; their ids stay on its device.

        Split from `collapse` so a caller can bring them to the host together with other values in
        one copy instead of waiting for the GPU once more per token.
        """
        return self.generator(torch.atleast_2d(hidden_state), cache=self.cache).argmax(-1)

    def collapse(self, frame_ids: list[int]) -> list[int]:
        """The units `frames` ids add, in order; call once per `frames` call."""
        units, self.previous_frame = ctc_collapse(frame_ids, self.previous_frame, self.generator.blank)
        self._units.extend(units)
        return units

    @property
    def units(self) -> list[int]:
        """All units emitted so far."""
        return list(self._units)
