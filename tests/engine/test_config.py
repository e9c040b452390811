import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import LyraConfig
from engine.errors import OmnivoxError
from engine.testing import SIZES, lyra_config


def test_released_flat_config_is_parsed() -> None:
    config = LyraConfig.from_dict(lyra_config(SIZES["tiny"], vocab_size=640))
    assert config.text.hidden_size == 64 and config.text.mrope_section == (2, 3, 3)
    assert config.ctc_upsample_factor == 25 and config.speech_downsample == 5
    assert not config.extraction.enabled  # the release ships keep_rate 1.0


def test_mrope_type_and_nested_text_config_are_accepted() -> None:
    raw = lyra_config(SIZES["tiny"], vocab_size=640)
    text = {k: raw.pop(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "num_key_value_heads", "intermediate_size", "vocab_size")}
    text["rope_parameters"] = {"rope_type": "mrope", "mrope_section": raw.pop("rope_scaling")["mrope_section"]}
    raw["text_config"] = text
    assert LyraConfig.from_dict(raw).text.num_layers == 4


def test_broken_config_files_get_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(OmnivoxError, match="not valid JSON"):
        LyraConfig.from_file(path)
    raw = lyra_config(SIZES["tiny"], vocab_size=640)
    raw["rope_scaling"]["mrope_section"] = [1, 1, 1]
    path.write_text(json.dumps(raw))
    with pytest.raises(OmnivoxError, match="does not cover head_dim"):
        LyraConfig.from_file(path)


ISSUE_PROBES = [  # field, value, what the one line says
    ("num_attention_heads", 0, "num_attention_heads = 0 is outside 1…512"),
    ("hidden_size", 1e9, "hidden_size = 1e\\+09 is outside"),
    ("num_hidden_layers", 1e6, "num_hidden_layers = 1e\\+06 is outside"),
]


@pytest.mark.parametrize(("field", "value", "message"), [
    *ISSUE_PROBES,
    ("num_attention_heads", 5, "hidden_size 64 is not a multiple of num_attention_heads 5"),
    ("num_key_value_heads", 3, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("vocab_size", "many", "vocab_size must be a whole number, got 'many'"),
    ("intermediate_size", 12.5, "intermediate_size must be a whole number"),
    ("ctc_decoder_config", "(2,64,0,128)", "generator heads = 0 is outside"),
    ("vision_config", {"depth": 1e6}, "depth = 1e\\+06 is outside"),
    ("rms_norm_eps", float("nan"), "rms_norm_eps must be a positive number"),
])
def test_bad_sizes_fail_in_one_line_before_anything_is_built(field: str, value, message: str) -> None:
    raw = lyra_config(SIZES["tiny"], vocab_size=640)
    raw[field] = value
    with pytest.raises(OmnivoxError, match=message) as err:
        LyraConfig.from_dict(raw)
    assert "\n" not in str(err.value) and "re-download" in str(err.value)


@pytest.mark.parametrize(("field", "value", "message"), [
    *ISSUE_PROBES,
    ("num_hidden_layers", 3, "says 3 layers under model.layers but the weights hold 4"),
    ("intermediate_size", 96, "model.layers.0.mlp.gate_proj.weight has shape \\[128, 64\\] but .* needs \\[96, 64\\]"),
])
def test_a_config_that_does_not_fit_its_weights_fails_the_load_in_one_line(model_copy: Path, field: str, value,
                                                                           message: str) -> None:
    from engine.loading import load_lyra
    from engine.quantize import Precision

    path = model_copy / "config.json"
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(OmnivoxError, match=message):
        load_lyra(model_copy, Precision.parse("fp32", "cpu"))


def test_the_model_is_built_on_meta_without_allocating_its_weights() -> None:
    """Sizes at the caps (a 2 M × 32 768 embedding: 275 GB in fp32) build on the meta device without
    memory moving: no weight is allocated, even for a moment (before, the allocation itself failed)."""
    script = (
        "import dataclasses, resource\n"
        "from engine.catalog import CATALOG\n"
        "from engine.config import LyraConfig\n"
        "from engine.memory import build_on_meta\n"
        "from engine.testing import lyra_config\n"
        "size = dataclasses.replace(CATALOG['Lyra-Base-9B'].size, hidden=32768, heads=256, layers=2)\n"
        "config = LyraConfig.from_dict(lyra_config(size, vocab_size=1 << 21))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "model = build_on_meta(config, size)\n"
        "assert all(p.is_meta for p in model.parameters())\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) < 300_000_000
