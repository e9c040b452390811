"""The quantized-weight cache: a second start reads what the first quantized, and a damaged file is never used."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from engine import loading, weight_cache
from engine.loading import load_lyra
from engine.models import ModelStore
from engine.quantize import Precision
from engine.session import Session, TurnRequest, collect
from tests.engine.test_quantize import first_logits

QUESTION = "Describe the picture, please."


def answer(lyra) -> tuple[torch.Tensor, str]:  # noqa: ANN001 - a LoadedLyra
    """First-step logits and the greedy reply of a short typed turn."""
    done, _ = collect(Session(lyra).respond(TurnRequest(text=QUESTION, max_new_tokens=8, speak=False)))
    return first_logits(lyra, QUESTION), done.text


def cache_file(cache: Path) -> Path:
    (found,) = cache.rglob("*.safetensors")
    return found


@pytest.fixture(scope="module")
def fresh(test_model: Path) -> dict[str, tuple[torch.Tensor, str]]:
    """What a load without any cache answers, per quantized mode."""
    return {mode: answer(load_lyra(test_model, Precision.parse(mode, "cpu"))) for mode in ("nf4", "int8")}


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_the_second_start_reads_the_quantized_layers_and_answers_exactly_as_a_fresh_load(
        model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: dict, mode: str) -> None:
    cache = tmp_path / "cache"
    first = load_lyra(model_copy, Precision.parse(mode, "cpu"), cache_dir=cache)
    assert first.report.weight_cache == "written"
    assert cache_file(cache).name == f"{mode}-cpu.safetensors"
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]  # renamed into place

    def no_quantizing(*args: object) -> None:
        raise AssertionError("a cached load quantized a layer")

    monkeypatch.setattr(loading, "quantized_linear", no_quantizing)
    second = load_lyra(model_copy, Precision.parse(mode, "cpu"), cache_dir=cache)
    assert second.report.weight_cache == "loaded"
    logits, text = answer(second)
    assert torch.equal(logits, fresh[mode][0]) and text == fresh[mode][1]


def flip_data_byte(path: Path) -> None:
    """Change one byte in the middle of the tensor data (after the header)."""
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    middle = 8 + header + (len(data) - 8 - header) // 2
    data[middle] ^= 0x5A
    path.write_bytes(bytes(data))


def flip_header_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def touch_shard(folder: Path) -> None:
    shard = folder / "model-00001-of-00002.safetensors"
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def other_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {**weight_cache.library_versions(), "bitsandbytes": "0.0.1"}
    monkeypatch.setattr(weight_cache, "library_versions", lambda: versions)


DAMAGE = {
    "truncated": lambda model, cache, monkeypatch: truncate(cache_file(cache)),
    "altered tensor bytes": lambda model, cache, monkeypatch: flip_data_byte(cache_file(cache)),
    "altered header": lambda model, cache, monkeypatch: flip_header_byte(cache_file(cache)),
    "changed source file": lambda model, cache, monkeypatch: touch_shard(model),
    "other library version": lambda model, cache, monkeypatch: other_bitsandbytes(monkeypatch),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_cache_that_cannot_be_trusted_is_rebuilt(model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fresh: dict, damage: str) -> None:
    cache = tmp_path / "cache"
    load_lyra(model_copy, Precision.parse("nf4", "cpu"), cache_dir=cache)
    DAMAGE[damage](model_copy, cache, monkeypatch)
    rebuilt = load_lyra(model_copy, Precision.parse("nf4", "cpu"), cache_dir=cache)
    assert rebuilt.report.weight_cache == "rebuilt"
    logits, text = answer(rebuilt)
    assert torch.equal(logits, fresh["nf4"][0]) and text == fresh["nf4"][1]
    assert load_lyra(model_copy, Precision.parse("nf4", "cpu"), cache_dir=cache).report.weight_cache == "loaded"


def test_unquantized_modes_keep_no_cache(test_model: Path, tmp_path: Path) -> None:
    lyra = load_lyra(test_model, Precision.parse("fp32", "cpu"), cache_dir=tmp_path / "cache")
    assert lyra.report.weight_cache is None and not (tmp_path / "cache").exists()


def test_a_cache_folder_that_cannot_be_written_only_costs_the_next_start_time(test_model: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    lyra = load_lyra(test_model, Precision.parse("nf4", "cpu"), cache_dir=blocked)
    assert lyra.report.weight_cache == "written"  # attempted, logged, and the model is loaded all the same
    assert blocked.read_text().startswith("a file")


def test_removing_a_model_removes_its_cached_weights(model_copy: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = ModelStore(data)
    folder = Path(shutil.move(model_copy, store.model_folder("Lyra-Mini-3B")))
    store.save_registry({"Lyra-Mini-3B": {"repo": "zszhong/Lyra_Mini_3B", "folder": str(folder),
                                          "vocoder": str(folder / "vocoder"), "files": {}}})
    other = tmp_path / "other"  # another model's cache stays
    shutil.copytree(folder, other)
    for model in (folder, other):
        load_lyra(model, Precision.parse("nf4", "cpu"), cache_dir=weight_cache.cache_dir(data))
    assert len(list(weight_cache.cache_dir(data).iterdir())) == 2
    store.remove("Lyra-Mini-3B")
    assert [entry.name for entry in weight_cache.cache_dir(data).iterdir()] == [
        weight_cache.model_entry(weight_cache.cache_dir(data), other).name]
    assert json.loads(store.registry_path.read_text()) == {}
