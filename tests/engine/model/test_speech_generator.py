import random

import pytest
import torch
from transformers.cache_utils import DynamicCache

from engine.model.speech_generator import CTCSpeechGenerator, ctc_collapse, parse_ctc_decoder_config

LLM_HIDDEN = 32
UNIT_VOCAB = 16  # a small vocabulary makes repeated units frequent, so the collapse is exercised


def small_generator(seed: int, attn_implementation: str = "sdpa") -> CTCSpeechGenerator:
    torch.manual_seed(seed)
    generator = CTCSpeechGenerator(
        LLM_HIDDEN,
        layers=2,
        width=64,
        heads=4,
        ffn=96,
        unit_vocab_size=UNIT_VOCAB,
        attn_implementation=attn_implementation,
    )
    with torch.no_grad():
        generator.output_proj.bias[generator.blank] += 0.5  # random weights rarely pick the blank otherwise
    return generator.eval()


def test_parse_ctc_decoder_config() -> None:
    assert parse_ctc_decoder_config("(2,4096,32,11008)") == (2, 4096, 32, 11008)
    assert parse_ctc_decoder_config(" ( 2, 4096 ,32,11008 ) ") == (2, 4096, 32, 11008)


MALFORMED = ["", "()", "(2,4096,32)", "2,4096,32,11008", "(2,4096,32,x)", "(0,4096,32,11008)", "(2,4,3,1,1)"]


@pytest.mark.parametrize("text", MALFORMED)
def test_parse_ctc_decoder_config_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="ctc_decoder_config") as error:
        parse_ctc_decoder_config(text)
    assert "\n" not in str(error.value)


def test_state_dict_keys_and_shapes_match_the_release() -> None:
    per_layer = [
        "self_attn.q_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.weight",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.weight",
        "self_attn.v_proj.bias",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
    ]
    released = {"input_proj.weight", "input_proj.bias", "output_proj.weight", "output_proj.bias"}
    released |= {f"layers.{index}.{name}" for index in range(2) for name in per_layer}

    layers, width, heads, ffn = parse_ctc_decoder_config("(2,4096,32,11008)")
    with torch.device("meta"):
        generator = CTCSpeechGenerator(3584, layers=layers, width=width, heads=heads, ffn=ffn)
    state = generator.state_dict()

    assert set(state) == released
    assert state["input_proj.weight"].shape == (4096, 3584)
    assert state["output_proj.weight"].shape == (1001, 4096)
    assert state["layers.1.self_attn.q_proj.weight"].shape == (4096, 4096)
    assert state["layers.1.mlp.down_proj.weight"].shape == (4096, 11008)
    assert generator.blank == 1000


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize(("seed", "tokens"), [(0, 40), (1, 33), (2, 17), (3, 2), (4, 1)])
def test_incremental_stream_equals_full_rerun(seed: int, tokens: int, attn_implementation: str) -> None:
    generator = small_generator(seed, attn_implementation)
    states = torch.randn(tokens, LLM_HIDDEN)

    with torch.inference_mode():
        full = generator(states)
        cache = DynamicCache(config=generator.config)
        incremental = torch.cat([generator(state[None], cache=cache) for state in states])
    assert full.shape == (25 * tokens, UNIT_VOCAB + 1)
    torch.testing.assert_close(incremental, full, atol=1e-4, rtol=0)

    stream = generator.new_stream()
    pushed = [unit for state in states for unit in stream.push(state)]
    reference = generator.units_from_hidden(states)
    assert pushed == stream.units == reference

    if tokens >= 30:  # the longer runs must exercise blanks and duplicates spanning a push boundary
        frames = full.argmax(-1).view(tokens, 25)
        assert (frames == generator.blank).any()
        assert (frames[:-1, -1] == frames[1:, 0]).any()


def test_push_accepts_a_vector_or_a_single_row() -> None:
    generator = small_generator(5)
    states = torch.randn(8, LLM_HIDDEN)
    as_vectors, as_rows = generator.new_stream(), generator.new_stream()
    for state in states:
        as_vectors.push(state)
        as_rows.push(state[None])
    assert as_vectors.units == as_rows.units == generator.units_from_hidden(states)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("changed", [0, 3, 9])
def test_frames_before_a_state_do_not_depend_on_it(changed: int, attn_implementation: str) -> None:
    generator = small_generator(6, attn_implementation)
    states = torch.randn(10, LLM_HIDDEN)
    perturbed = states.clone()
    perturbed[changed] += torch.randn(LLM_HIDDEN)

    with torch.inference_mode():
        before, after = generator(states), generator(perturbed)
    boundary = 25 * changed
    torch.testing.assert_close(after[:boundary], before[:boundary], atol=1e-6, rtol=0)
    assert (after[boundary:] - before[boundary:]).abs().amax(-1).min() > 1e-4


BLANK = 1000


@pytest.mark.parametrize(
    ("frames", "previous", "units", "last"),
    [
        ([5, 5, BLANK, 5], None, [5, 5], 5),
        ([3, 3, 4, 4, 3], None, [3, 4, 3], 3),
        ([BLANK, BLANK], None, [], BLANK),
        ([], None, [], None),
        ([], 7, [], 7),
        ([7, 7, 2], 7, [2], 2),  # the 7s continue the previous chunk's unit
        ([7], BLANK, [7], 7),  # a blank ending the previous chunk separates equal units
        (torch.tensor([9, 9, BLANK, 8]), None, [9, 8], 8),
    ],
)
def test_ctc_collapse(
    frames: list[int] | torch.Tensor, previous: int | None, units: list[int], last: int | None
) -> None:
    assert ctc_collapse(frames, previous, BLANK) == (units, last)


def test_ctc_collapse_across_boundaries_equals_one_pass() -> None:
    rng = random.Random(0)
    for _ in range(200):
        frames = [rng.choice([1, 2, BLANK]) for _ in range(rng.randrange(60))]
        cuts = sorted(rng.sample(range(len(frames) + 1), k=min(4, len(frames) + 1)))
        units, previous = [], None
        for start, end in zip([0, *cuts], [*cuts, len(frames)], strict=True):
            chunk_units, previous = ctc_collapse(frames[start:end], previous, BLANK)
            units += chunk_units
        assert units == ctc_collapse(frames, None, BLANK)[0]
