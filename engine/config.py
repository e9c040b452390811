"""Typed view of a Lyra checkpoint's `config.json`.

Lyra writes the flat Qwen2-VL text config of transformers 4.45 plus its own fields. Newer
transformers nest and rename parts of it, so the engine parses the file itself and builds the
transformers configs it needs from these values. Every size is checked before anything is built
from it — a whole number, within a cap far above any released model, heads dividing widths — and,
once the weights' index is read, against the tensors' shapes: a damaged or hostile file ends in
one line instead of a division by zero or an attempt to allocate terabytes.
"""

from __future__ import annotations

import json
import math
import re
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
# Caps on every size: several times the released models' (Base: hidden 3584, 28 layers, 28 heads, FFN
# 18944, vocabulary 152064; ViT 1280 wide, 32 deep; generator 4096 wide) and far below what would
# exhaust memory only by being built.
TEXT_LIMITS = {
    "hidden_size": 32768, "num_hidden_layers": 512, "num_attention_heads": 512, "num_key_value_heads": 512,
    "intermediate_size": 262144, "vocab_size": 1 << 21, "max_position_embeddings": 1 << 22,
}
LYRA_LIMITS = {
    "mm_speech_hidden_size": 32768, "speech_encoder_ds_rate": 64, "ctc_upsample_factor": 256,
    "unit_vocab_size": 1 << 20, "tokenizer_model_max_length": 1 << 22,
}
VISION_LIMITS = {"depth": 512, "embed_dim": 32768, "num_heads": 512, "patch_size": 64, "spatial_merge_size": 8,
                 "temporal_patch_size": 8, "in_chans": 16, "in_channels": 16}
GENERATOR_LIMITS = (64, 32768, 512, 262144)  # layers, width, heads, FFN
CTC_CONFIG = re.compile(r"\(\s*(\d{1,9})\s*,\s*(\d{1,9})\s*,\s*(\d{1,9})\s*,\s*(\d{1,9})\s*\)")


def damaged(source: str, what: str) -> OmnivoxError:
    return OmnivoxError(f"{source}: {what}; the file is damaged or not a Lyra config — re-download the model.")


