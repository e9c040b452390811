"""Streaming speech through a whole turn: units → chunked vocoder → AudioChunk events."""

import threading

import numpy as np
import torch

from engine.events import AudioChunk, TextDelta, TurnDone
from engine.session import Session, TurnRequest, collect
from engine.speech_out import SpeechOutput


def hidden_states(count: int, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def stream(lyra, states: torch.Tensor, **chunking) -> tuple[np.ndarray, list[int], int]:
    """Audio streamed for these hidden states, the units, and how many pushes returned audio."""
    out = SpeechOutput(lyra.model.speech_generator, lyra.vocoder, **chunking)
    pieces, audible_pushes = [], 0
    with torch.inference_mode():
        for state in states:
            audio = out.push(state)
            audible_pushes += audio.size > 0
            pieces.append(audio)
        pieces.append(out.flush())
    return np.concatenate(pieces), out.units.units, audible_pushes


def test_streamed_audio_equals_one_shot_synthesis_of_the_full_unit_sequence(lyra_fp32) -> None:
    states = hidden_states(40)
    audio, units, audible_pushes = stream(lyra_fp32, states, first_chunk=4, later_chunk=12)
    with torch.inference_mode():
        assert units == lyra_fp32.model.speech_generator.units_from_hidden(states)
        one_shot = lyra_fp32.vocoder(torch.tensor(units)).numpy()
    assert audio.shape == one_shot.shape
    assert np.abs(audio - one_shot).max() <= 1e-3
    assert audible_pushes >= 3  # it really streamed, in several chunks


def test_first_chunk_is_small_and_later_chunks_larger(lyra_fp32) -> None:
    out = SpeechOutput(lyra_fp32.model.speech_generator, lyra_fp32.vocoder, first_chunk=4, later_chunk=30)
    sizes = []
    with torch.inference_mode():
        for state in hidden_states(60, seed=3):
            before = out.unit_count - len(out.waiting)
            if out.push(state).size or out.unit_count - len(out.waiting) != before:
                sizes.append(out.unit_count - len(out.waiting) - before)
    assert sizes[0] < 30 and max(sizes[1:]) >= 30


def test_a_reply_shorter_than_the_first_chunk_is_flushed_not_lost(lyra_fp32) -> None:
    audio, units, audible_pushes = stream(lyra_fp32, hidden_states(3), first_chunk=1000)
    assert audible_pushes == 0 and len(units) > 0
    with torch.inference_mode():
        assert np.abs(audio - lyra_fp32.vocoder(torch.tensor(units)).numpy()).max() <= 1e-3


def test_a_reply_of_zero_units_gives_no_audio_and_no_error(lyra_fp32) -> None:
    generator = lyra_fp32.model.speech_generator
    bias = generator.output_proj.bias
    saved = bias.data.clone()
    bias.data[-1] = 1e4  # blank wins every frame
    try:
        audio, units, _ = stream(lyra_fp32, hidden_states(5))
    finally:
        bias.data.copy_(saved)
    assert units == [] and audio.size == 0


def test_events_interleave_text_and_audio_and_end_with_done(lyra_fp32) -> None:
    events = list(Session(lyra_fp32).respond(TurnRequest(text="Tell me a story.", max_new_tokens=40)))
    kinds = [type(e) for e in events]
    assert kinds[-1] is TurnDone and kinds.count(TurnDone) == 1
    first_audio = kinds.index(AudioChunk)
    assert TextDelta in kinds[first_audio + 1:-1]  # audio started while text was still coming
    done = events[-1]
    assert done.timings_ms["first_audio"] < done.timings_ms["total"]
    assert 0 < done.tokens["first_audio_step"] < done.tokens["generated"]  # decode steps before the first audio
    assert all(e.pcm.dtype == np.float32 and e.sample_rate == 16000 for e in events if isinstance(e, AudioChunk))


def test_cancel_during_speech_stops_audio_within_one_step(lyra_fp32) -> None:
    cancel = threading.Event()
    events, steps_after_cancel = [], 0
    for event in Session(lyra_fp32).respond(TurnRequest(text="Tell me a story.", max_new_tokens=60), cancel):
        events.append(event)
        if cancel.is_set() and isinstance(event, TextDelta):
            steps_after_cancel += 1
        if isinstance(event, AudioChunk):
            cancel.set()
    done = events[-1]
    assert done.cancelled and done.tokens["generated"] < 60
    assert steps_after_cancel == 0
    after_cancel = events[[type(e) for e in events].index(AudioChunk) + 1:-1]
    assert not any(isinstance(e, AudioChunk) for e in after_cancel)


def test_ask_audio_is_the_streamed_audio(lyra_fp32) -> None:
    done, audio = collect(Session(lyra_fp32).respond(TurnRequest(text="Hi", max_new_tokens=8)))
    assert done.audio_seconds == len(audio) / 16000 and done.tokens["units"] > 0
    silent, _ = collect(Session(lyra_fp32).respond(TurnRequest(text="Hi", max_new_tokens=8, speak=False)))
    assert silent.tokens["first_audio_step"] is None and silent.tokens["units"] == 0
