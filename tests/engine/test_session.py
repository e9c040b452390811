import threading

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import OmnivoxError
from engine.events import AudioChunk, TextDelta, TurnDone
from engine.media import SAMPLE_RATE, speech_from_pcm
from engine.session import Session, TurnRequest, adapter_for, collect
from tests.signals import tone


def speech(seconds: float):
    return speech_from_pcm(tone(seconds), SAMPLE_RATE)


def test_adapter_follows_audio_length() -> None:
    assert adapter_for(None) is None
    assert adapter_for(speech(30.0)) == "speech"
    assert adapter_for(speech(30.01)) == "long_speech"


def test_spoken_turn_uses_speech_adapter_and_yields_text_then_done(lyra_fp32) -> None:
    events = list(Session(lyra_fp32).respond(TurnRequest(speech=speech(2.0), max_new_tokens=6)))
    assert isinstance(events[-1], TurnDone) and not any(isinstance(e, TurnDone) for e in events[:-1])
    done = events[-1]
    assert done.adapter == "speech"
    assert done.tokens["speech"] == 300 and done.tokens["generated"] == 6
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == done.text
    audio = [e for e in events if isinstance(e, AudioChunk)]
    assert done.audio_seconds == pytest.approx(sum(len(a.pcm) for a in audio) / SAMPLE_RATE)
    assert set(done.timings_ms) >= {"encode", "prefill", "first_text", "total"}


def test_long_speech_turn_uses_long_adapter_and_two_clips(lyra_fp32) -> None:
    done, _ = collect(Session(lyra_fp32).respond(TurnRequest(speech=speech(30.01), max_new_tokens=2)))
    assert done.adapter == "long_speech" and done.tokens["speech"] == 600


def test_each_adapter_has_its_own_projector_and_lora(lyra_fp32) -> None:
    from engine.loading import select_adapter
    from engine.media import speech_features

    model = lyra_fp32.model
    mel = speech_features(speech(1.0))
    short = model.encode_speech(mel, "speech")
    long = model.encode_speech(mel, "long_speech")
    assert short.shape == long.shape == (300, 64)
    assert not np.allclose(short.detach().numpy(), long.detach().numpy())
    select_adapter(model, "speech")
    active = {m.active_adapter[0] for m in model.llm.modules() if hasattr(m, "lora_A")}
    assert active == {"speech"}
    select_adapter(model, None)


def test_text_and_image_turn_has_no_adapter(lyra_fp32) -> None:
    image = Image.new("RGB", (100, 70), (20, 200, 90))
    done, _ = collect(Session(lyra_fp32).respond(
        TurnRequest(image=image, text="What colour is this?", max_new_tokens=3)))
    assert done.adapter is None and done.tokens["image"] > 0


def test_silent_and_clipped_speech_are_answered(lyra_fp32) -> None:
    for samples in (np.zeros(16000, dtype=np.float32), np.full(16000, 3.0, dtype=np.float32)):
        done, _ = collect(Session(lyra_fp32).respond(
            TurnRequest(speech=speech_from_pcm(samples, SAMPLE_RATE), max_new_tokens=2)))
        assert done.tokens["generated"] >= 0 and not done.cancelled


def first_reply_logits(lyra, session: Session, text: str) -> tuple[TurnDone, np.ndarray]:
    """Run a text turn and capture the logits that chose its first token."""
    captured = []
    hook = lyra.model.lm_head.register_forward_hook(lambda module, args, out: captured.append(out.clone()))
    try:
        done, _ = collect(session.respond(TurnRequest(text=text, max_new_tokens=4, speak=False)))
    finally:
        hook.remove()
    return done, captured[0].float().numpy()


def test_second_turn_sees_the_first(lyra_fp32) -> None:
    session = Session(lyra_fp32)
    first, _ = collect(session.respond(TurnRequest(text="My name is Ada.", max_new_tokens=4, speak=False)))
    after_first = session.cached_tokens
    assert after_first == first.tokens["prompt"] + first.tokens["generated"]
    second, second_logits = first_reply_logits(lyra_fp32, session, "What is my name?")
    assert session.cached_tokens == after_first + second.tokens["prompt"] + second.tokens["generated"]

    fresh, fresh_logits = first_reply_logits(lyra_fp32, Session(lyra_fp32), "What is my name?")
    assert second.tokens["prompt"] < fresh.tokens["prompt"]  # no second system prompt
    assert not np.allclose(second_logits, fresh_logits, atol=1e-3)  # the answer depends on the first turn

    session.reset()
    again, again_logits = first_reply_logits(lyra_fp32, session, "What is my name?")
    assert again.text == fresh.text and np.allclose(again_logits, fresh_logits, atol=1e-5)


