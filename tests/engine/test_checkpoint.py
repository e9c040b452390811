"""A damaged model folder must end in one line naming what is wrong, never a traceback."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import OmnivoxError
from engine.loading import load_lyra
from engine.quantize import Precision

CPU = Precision.parse("fp32", "cpu")


def load_error(folder: Path) -> str:
    with pytest.raises(OmnivoxError) as info:
        load_lyra(folder, CPU)
    message = str(info.value)
    assert "\n" not in message
    return message


def shard_holding(folder: Path, key: str) -> Path:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder / index["weight_map"][key]


def rewrite_shard(path: Path, change) -> None:  # noqa: ANN001 - callable(dict) -> None
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_the_test_checkpoint_has_the_released_layout(test_model: Path) -> None:
    names = {p.relative_to(test_model).as_posix() for p in test_model.rglob("*") if p.is_file()}
    for required in ("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "vocab.json", "merges.txt", "added_tokens.json",
                     "tokenizer_config.json", "speech_lora/adapter_config.json",
                     "speech_lora/adapter_model.safetensors", "speech_lora/non_lora_trainables.bin",
                     "long_speech_lora/adapter_model.safetensors", "long_speech_lora/non_lora_trainables.bin",
                     "vocoder/g_00500000", "vocoder/config.json"):
        assert required in names
    assert sum((test_model / n).stat().st_size for n in names) < 30e6
    keys = json.loads((test_model / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.vision_tower.vision_tower.merger.mlp.2.weight" in keys
    assert "model.speech_tower.speech_tower.layers.0.self_attn.k_proj.weight" in keys
    assert "model.speech_tower.speech_tower.layers.0.self_attn.k_proj.bias" not in keys  # as in Whisper
    assert "speech_generator.output_proj.weight" in keys and "lm_head.weight" in keys
    config = json.loads((test_model / "config.json").read_text())
    assert config["model_type"] == "Lyra_Qwen2VL_SpeechGenerator"
    assert config["rope_scaling"]["type"] == "default"


def test_a_clean_load_reports_no_unexpected_keys(lyra_fp32) -> None:
    assert lyra_fp32.report.unexpected == []
    assert all(name.startswith("model.mm_speech_projector.") for name in lyra_fp32.report.ignored)


def test_missing_shard_is_named(model_copy: Path) -> None:
    os.remove(model_copy / "model-00002-of-00002.safetensors")
    assert "missing weight shard model-00002-of-00002.safetensors" in load_error(model_copy)


def test_missing_config_field_is_named(model_copy: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    del config["ctc_decoder_config"]
    (model_copy / "config.json").write_text(json.dumps(config))
    assert "ctc_decoder_config" in load_error(model_copy)


def test_missing_adapter_is_named(model_copy: Path) -> None:
    os.remove(model_copy / "long_speech_lora" / "adapter_model.safetensors")
    assert "long_speech_lora/adapter_model.safetensors" in load_error(model_copy)


def test_missing_vocoder_is_named(model_copy: Path) -> None:
    os.remove(model_copy / "vocoder" / "g_00500000")
    assert "vocoder file g_00500000" in load_error(model_copy)


def test_truncated_safetensors_is_reported(model_copy: Path) -> None:
    shard = model_copy / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert "corrupt or truncated" in load_error(model_copy)


def test_garbage_safetensors_is_reported(model_copy: Path) -> None:
    (model_copy / "model-00002-of-00002.safetensors").write_bytes(b"\xff" * 4096)
    assert "corrupt or truncated" in load_error(model_copy)


def test_wrong_shape_names_the_key_and_both_shapes(model_copy: Path) -> None:
    key = "model.layers.1.mlp.up_proj.weight"

    def widen(tensors: dict) -> None:
        tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1], dtype=torch.bfloat16)

    rewrite_shard(shard_holding(model_copy, key), widen)
    message = load_error(model_copy)
    assert key in message and "[129, 64]" in message and "[128, 64]" in message


def test_missing_tensor_is_named(model_copy: Path) -> None:
    key = "speech_generator.layers.1.mlp.down_proj.weight"
    rewrite_shard(shard_holding(model_copy, key), lambda tensors: tensors.pop(key))
    assert "speech_generator.layers.1.mlp.down_proj.weight" in load_error(model_copy)


def test_unexpected_tensor_is_reported_not_fatal(model_copy: Path) -> None:
    key = "model.layers.0.mlp.up_proj.weight"
    rewrite_shard(shard_holding(model_copy, key),
                  lambda tensors: tensors.__setitem__("model.extra_head.weight", torch.zeros(2, 2)))
    lyra = load_lyra(model_copy, CPU)
    assert lyra.report.unexpected == ["model.extra_head.weight"]


class NotATensor:
    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (print, ("this would run on load",))


def test_pickle_with_objects_other_than_tensors_is_refused(model_copy: Path) -> None:
    torch.save({"model.model.mm_speech_projector.linear1.weight": NotATensor()},
               model_copy / "speech_lora" / "non_lora_trainables.bin")
    assert "refused" in load_error(model_copy)


def test_missing_folder_and_config(tmp_path: Path) -> None:
    assert "no such model folder" in load_error(tmp_path / "nowhere")
    assert "missing config.json" in load_error(tmp_path)
