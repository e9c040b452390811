import json
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
