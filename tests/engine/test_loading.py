"""What load_lyra puts where: the vocoder's precision and the buffers' device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import loading
from engine.loading import load_lyra
from engine.model.vocoder import load_vocoder
from engine.quantize import PRECISIONS, Precision

UNITS = torch.randint(0, 1000, (200,), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("mode", PRECISIONS)
def test_the_vocoder_predicts_the_fp32_durations_in_every_precision_mode(test_model: Path, mode: str) -> None:
    reference = load_vocoder(test_model / "vocoder" / "g_00500000", test_model / "vocoder" / "config.json")
    vocoder = load_lyra(test_model, Precision.parse(mode, "cpu")).vocoder
    assert {p.dtype for p in vocoder.parameters()} == {torch.float32}
    assert torch.equal(vocoder.durations(UNITS), reference.durations(UNITS))


@pytest.mark.parametrize("mode", PRECISIONS)
def test_the_vocoder_is_loaded_in_fp32_on_the_gpu_too(test_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                      mode: str) -> None:
    """Where the LLM runs in half precision (no GPU here: the loader's request is what is checked)."""
    requested = []
    monkeypatch.setattr(loading, "load_vocoder", lambda path, config, device, dtype: requested.append((device, dtype)))
    files = loading.checkpoint.locate(test_model, None)
    loading.load_vocoder_checked(files, Precision(mode, torch.device("cuda")))
    assert requested == [(torch.device("cuda"), torch.float32)]


def test_rotary_tables_go_where_the_weights_go(test_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Left on the CPU, each rotary call on a GPU copies them over and waits for the copy."""
    calls = []
    monkeypatch.setattr(loading, "move_buffers", lambda model, device: calls.append(device))
    model = load_lyra(test_model, Precision.parse("fp32", "cpu")).model
    assert calls == [torch.device("cpu")]
    monkeypatch.undo()
    loading.move_buffers(model, torch.device("meta"))  # a device other than the CPU they were built on
    buffers = dict(model.named_buffers())
    assert {"llm.rotary_emb.inv_freq", "speech_generator.rotary_emb.inv_freq"} <= set(buffers)
    assert all(buffer.is_meta for buffer in buffers.values())
