"""The real app, end to end: a spoken conversation in a real window with real audio devices.

Each test starts `python main.py --model <random-weight checkpoint> --data-dir <tmp>` and drives it
only from outside: espeak-ng questions played into the virtual microphone, the speaker recorded
from its monitor, screenshots read with OCR, xdotool clicks and keys, xclip for the clipboard, a
file dragged from another application's window, the engine killed by its pid, and `main.py
history --json` for what was kept. The test model speaks noise, so the checks are on structure,
durations and the audio itself, never on words.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.omnivox import (
    RATE,
    Omnivox,
    Speaker,
    read_wav,
    similarity,
    sound_segments,
    sounding_seconds,
    wait_until,
)

Launch = Callable[..., Omnivox]
PRE_ROLL_AND_TAIL_S = 0.7  # the endpointer keeps 0.5 s before the speech and 0.2 s after it
# Barge-in: the speech must sound like speech for ~0.3 s before it counts, then the speaker fades out within
# a block; on a busy machine the listener thread runs late by a few hundred ms more.
STOPPED_WITHIN_S = 1.5


@dataclass
class Exchange:
    """One spoken question and its reply, as stored and as heard."""

    user: dict  # the turns as `history --json` lists them
    reply: dict
    heard: np.ndarray  # the speaker from just before the question until the reply had played out


def ask(app: Omnivox, question: Path) -> Exchange:
    """Speak the question and wait until the reply has been stored and played out."""
    before = app.stored_turns()
    replies = sum(turn["role"] == "assistant" for turn in before)
    speaker = Speaker(app.env)
    try:
        app.say(question)
        app.wait_reply_played(replies + 1)
        speaker.record_on(speaker.seconds + 0.3)  # what was played last is through PulseAudio by then
    finally:
        heard = speaker.stop()
        np.save(app.data_dir.parent / f"speaker-{replies + 1}.npy", heard)  # for a failure's post-mortem
    turns = [turn for conversation in app.history()["conversations"] for turn in conversation["turns"]]
    turns.sort(key=lambda turn: turn["id"])
    # Exactly one user turn and its reply: nothing else was heard, nothing was cut in two.
    assert [turn["role"] for turn in turns[len(before):]] == ["user", "assistant"], turns
    return Exchange(turns[-2], turns[-1], heard)


def check_answered(exchange: Exchange, speech_seconds: float) -> None:
    """One user turn with the speech; a reply that was heard in full on the speaker, as stored."""
    user, reply = exchange.user, exchange.reply
    assert user["audio_seconds"] == pytest.approx(speech_seconds + PRE_ROLL_AND_TAIL_S, abs=0.35)
    assert Path(user["audio_file"]).is_file()
    assert not reply["interrupted"] and reply["text"]

    stored, rate = read_wav(reply["audio_file"])
    assert rate == RATE and len(stored) / rate == pytest.approx(reply["audio_seconds"], abs=0.01)
    assert reply["audio_seconds"] > 0.2
    # Everything stored was heard, once: the same amount of sound (a late engine makes the jitter buffer pause;
    # each pause may add a part-filled 10 ms block at either end) ...
    pauses = len(sound_segments(exchange.heard, gap=0.01)) - 1
    assert sounding_seconds(exchange.heard) == pytest.approx(sounding_seconds(stored), abs=0.1 + 0.02 * pauses)
    # ... and it is the stored reply itself, not noise of the right length.
    assert similarity(exchange.heard, stored) > 0.9

    voice = reply["timings"]["voice_ms"]
    assert 0 < voice["endpoint"] <= voice["request_sent"] <= voice["first_text"] <= voice["first_audio_played"]
    assert reply["timings"]["first_audio"] > 0  # the engine's own compute, kept beside the app's


def test_a_spoken_question_is_answered_aloud(launch: Launch, question: tuple[Path, float]) -> None:
    app = launch()
    wav, speech_seconds = question
    exchange = ask(app, wav)
    check_answered(exchange, speech_seconds)
    assert exchange.user["image_file"] is None  # the visual context is "none" by default
    (conversation,) = app.history()["conversations"]
    assert [turn["role"] for turn in conversation["turns"]] == ["user", "assistant"]


@pytest.mark.parametrize("how", ["dropped", "pasted"])
def test_an_image_goes_with_the_question(launch: Launch, question: tuple[Path, float], tmp_path: Path,
                                         how: str) -> None:
    app = launch()
    y, x = np.mgrid[0:200, 0:320]
    pixels = np.stack([x * 255 // 319, y * 255 // 199, (x // 40 + y // 40) % 2 * 255], axis=-1).astype(np.uint8)
    picture = tmp_path / "picture.png"
    Image.fromarray(pixels).save(picture)
    panel = app.geometry.region(-340, 0, 340, 340)

    def panel_shows(word: str) -> None:
        wait_until(lambda: word in app.screen.text(panel), 30, f"the panel to show the {how} image", poll=0.3)

    if how == "dropped":  # dragged from another application's window onto the panel
        source = (app.geometry.x + 20, app.geometry.y + 300)
        assert app.screen.drag_file(picture, source, (panel[0] + panel[2] // 2, panel[1] + panel[3] // 2))
        panel_shows("picture")
    else:
        with app.screen.clipboard_image(picture):
            app.key("ctrl+v")
            panel_shows("pasted")
    wav, speech_seconds = question
    exchange = ask(app, wav)
    check_answered(exchange, speech_seconds)
    sent = np.asarray(Image.open(exchange.user["image_file"]).convert("RGB"))
    assert np.array_equal(sent, pixels)


def test_the_screen_goes_with_the_question(launch: Launch, question: tuple[Path, float]) -> None:
    app = launch()
    panel = app.geometry.region(-340, 0, 340, 340)
    app.click_text("Screen", panel)
    wait_until(lambda: "Region" in app.screen.text(panel), 30, "the screen page of the panel", poll=0.3)
    before = app.screen.grab()
    wav, speech_seconds = question
    exchange = ask(app, wav)
    check_answered(exchange, speech_seconds)
    sent = np.asarray(Image.open(exchange.user["image_file"]).convert("RGB"))
    assert sent.shape == before.shape  # the whole screen, at its own resolution
    # The same screen; the state indicator and the level meter moved in between.
    same = (np.abs(sent.astype(np.int16) - before.astype(np.int16)).max(axis=-1) <= 16).mean()
    assert same > 0.9


def test_speaking_over_the_reply_stops_it_and_the_next_question_is_answered(
        launch: Launch, question: tuple[Path, float], follow_up: tuple[Path, float]) -> None:
    app = launch(max_new_tokens=64)  # ~8 s of reply
    speaker = Speaker(app.env)
    try:
        app.say(question[0])
        heard_from = speaker.wait_for_sound(0)
        barge_in = speaker.wait_for_sounding(heard_from, 0.3)
        app.say(follow_up[0])  # at once: the engine may still be writing the reply, or done with it
        said = speaker.seconds
        app.wait_turns(lambda t: len(t) == 4, "the follow-up's reply to be stored")
        reply_from = speaker.wait_for_sound(said)  # and heard
    finally:
        heard = speaker.stop()

    listing = app.history()
    (conversation,) = listing["conversations"]
    assert [turn["role"] for turn in conversation["turns"]] == ["user", "assistant", "user", "assistant"]
    interrupted, answer = conversation["turns"][1], conversation["turns"][3]
    assert interrupted["interrupted"] and not answer["interrupted"]
    assert conversation["turns"][2]["audio_seconds"] == pytest.approx(follow_up[1] + PRE_ROLL_AND_TAIL_S, abs=0.35)
    # The reply played until the user spoke, and stopped soon after: silence for the rest of their speech
    # (the reply had seconds more to say: 64 tokens are ~8 s of speech).
    timeline = (f"reply heard from {heard_from:.2f} s, user spoke {barge_in:.2f}-{said:.2f} s, answer heard from "
                f"{reply_from:.2f} s; sound: {[(round(a, 2), round(b, 2)) for a, b in sound_segments(heard)]}")
    played = heard[int(heard_from * RATE): int(said * RATE)]
    assert 0.3 <= sounding_seconds(played) < barge_in - heard_from + STOPPED_WITHIN_S, timeline
    assert sounding_seconds(heard[int((barge_in + STOPPED_WITHIN_S) * RATE): int(said * RATE)]) == 0, timeline


def test_killing_the_engine_mid_reply_is_reported_and_recovered(
        launch: Launch, question: tuple[Path, float], follow_up: tuple[Path, float]) -> None:
    app = launch(max_new_tokens=200)  # several seconds of generation: the kill lands mid-reply
    speaker = Speaker(app.env)
    try:
        for _ in range(3):  # the random model may end a reply after a few words: ask again then
            replies = sum(turn["role"] == "assistant" for turn in app.stored_turns())
            asked = speaker.seconds
            app.say(question[0])
            speaker.wait_for_sound(asked)
            engine = app.engine_pid()
            if sum(turn["role"] == "assistant" for turn in app.stored_turns()) == replies:
                os.kill(engine, signal.SIGKILL)  # still generating: its reply is not stored yet
                break
            app.wait_reply_played(replies + 1)
        else:
            pytest.fail("three replies in a row were finished before the speaker sounded")
        turns = app.wait_turns(lambda t, n=replies: sum(turn["role"] == "assistant" for turn in t) > n,
                               "the cut reply to be stored")
        assert turns[-1]["interrupted"]
        status = wait_until(lambda: re.search(r"engine stopped.*killed", app.status_text(), re.IGNORECASE), 15,
                            "the status bar to report the engine's end", poll=0.3)
        assert status
        app.wait_engine_loaded()  # restarted, with the model loaded again
        assert app.engine_pid() != engine
        said = speaker.seconds
        app.say(follow_up[0])
        app.wait_turns(lambda t: len(t) == len(turns) + 2, "the follow-up's reply to be stored")
        speaker.wait_for_sound(said)
    finally:
        speaker.stop()

    (conversation,) = app.history()["conversations"]
    roles = [turn["role"] for turn in conversation["turns"]]
    assert roles[-4:] == ["user", "assistant", "user", "assistant"]
    cut, answer = conversation["turns"][-3], conversation["turns"][-1]
    assert cut["interrupted"] and not answer["interrupted"]
    for turn in conversation["turns"]:
        assert turn["audio_file"] is None or Path(turn["audio_file"]).is_file()


def test_two_conversations_are_listed_with_all_their_turns_after_a_restart(
        launch: Launch, question: tuple[Path, float], follow_up: tuple[Path, float]) -> None:
    app = launch()
    check_answered(ask(app, question[0]), question[1])
    view = app.geometry.region(250, 40, app.geometry.width - 600, app.geometry.height - 120)
    app.key("ctrl+n")  # a new conversation
    wait_until(lambda: "Say something" in app.screen.text(view), 30, "an empty conversation", poll=0.3)
    check_answered(ask(app, follow_up[0]), follow_up[1])
    assert app.close() == 0

    again = launch(data_dir=app.data_dir)
    # The sidebar lists them under their titles (what the model heard, noise here), above its buttons.
    sidebar = again.geometry.region(0, 44, 245, again.geometry.height - 110)
    titles = wait_until(lambda: again.screen.lines(sidebar), 30, "the sidebar to list the conversations", poll=0.3)
    assert len(titles) == 2, titles
    listing = again.history()["conversations"]
    assert [[turn["role"] for turn in c["turns"]] for c in listing] == [["user", "assistant"]] * 2
    for conversation in listing:
        for turn in conversation["turns"]:
            assert Path(turn["audio_file"]).is_file()
