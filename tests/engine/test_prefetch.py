"""Prefetch: the image is encoded and the prompt prefilled up to it while the user talks.

A prefetch may change how soon an answer comes, never the answer.
"""

import pytest
from PIL import Image

from engine.extraction import ExtractionSettings
from engine.media import SAMPLE_RATE, speech_from_pcm
from engine.session import Session, TurnRequest, collect
from tests.signals import tone

PICTURE = Image.new("RGB", (160, 120), "teal")


def spoken_turn(image: Image.Image | None = PICTURE, text: str | None = None) -> TurnRequest:
    speech = speech_from_pcm(tone(1.5), SAMPLE_RATE)
    return TurnRequest(speech=speech, image=image, text=text, max_new_tokens=8)


@pytest.mark.parametrize("settings", [None, ExtractionSettings(4, 0.7), ExtractionSettings(2, 0.5)])
def test_a_prefetched_turn_answers_exactly_like_a_cold_one(lyra_fp32, settings) -> None:
    cold, cold_audio = collect(Session(lyra_fp32, extraction=settings).respond(spoken_turn()))
    session = Session(lyra_fp32, extraction=settings)
    session.prefetch(PICTURE.copy())  # the same pixels, another object: as the app sends it
    warm, warm_audio = collect(session.respond(spoken_turn()))
    assert warm.tokens["prefetched"] and not cold.tokens["prefetched"]
    assert warm.text == cold.text and warm.tokens["units"] == cold.tokens["units"]
    assert warm.tokens["media_kept_per_block"] == cold.tokens["media_kept_per_block"]
    assert warm.tokens["kv_cache_tokens"] == cold.tokens["kv_cache_tokens"]
    assert warm.tokens["prompt"] == cold.tokens["prompt"]
    assert abs(len(warm_audio) - len(cold_audio)) == 0


@pytest.mark.parametrize("second", [spoken_turn(Image.new("RGB", (160, 120), "orange")), spoken_turn(None),
                                    TurnRequest(text="Hello", max_new_tokens=8)])
def test_a_prefetch_the_turn_does_not_use_is_rolled_back(lyra_fp32, second: TurnRequest) -> None:
    settings = ExtractionSettings(4, 0.7)
    cold, _ = collect(Session(lyra_fp32, extraction=settings).respond(second))
    session = Session(lyra_fp32, extraction=settings)
    session.prefetch(PICTURE)
    warm, _ = collect(session.respond(second))
    assert not warm.tokens["prefetched"]
    assert warm.text == cold.text and warm.tokens["kv_cache_tokens"] == cold.tokens["kv_cache_tokens"]


def test_prefetch_on_a_later_turn_continues_the_conversation(lyra_fp32) -> None:
    cold_session, warm_session = Session(lyra_fp32), Session(lyra_fp32)
    for session in (cold_session, warm_session):
        collect(session.respond(TurnRequest(text="Look at this.", max_new_tokens=4, speak=False)))
    cold, _ = collect(cold_session.respond(spoken_turn()))
    warm_session.prefetch(PICTURE)
    warm_session.prefetch(PICTURE)  # a second prefetch replaces the first
    warm, _ = collect(warm_session.respond(spoken_turn()))
    assert warm.tokens["prefetched"] and warm.text == cold.text
    assert warm_session.cached_tokens == cold_session.cached_tokens
