import pytest
import torch
from PIL import Image
from transformers.cache_utils import DynamicCache
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb, eager_attention_forward

from engine import extraction
from engine.errors import OmnivoxError
from engine.extraction import ExtractionSettings, kept_count, select_tokens
from engine.loading import load_lyra
from engine.media import SAMPLE_RATE, speech_from_pcm
from engine.model.lyra import causal_mask
from engine.prompt import Piece, mrope_positions
from engine.quantize import Precision
from engine.session import Session, TurnRequest, collect
from tests.signals import tone

CPU = Precision.parse("fp32", "cpu")


def spoken_image_turn(max_new_tokens: int = 6) -> TurnRequest:
    return TurnRequest(speech=speech_from_pcm(tone(2.0), SAMPLE_RATE), image=Image.new("RGB", (160, 120), "teal"),
                       max_new_tokens=max_new_tokens)


def test_keep_rate_one_is_token_for_token_identical_to_off(lyra_fp32) -> None:
    off, off_audio = collect(Session(lyra_fp32, extraction=None).respond(spoken_image_turn()))
    full, full_audio = collect(Session(lyra_fp32, extraction=ExtractionSettings(4, 1.0)).respond(spoken_image_turn()))
    assert full.text == off.text and full.tokens["units"] == off.tokens["units"]
    assert torch.equal(torch.from_numpy(full_audio), torch.from_numpy(off_audio))
    assert full.tokens["media_kept_per_block"] == [full.tokens["media_in"]] * 4


def test_kept_count_per_block_follows_the_keep_rate(lyra_fp32) -> None:
    done, _ = collect(Session(lyra_fp32, extraction=ExtractionSettings(4, 0.7)).respond(spoken_image_turn(2)))
    media = done.tokens["media_in"]
    assert media == 300 + done.tokens["image"]
    expected = [media]
    for _ in range(3):
        expected.append(kept_count(expected[-1], 0.7))
    assert done.tokens["media_kept_per_block"] == expected
    off, _ = collect(Session(lyra_fp32, extraction=None).respond(spoken_image_turn(2)))
    assert done.tokens["kv_cache_tokens"] < 0.75 * off.tokens["kv_cache_tokens"]


def test_at_least_32_media_tokens_stay_and_fewer_are_all_kept() -> None:
    assert kept_count(40, 0.5) == 32
    assert kept_count(20, 0.1) == 20
    assert kept_count(1000, 0.5) == 500


def test_text_and_the_last_position_are_never_dropped() -> None:
    media = torch.tensor([False] * 5 + [True] * 100 + [False] * 7)
    scores = torch.rand(112)
    scores[~media] = -1.0  # text scores lowest and must survive anyway
    keep = select_tokens(scores, media, keep_rate=0.5)
    assert set((~media).nonzero().squeeze(1).tolist()) <= set(keep.tolist())
    assert keep[-1] == 111 and torch.equal(keep, keep.sort().values)
    assert int(media[keep].sum()) == 50


def test_a_turn_without_media_is_untouched(lyra_fp32) -> None:
    on, _ = collect(Session(lyra_fp32).respond(TurnRequest(text="Hello there", max_new_tokens=4, speak=False)))
    off, _ = collect(Session(lyra_fp32, extraction=None).respond(
        TurnRequest(text="Hello there", max_new_tokens=4, speak=False)))
    assert on.text == off.text and on.tokens["media_kept_per_block"] == [0]


def test_bad_settings_name_the_valid_range(lyra_fp32) -> None:
    for settings, message in [(ExtractionSettings(4, 0.0), r"\(0, 1\]"), (ExtractionSettings(4, 1.5), r"\(0, 1\]"),
                              (ExtractionSettings(0, 0.5), "between 1 and 4"),
                              (ExtractionSettings(5, 0.5), "between 1 and 4")]:
        with pytest.raises(OmnivoxError, match=message):
            Session(lyra_fp32, extraction=settings)


