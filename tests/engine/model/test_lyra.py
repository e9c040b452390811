"""The LLM's attention kernel choice for grouped KV heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model import lyra
from engine.model.lyra import flash_takes_groups
from engine.session import Session, TurnRequest, collect

CUDA = torch.device("cuda")


@pytest.mark.parametrize(("capability", "dtype", "head_dim", "fused"), [
    ((8, 0), torch.bfloat16, 128, True),
    ((9, 0), torch.float16, 128, True),
    ((7, 5), torch.float16, 128, False),  # Turing: no flash kernel
    ((8, 6), torch.float32, 128, False),  # flash is half precision only
    ((8, 6), torch.float16, 288, False),
])
def test_grouped_heads_go_to_flash_only_where_it_runs(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                                                      dtype: torch.dtype, head_dim: int, fused: bool) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert flash_takes_groups(CUDA, dtype, head_dim) is fused
    assert flash_takes_groups(torch.device("cpu"), torch.float32, head_dim)  # the CPU's fused kernel takes groups


def test_a_maskless_prefill_without_flash_expands_the_kv_heads_and_answers_the_same(
        lyra_fp32, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a Turing GPU: the same reply, and SDPA never sees fewer key heads than query heads."""
    request = TurnRequest(text="Describe the image.", max_new_tokens=5, speak=False)
    grouped, _ = collect(Session(lyra_fp32, extraction=None).respond(request))

    calls = []
    original = F.scaled_dot_product_attention

    def spy(query: torch.Tensor, key: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append((query.shape[1], key.shape[1], query.shape[2], kwargs.get("enable_gqa", False)))
        return original(query, key, *args, **kwargs)

    monkeypatch.setattr(lyra, "flash_takes_groups", lambda device, dtype, head_dim: False)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    expanded, _ = collect(Session(lyra_fp32, extraction=None).respond(request))
    prefill = [call for call in calls if call[2] > 1]
    assert prefill and all(q_heads == k_heads and not gqa for q_heads, k_heads, _, gqa in prefill)
    assert expanded.text == grouped.text and expanded.tokens == grouped.tokens