def test_cancel_before_the_first_token_stops_at_once(lyra_fp32) -> None:
    cancel = threading.Event()
    cancel.set()
    done, audio = collect(Session(lyra_fp32).respond(TurnRequest(text="Hello", max_new_tokens=50), cancel))
    assert done.cancelled and done.tokens["generated"] <= 1 and audio.size == 0


def test_empty_requests_are_refused(lyra_fp32) -> None:
    session = Session(lyra_fp32)
    with pytest.raises(OmnivoxError, match="nothing to answer"):
        list(session.respond(TurnRequest(text="  ")))
    with pytest.raises(OmnivoxError, match="needs a question"):
        list(session.respond(TurnRequest(image=Image.new("RGB", (50, 50)))))


def test_a_conversation_longer_than_the_context_is_refused(lyra_fp32) -> None:
    session = Session(lyra_fp32)
    with pytest.raises(OmnivoxError, match="start a new conversation"):
        list(session.respond(TurnRequest(text="hi", max_new_tokens=20000)))


def conversation_state(session: Session) -> tuple:
    return session.cache.lengths(), session.next_position, session.turns


def test_a_transcription_is_asked_beside_the_conversation_and_leaves_it_as_it_was(lyra_fp32) -> None:
    from engine.session import active_adapter

    def second_reply(transcribe_between: bool) -> tuple[TurnDone, np.ndarray]:
        session = Session(lyra_fp32)
        collect(session.respond(TurnRequest(text="My name is Ada.", max_new_tokens=4, speak=False)))
        before, adapter = conversation_state(session), active_adapter(lyra_fp32.model)
        if transcribe_between:
            done = session.transcribe(speech(2.0), max_new_tokens=5)
            assert done.adapter == "speech" and done.tokens["speech"] == 300 and done.audio_seconds == 0
            assert done.tokens["prompt"] > 300 + 10  # system prompt, the speech and the instruction: a fresh context
            assert 1 <= done.tokens["generated"] <= 5 and not done.cancelled
            assert conversation_state(session) == before and active_adapter(lyra_fp32.model) == adapter is None
        return first_reply_logits(lyra_fp32, session, "What is my name?")

    (plain, plain_logits), (after, after_logits) = second_reply(False), second_reply(True)
    assert after.text == plain.text and np.allclose(after_logits, plain_logits, atol=1e-5)


def test_a_pending_prefetch_survives_a_transcription(lyra_fp32) -> None:
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    session = Session(lyra_fp32)
    session.prefetch(picture)
    session.transcribe(speech(1.0), max_new_tokens=2)
    done, _ = collect(session.respond(TurnRequest(image=picture, text="What is this?", max_new_tokens=2)))
    assert done.tokens["prefetched"]


def test_a_cancelled_transcription_stops_at_once(lyra_fp32) -> None:
    cancel = threading.Event()
    cancel.set()
    done = Session(lyra_fp32).transcribe(speech(1.0), max_new_tokens=50, cancel=cancel)
    assert done.cancelled and done.tokens["generated"] <= 1