def whole_number(source: str, name: str, value: Any, cap: int, low: int = 1) -> int:
    """`value` as an int in low…cap; an OmnivoxError naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value != int(value):
        raise damaged(source, f"{name} must be a whole number, got {value!r}")
    if not low <= value <= cap:
        raise damaged(source, f"{name} = {value:g} is outside {low}…{cap}")
    return int(value)


def positive_real(source: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise damaged(source, f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_divides(source: str, part: tuple[str, int], whole: tuple[str, int]) -> None:
    if whole[1] % part[1]:
        raise damaged(source, f"{whole[0]} {whole[1]} is not a multiple of {part[0]} {part[1]}")


def checked_sizes(source: str, raw: dict[str, Any], limits: dict[str, int]) -> dict[str, int]:
    """The fields of `limits` that `raw` has, each checked."""
    return {name: whole_number(source, name, raw[name], cap) for name, cap in limits.items() if name in raw}


def check_vision(source: str, vision: Any) -> None:
    if not isinstance(vision, dict):
        raise damaged(source, "vision_config must be an object")
    sizes = checked_sizes(source, vision, VISION_LIMITS)
    if "embed_dim" in sizes and "num_heads" in sizes:
        check_divides(source, ("vision num_heads", sizes["num_heads"]), ("vision embed_dim", sizes["embed_dim"]))
    if "mlp_ratio" in vision and not positive_real(source, "vision mlp_ratio", vision["mlp_ratio"]) <= 16:
        raise damaged(source, f"vision mlp_ratio {vision['mlp_ratio']} is over 16")


def ctc_generator_sizes(source: str, text: Any) -> tuple[int, int, int, int]:
    """`ctc_decoder_config` "(layers,width,heads,ffn)", each checked."""
    match = CTC_CONFIG.fullmatch(str(text).strip())
    if match is None:
        raise damaged(source, f"ctc_decoder_config must read '(layers,width,heads,ffn)', got {text!r}")
    names = ("generator layers", "generator width", "generator heads", "generator FFN")
    layers, width, heads, ffn = (whole_number(source, name, int(value), cap)
                                 for name, value, cap in zip(names, match.groups(), GENERATOR_LIMITS, strict=True))
    check_divides(source, ("generator heads", heads), ("generator width", width))
    return layers, width, heads, ffn


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
        if not isinstance(text_raw, dict):
            raise damaged(source, "text_config must be an object")
        missing = [k for k in REQUIRED_TEXT_FIELDS if k not in text_raw and k not in raw]
        missing += [k for k in REQUIRED_LYRA_FIELDS if k not in raw]
        if missing:
            raise OmnivoxError(f"{source}: missing field(s) {', '.join(missing)}; re-download the model.")

        def text_field(name: str, default: Any = None) -> Any:
            return text_raw.get(name, raw.get(name, default))

        sizes = {name: whole_number(source, name, text_field(name), cap)
                 for name, cap in TEXT_LIMITS.items() if text_field(name) is not None}
        check_divides(source, ("num_attention_heads", sizes["num_attention_heads"]),
                      ("hidden_size", sizes["hidden_size"]))
        check_divides(source, ("num_key_value_heads", sizes["num_key_value_heads"]),
                      ("num_attention_heads", sizes["num_attention_heads"]))
        lyra_sizes = checked_sizes(source, raw, LYRA_LIMITS)
        check_vision(source, raw["vision_config"])
        ctc_generator_sizes(source, raw["ctc_decoder_config"])
        rope = text_field("rope_scaling") or text_field("rope_parameters")  # renamed in transformers >= 4.52
        if not isinstance(rope, dict):
            raise OmnivoxError(f"{source}: missing field rope_scaling; re-download the model.")
        rope_type = rope.get("type", rope.get("rope_type", "default"))
        if rope_type not in ("default", "mrope") or "mrope_section" not in rope:
            raise OmnivoxError(f"{source}: rope_scaling {rope} is not Qwen2-VL M-RoPE; unsupported model.")
        sections = rope["mrope_section"] if isinstance(rope["mrope_section"], list) else [None]
        section = tuple(whole_number(source, "mrope_section", s, 1 << 16) for s in sections)
        head_dim = sizes["hidden_size"] // sizes["num_attention_heads"]
        if len(section) != 3 or 2 * sum(section) != head_dim:
            raise OmnivoxError(
                f"{source}: mrope_section {list(section)} does not cover head_dim {head_dim}; unsupported model."
            )
        text = TextConfig(
            hidden_size=sizes["hidden_size"],
            num_layers=sizes["num_hidden_layers"],
            num_heads=sizes["num_attention_heads"],
            num_kv_heads=sizes["num_key_value_heads"],
            intermediate_size=sizes["intermediate_size"],
            vocab_size=sizes["vocab_size"],
            mrope_section=section,  # type: ignore[arg-type]
            rope_theta=positive_real(source, "rope_theta", text_field("rope_theta", rope.get("rope_theta", 1e6))),
            rms_norm_eps=positive_real(source, "rms_norm_eps", text_field("rms_norm_eps", 1e-6)),
            max_position_embeddings=sizes.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            hidden_act=str(text_field("hidden_act", "silu")),
        )
        keep_rate = raw.get("keep_rate", 1.0)
        if not 0 < positive_real(source, "keep_rate", keep_rate) <= 1:
            raise damaged(source, f"keep_rate must be in (0, 1], got {keep_rate!r}")
        extraction = ExtractionConfig(
            enabled=bool(raw.get("compress", False)) and keep_rate < 1.0,
            blocks_gap=whole_number(source, "compress_gap", raw.get("compress_gap") or 0, 512, low=0),
            keep_rate=float(keep_rate),
        )
        if raw["speech_generator_type"] != "ctc":
            raise OmnivoxError(
                f"{source}: speech_generator_type {raw['speech_generator_type']!r} is not supported (only 'ctc')."
            )
        return cls(
            text=text,
            vision=dict(raw["vision_config"]),
            speech_hidden_size=lyra_sizes["mm_speech_hidden_size"],
            speech_downsample=lyra_sizes["speech_encoder_ds_rate"],
            speech_projector_type=str(raw.get("mm_speech_projector_type", "simple_mlp")),
            speech_generator_type=str(raw["speech_generator_type"]),
            ctc_decoder_config=str(raw["ctc_decoder_config"]),
            ctc_upsample_factor=lyra_sizes["ctc_upsample_factor"],
            unit_vocab_size=lyra_sizes.get("unit_vocab_size", 1000),
            max_prompt_tokens=lyra_sizes.get("tokenizer_model_max_length", 16384),
            extraction=extraction,
            raw=raw,
        )

    def check_weights(self, shapes: dict[str, tuple[int, ...]], source: str = "config.json") -> None:
        """Layer counts and the key tensors' shapes in the weights' index must be what this config says;
        checked before the model is built, so a config that does not belong to its weights fails in one line."""
        text, vision = self.text, self.vision
        head_dim = text.hidden_size // text.num_heads
        generator_layers, generator_width, _, _ = ctc_generator_sizes(source, self.ctc_decoder_config)
        counts = {
            "model.layers.": text.num_layers,
            "model.vision_tower.vision_tower.blocks.": vision.get("depth"),
            "speech_generator.layers.": generator_layers,
        }
        for prefix, expected in counts.items():
            found = len({name[len(prefix):].split(".")[0] for name in shapes if name.startswith(prefix)})
            if expected is not None and found != expected:
                raise OmnivoxError(f"{source} says {expected} layers under {prefix.rstrip('.')} but the weights hold "
                                   f"{found}; the config and weights do not belong together.")
        wanted = {
            "model.embed_tokens.weight": (text.vocab_size, text.hidden_size),
            "lm_head.weight": (text.vocab_size, text.hidden_size),
            "model.layers.0.self_attn.q_proj.weight": (text.num_heads * head_dim, text.hidden_size),
            "model.layers.0.self_attn.k_proj.weight": (text.num_kv_heads * head_dim, text.hidden_size),
            "model.layers.0.mlp.gate_proj.weight": (text.intermediate_size, text.hidden_size),
            "speech_generator.input_proj.weight": (generator_width, text.hidden_size),
            "speech_generator.output_proj.weight": (self.unit_vocab_size + 1, generator_width),
        }
        for name, shape in wanted.items():
            if name in shapes and tuple(shapes[name]) != shape:
                raise OmnivoxError(f"weights: tensor {name} has shape {list(shapes[name])} but {source} needs "
                                   f"{list(shape)}; the config and weights do not belong together.")
