"""The test checkpoints: the real sizes are the catalogue's architectures, written in shards tensor by tensor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.catalog import CATALOG
from engine.checkpoint import engine_name, write_safetensors
from engine.memory import build_on_meta
from engine.testing import REAL_SIZES, SHARD_BYTES, released_tensor_shapes, shard_layouts


@pytest.mark.parametrize("size", REAL_SIZES)
def test_the_real_sizes_are_the_catalogue_architectures_the_engine_builds(size: str) -> None:
    entry = CATALOG[REAL_SIZES[size]]
    shapes = released_tensor_shapes(entry.size, entry.vocab_size, entry.tie_word_embeddings)
    config = entry.config()
    config.check_weights(shapes, size)
    expected = {name: tuple(p.shape) for name, p in build_on_meta(config, entry.size).named_parameters()}
    mapped = {engine_name(name): shape for name, shape in shapes.items() if engine_name(name)}
    assert all(expected[name] == shape for name, shape in mapped.items())
    assert ("lm_head.weight" in mapped) == (not entry.tie_word_embeddings)  # Mini shares its embedding
    assert sum(math.prod(shape) * 2 for shape in shapes.values()) == pytest.approx(entry.download_bytes, rel=0.01)


def test_shards_keep_the_order_and_stay_near_the_shard_size() -> None:
    entry = CATALOG["Lyra-Base-9B"]
    shapes = released_tensor_shapes(entry.size, entry.vocab_size)
    layouts = shard_layouts(shapes)
    total = sum(math.prod(shape) * 2 for shape in shapes.values())
    assert len(layouts) == math.ceil(total / SHARD_BYTES) == 5
    assert [name for layout in layouts for name in layout] == list(shapes)
    largest = max(math.prod(shape) * 2 for shape in shapes.values())
    assert all(sum(math.prod(shape) * 2 for _, shape in layout.values()) <= SHARD_BYTES + largest
               for layout in layouts)


def test_the_streaming_writer_writes_what_safetensors_reads(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.uint8),
               "c": torch.tensor(2, dtype=torch.int8), "d": torch.randn(4, 1)}
    layout = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()}
    write_safetensors(tmp_path / "x.safetensors", layout, iter(tensors.items()), metadata={"format": "pt"})
    read = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(read[name], tensor) for name, tensor in tensors.items())
    with pytest.raises(ValueError, match="where the header has"):
        write_safetensors(tmp_path / "y.safetensors", layout, iter([("a", torch.zeros(3, 5))]))