def fail_at_call(monkeypatch: pytest.MonkeyPatch, module: torch.nn.Module, call: int, error: Exception,
                 prompt: bool) -> None:
    """Make `module` raise `error` at its `call`-th run over a prompt (prompt=True) or over one decode token."""
    original, seen = module.forward, []

    def forward(hidden: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if (hidden.shape[1] > 1) == prompt:
            seen.append(1)
            if len(seen) == call:
                raise error
        return original(hidden, *args, **kwargs)

    monkeypatch.setattr(module, "forward", forward)


def out_of_memory() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


QUESTION = TurnRequest(speech=speech(2.0), text="And now?", max_new_tokens=6)


@pytest.mark.parametrize("prompt", [True, False], ids=["in the prefill", "in the third decode step"])
def test_out_of_memory_in_a_middle_layer_rolls_the_turn_back(lyra_fp32, monkeypatch: pytest.MonkeyPatch,
                                                             prompt: bool) -> None:
    session = Session(lyra_fp32)
    collect(session.respond(TurnRequest(text="My name is Ada.", max_new_tokens=4, speak=False)))
    before = conversation_state(session)
    fail_at_call(monkeypatch, lyra_fp32.model.llm.layers[2], 1 if prompt else 3, out_of_memory(), prompt)
    with pytest.raises(OmnivoxError, match=r"^out of GPU memory at \d+ tokens in the conversation; send shorter "
                                           r"audio or a smaller image, start a new conversation, or choose a smaller"):
        collect(session.respond(QUESTION))
    monkeypatch.undo()
    assert conversation_state(session) == before
    retried, retried_audio = collect(session.respond(QUESTION))

    fresh = Session(lyra_fp32)
    collect(fresh.respond(TurnRequest(text="My name is Ada.", max_new_tokens=4, speak=False)))
    expected, expected_audio = collect(fresh.respond(QUESTION))
    assert retried.text == expected.text and retried.tokens == expected.tokens
    assert retried_audio.size == expected_audio.size and np.allclose(retried_audio, expected_audio, atol=1e-6)
    assert conversation_state(session) == conversation_state(fresh)


def test_a_failed_turn_that_took_a_prefetch_answers_next_as_a_fresh_session(lyra_fp32,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    picture = Image.new("RGB", (64, 64), (30, 30, 200))
    request = TurnRequest(image=picture, text="What is this?", max_new_tokens=4, speak=False)
    session = Session(lyra_fp32)
    session.prefetch(picture)
    fail_at_call(monkeypatch, lyra_fp32.model.llm.layers[3], 1, out_of_memory(), prompt=True)
    with pytest.raises(OmnivoxError, match="out of GPU memory"):
        collect(session.respond(request))
    monkeypatch.undo()
    lengths, position, turns = conversation_state(session)
    assert not any(lengths) and (position, turns) == (0, 0) and session.prefetched is None
    retried, _ = collect(session.respond(request))
    expected, _ = collect(Session(lyra_fp32).respond(request))
    assert retried.text == expected.text and retried.tokens == expected.tokens


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_stop_the_turn_with_a_clear_error(lyra_fp32, monkeypatch: pytest.MonkeyPatch,
                                                            bad: float) -> None:
    """What fp16 overflow looks like: without the check argmax picks token 0 until max_new_tokens."""
    session = Session(lyra_fp32)
    calls = []

    def poison(module: torch.nn.Module, args: object, logits: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.full_like(logits, bad) if len(calls) >= 3 else logits

    hook = lyra_fp32.model.lm_head.register_forward_hook(poison)
    try:
        with pytest.raises(OmnivoxError, match=r"^the model's numbers overflowed in float32 at reply token 3; choose"):
            collect(session.respond(TurnRequest(text="Hello", max_new_tokens=50)))
    finally:
        hook.remove()
    lengths, position, turns = conversation_state(session)
    assert not any(lengths) and (position, turns) == (0, 0)


def test_out_of_memory_in_a_prefetch_leaves_the_conversation_as_it_was(lyra_fp32,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    picture = Image.new("RGB", (64, 64), (30, 200, 30))
    request = TurnRequest(image=picture, text="And this one?", max_new_tokens=4, speak=False)
    session = Session(lyra_fp32, extraction=None)  # the prefix then goes through every layer
    collect(session.respond(TurnRequest(text="My name is Ada.", max_new_tokens=4, speak=False)))
    before = conversation_state(session)
    fail_at_call(monkeypatch, lyra_fp32.model.llm.layers[2], 1, out_of_memory(), prompt=True)
    with pytest.raises(OmnivoxError, match="out of GPU memory"):
        session.prefetch(picture)
    monkeypatch.undo()
    assert conversation_state(session) == before and session.prefetched is None
    retried, _ = collect(session.respond(request))
    fresh = Session(lyra_fp32, extraction=None)
    collect(fresh.respond(TurnRequest(text="My name is Ada.", max_new_tokens=4, speak=False)))
    expected, _ = collect(fresh.respond(request))
    assert retried.text == expected.text and retried.tokens == expected.tokens


def test_a_decode_step_reads_the_device_once_and_makes_no_tensor_from_host_data(
        lyra_fp32, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU each host read waits for the queued work and each tensor made from host data is a copy
    up: per token the session reads once (token, finiteness and speech frames together) and makes nothing."""
    import sys

    counts = {"read": 0, "made": 0}
    tolist, tensor = torch.Tensor.tolist, torch.tensor

    def from_session() -> bool:
        return sys._getframe(2).f_code.co_filename.endswith(("engine/session.py", "engine/speech_out.py"))

    def counted_tolist(self: torch.Tensor) -> list:
        counts["read"] += from_session()
        return tolist(self)

    def counted_tensor(*args: object, **kwargs: object) -> torch.Tensor:
        counts["made"] += from_session()
        return tensor(*args, **kwargs)

    def turn(tokens: int) -> dict[str, int]:
        session = Session(lyra_fp32)
        session.end_ids = set()
        counts.update(read=0, made=0)
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "tolist", counted_tolist)
            patch.setattr(torch, "tensor", counted_tensor)
            collect(session.respond(TurnRequest(speech=speech(1.0), max_new_tokens=tokens)))
        return dict(counts)

    short, long = turn(3), turn(11)
    assert long["read"] - short["read"] == 8  # one read per extra token, speech frames included
    assert long["made"] == short["made"]  # token ids and positions are made on the model's device
