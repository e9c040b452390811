"""Typed view of a Lyra checkpoint's `config.json`.

Lyra writes the flat Qwen2-VL text config of transformers 4.45 plus its own fields. Newer
transformers nest and rename parts of it, so the engine parses the file itself and builds the
transformers configs it needs from these values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import OmnivoxError

REQUIRED_TEXT_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)
REQUIRED_LYRA_FIELDS = (
    "mm_speech_hidden_size",
    "speech_encoder_ds_rate",
    "speech_generator_type",
    "ctc_decoder_config",
    "ctc_upsample_factor",
    "vision_config",
)


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    mrope_section: tuple[int, int, int]
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"


@dataclass(frozen=True)
class ExtractionConfig:
    """Latent multi-modality extractor settings as shipped (keep_rate 1.0 means off)."""

    enabled: bool = False
    blocks_gap: int = 0
    keep_rate: float = 1.0


@dataclass(frozen=True)
class LyraConfig:
    text: TextConfig
    vision: dict[str, Any]
    speech_hidden_size: int
    speech_downsample: int
    speech_projector_type: str
    speech_generator_type: str
    ctc_decoder_config: str
    ctc_upsample_factor: int
    unit_vocab_size: int
    max_prompt_tokens: int
    extraction: ExtractionConfig
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> LyraConfig:
        if not path.is_file():
            raise OmnivoxError(f"{path.parent}: no config.json; is this a Lyra model folder?")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise OmnivoxError(f"{path}: not valid JSON ({err}); re-download the model.") from err
        if not isinstance(raw, dict):
            raise OmnivoxError(f"{path}: expected a JSON object; re-download the model.")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> LyraConfig:
        text_raw = raw.get("text_config", raw)  # transformers >= 4.52 nests it
        missing = [k for k in REQUIRED_TEXT_FIELDS if k not in text_raw and k not in raw]
        missing += [k for k in REQUIRED_LYRA_FIELDS if k not in raw]
        if missing:
            raise OmnivoxError(f"{source}: missing field(s) {', '.join(missing)}; re-download the model.")

        def text_field(name: str, default: Any = None) -> Any:
            return text_raw.get(name, raw.get(name, default))

        rope = text_field("rope_scaling") or text_field("rope_parameters")  # renamed in transformers >= 4.52
        if not rope:
            raise OmnivoxError(f"{source}: missing field rope_scaling; re-download the model.")
        rope_type = rope.get("type", rope.get("rope_type", "default"))
        if rope_type not in ("default", "mrope") or "mrope_section" not in rope:
            raise OmnivoxError(f"{source}: rope_scaling {rope} is not Qwen2-VL M-RoPE; unsupported model.")
        section = tuple(int(s) for s in rope["mrope_section"])
        head_dim = text_field("hidden_size") // text_field("num_attention_heads")
        if len(section) != 3 or 2 * sum(section) != head_dim:
            raise OmnivoxError(
                f"{source}: mrope_section {list(section)} does not cover head_dim {head_dim}; unsupported model."
            )
        text = TextConfig(
            hidden_size=int(text_field("hidden_size")),
            num_layers=int(text_field("num_hidden_layers")),
            num_heads=int(text_field("num_attention_heads")),
            num_kv_heads=int(text_field("num_key_value_heads")),
            intermediate_size=int(text_field("intermediate_size")),
            vocab_size=int(text_field("vocab_size")),
            mrope_section=section,  # type: ignore[arg-type]
            rope_theta=float(text_field("rope_theta", rope.get("rope_theta", 1e6))),
            rms_norm_eps=float(text_field("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(text_field("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            hidden_act=str(text_field("hidden_act", "silu")),
        )
        keep_rate = float(raw.get("keep_rate", 1.0))
        extraction = ExtractionConfig(
            enabled=bool(raw.get("compress", False)) and keep_rate < 1.0,
            blocks_gap=int(raw.get("compress_gap", 0) or 0),
            keep_rate=keep_rate,
        )
        if raw["speech_generator_type"] != "ctc":
            raise OmnivoxError(
                f"{source}: speech_generator_type {raw['speech_generator_type']!r} is not supported (only 'ctc')."
            )
        return cls(
            text=text,
            vision=dict(raw["vision_config"]),
            speech_hidden_size=int(raw["mm_speech_hidden_size"]),
            speech_downsample=int(raw["speech_encoder_ds_rate"]),
            speech_projector_type=str(raw.get("mm_speech_projector_type", "simple_mlp")),
            speech_generator_type=str(raw["speech_generator_type"]),
            ctc_decoder_config=str(raw["ctc_decoder_config"]),
            ctc_upsample_factor=int(raw["ctc_upsample_factor"]),
            unit_vocab_size=int(raw.get("unit_vocab_size", 1000)),
            max_prompt_tokens=int(raw.get("tokenizer_model_max_length", 16384)),
            extraction=extraction,
            raw=raw,
        )