@pytest.fixture
def needle_lyra(test_model):
    """A model whose every layer attends from anywhere to tokens carrying a large feature 0.

    Queries are a constant along the slowest rotary pair (which barely rotates), keys read
    feature 0 into that pair: q·k is large exactly for the needle tokens.
    """
    lyra = load_lyra(test_model, CPU)
    head_dim = 16
    for layer in lyra.model.llm.layers:
        q, k = layer.self_attn.q_proj.base_layer, layer.self_attn.k_proj.base_layer
        for tensor in (q.weight, q.bias, k.weight, k.bias):
            tensor.data.zero_()
        q.bias.data.view(-1, head_dim)[:, head_dim // 2 - 1] = 8.0
        k.weight.data.view(-1, head_dim, k.in_features)[:, head_dim // 2 - 1, 0] = 8.0
    return lyra


def test_a_strongly_attended_needle_survives_every_block(needle_lyra) -> None:
    model = needle_lyra.model
    generator = torch.Generator().manual_seed(0)
    text_before, text_after = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11])
    media = torch.randn(400, 64, generator=generator)
    needle = slice(190, 210)
    media[needle, 0] = 40.0
    embeds = torch.cat([model.embed_tokens(text_before), media, model.embed_tokens(text_after)])
    pieces = [Piece("text", 3, (5, 6, 7)), Piece("speech", 400), Piece("text", 4, (8, 9, 10, 11))]
    positions, _ = mrope_positions(pieces, 0)
    mask = torch.tensor([False] * 3 + [True] * 400 + [False] * 4)
    with torch.inference_mode():
        _, stats = extraction.prefill(model, embeds[None], positions, mask, DynamicCache(),
                                      ExtractionSettings(4, 0.3))
    kept = set(stats.kept_index.tolist())
    assert stats.media_kept_per_block == [400, 120, 36, 32]
    assert set(range(3 + needle.start, 3 + needle.stop)) <= kept
    assert {0, 1, 2, 403, 404, 405, 406} <= kept


def test_scores_equal_full_attention_and_do_not_depend_on_chunking(lyra_fp32, monkeypatch) -> None:
    model = lyra_fp32.model
    layer = model.llm.layers[1]
    hidden = torch.randn(1, 50, 64)
    positions = torch.arange(50).expand(3, -1)
    rotary = model.rotary(hidden, positions)
    cache = DynamicCache()
    with torch.inference_mode():
        model.run_layer(0, hidden, rotary, cache)
        model.run_layer(1, hidden, rotary, cache)
        normed = layer.input_layernorm(hidden)
        queries = torch.arange(40, 50)
        scores = extraction.media_attention_scores(layer.self_attn, normed, rotary, cache.layers[1].keys, queries, 0)
        monkeypatch.setattr(extraction, "SCORE_CHUNK_ELEMENTS", 4 * 50)  # one query per chunk
        chunked = extraction.media_attention_scores(layer.self_attn, normed, rotary, cache.layers[1].keys,
                                                    queries, 0)
        # reference: transformers' eager attention probabilities over the whole sequence
        attention = layer.self_attn
        q = attention.q_proj(normed).view(1, 50, 4, 16).transpose(1, 2)
        k = attention.k_proj(normed).view(1, 50, 2, 16).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rotary)
        _, weights = eager_attention_forward(attention, q, k, k, causal_mask(50, 0, torch.float32, "cpu"),
                                             scaling=attention.scaling)
    reference = weights[0, :, 40:].mean(dim=(0, 1))
    assert torch.allclose(scores, reference, atol=1e-6)
    assert torch.allclose(chunked, scores, atol=1e-6)


def test_decode_after_extraction_matches_between_sdpa_and_eager(test_model, lyra_fp32) -> None:
    eager = load_lyra(test_model, CPU, attn_implementation="eager")
    settings = ExtractionSettings(2, 0.5)
    a, _ = collect(Session(lyra_fp32, extraction=settings).respond(spoken_image_turn(10)))
    b, _ = collect(Session(eager, extraction=settings).respond(spoken_image_turn(10)))
    assert a.text == b.text and a.tokens["units"] == b.tokens["units"]
    assert a.tokens["media_kept_per_block"] == b.tokens["media_kept_per_block"]


def test_nf4_extraction_and_speech_output_in_one_turn(lyra_nf4) -> None:
    done, audio = collect(Session(lyra_nf4, extraction=ExtractionSettings(4, 0.5)).respond(spoken_image_turn(12)))
    assert done.tokens["media_kept_per_block"][-1] < done.tokens["media_in"]
    assert done.tokens["generated"] == 12 and audio.size > 0 and done.audio_seconds > 0
