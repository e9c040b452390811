import torch
from transformers.cache_utils import DynamicCache

from engine.model.kv_cache import MIN_CAPACITY, GrowingCache


def test_growing_cache_holds_what_dynamic_cache_holds_per_layer() -> None:
    growing, dynamic = GrowingCache(), DynamicCache()
    generator = torch.Generator().manual_seed(0)
    for step, length in enumerate([7, 1, 300, 1, 1, 25, 600]):
        for layer in range(2):
            new = length if layer == 0 else max(1, length // 2)  # layers may grow differently
            keys, values = (torch.randn(1, 2, new, 8, generator=generator) for _ in range(2))
            got = growing.update(keys, values, layer)
            want = dynamic.update(keys, values, layer)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), step
    assert growing.get_seq_length(0) == dynamic.get_seq_length(0) == 935
    assert growing.get_seq_length(1) == dynamic.get_seq_length(1) != growing.get_seq_length(0)


def test_appending_reuses_capacity_instead_of_copying() -> None:
    cache = GrowingCache()
    cache.update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), 0)
    layer = cache.layers[0]
    buffer = layer.key_buffer
    assert buffer.shape[2] == MIN_CAPACITY
    for _ in range(MIN_CAPACITY - 1):
        cache.update(torch.ones(1, 1, 1, 4), torch.ones(1, 1, 1, 4), 0)
    assert layer.key_buffer is buffer  # no reallocation while capacity lasts
    cache.update(torch.ones(1, 1, 1, 4), torch.ones(1, 1, 1, 4), 0)
    assert layer.key_buffer.shape[2] == 2 * MIN_CAPACITY and layer.get_seq_length() == MIN_CAPACITY + 1
