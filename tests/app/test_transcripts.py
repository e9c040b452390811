"""Transcripts of spoken turns: asked after the reply, behind every real turn, shown and stored when they come."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.chat import ChatController
from app.history import Clip, HistoryStore
from app.window.conversation_view import ConversationView
from tests.app.fakes import FakeEngine
from tests.signals import tone

SPEECH = Clip((tone(1.0) * 32767).astype("<i2"), 16000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HistoryStore]:
    store = HistoryStore.open(tmp_path / "data")
    yield store
    store.close()


@pytest.fixture
def chat(qtbot, store: HistoryStore) -> ChatController:
    return ChatController(FakeEngine(), store, max_new_tokens=8)


@pytest.fixture
def view(qtbot, chat: ChatController) -> ConversationView:
    view = ConversationView()
    qtbot.addWidget(view)
    chat.turnAdded.connect(view.add_turn)
    chat.turnUpdated.connect(view.update_turn)
    chat.conversationOpened.connect(lambda conversation, views: view.show_conversation(views))
    return view


def test_a_spoken_turn_gets_its_transcript_in_the_view_and_the_history_after_its_reply(
        chat: ChatController, view: ConversationView, store: HistoryStore) -> None:
    engine = chat.engine
    chat.send(speech=SPEECH)
    engine.textDelta.emit(engine.requests[0].turn_id, "Hello ")
    assert engine.transcriptions == []  # nothing competes with the reply
    engine.reply("there.")
    [asked] = engine.transcriptions
    assert np.allclose(np.frombuffer(asked.pcm, "<f4"), SPEECH.samples / 32768.0)
    assert (asked.rate, asked.max_new_tokens) == (16000, 8)

    engine.transcribed.emit(asked.request_id, {"text": " What is on my screen? ", "cancelled": False})
    user = view.widgets[min(view.widgets)]
    assert not user.transcript.isHidden() and user.transcript.text() == "“What is on my screen?”"
    [conversation] = store.conversations()
    assert store.turns(conversation.id)[0].transcript == "What is on my screen?"
    assert conversation.title == "What is on my screen?"  # an untitled spoken conversation is named after it


def test_a_transcription_never_goes_ahead_of_a_queued_turn(chat: ChatController) -> None:
    engine = chat.engine
    chat.send(speech=SPEECH)
    first = engine.requests[0].turn_id
    chat.send(text="And another thing")  # queued; cancels the first reply
    engine.reply("Partly", cancelled=True, turn_id=first)
    second = engine.requests[1].turn_id
    assert engine.sent == [first, second]  # the queued turn went first
    engine.reply("Sure.")
    assert engine.sent == [first, second, engine.transcriptions[0].request_id]


def test_a_preempted_transcription_is_asked_again_after_the_next_reply(chat: ChatController,
                                                                       store: HistoryStore) -> None:
    engine = chat.engine
    chat.adopt("voice1", SPEECH, None, None)  # a turn the voice controller sent itself
    engine.reply("One.", turn_id="voice1")
    [asked] = engine.transcriptions
    chat.send(text="Two?")  # the engine cancels the transcription when this turn arrives
    engine.transcribed.emit(asked.request_id, {"text": "On", "cancelled": True})
    assert len(engine.transcriptions) == 1  # not asked again while that turn runs
    engine.reply("Two.")
    again = engine.transcriptions[1]
    assert again.pcm == asked.pcm and again.request_id != asked.request_id
    engine.transcribed.emit(again.request_id, {"text": "One?", "cancelled": False})
    assert store.turns(chat.conversation.id)[0].transcript == "One?"


def test_a_failed_transcription_leaves_its_turn_without_one_and_the_next_is_asked(chat: ChatController,
                                                                                  store: HistoryStore) -> None:
    engine, notices = chat.engine, []
    chat.notice.connect(notices.append)
    for _ in range(2):
        chat.send(speech=SPEECH)
        engine.reply("Yes.")
    first = engine.transcriptions[0]
    assert len(engine.transcriptions) == 1  # one at a time
    engine.transcribed.emit(first.request_id, {"error": "internal failure (RuntimeError: out of memory)"})
    second = engine.transcriptions[1]
    engine.engineDied.emit("the engine process was killed (SIGKILL, possibly out of memory)")
    engine.transcribed.emit(second.request_id, {"text": "late", "cancelled": False})  # from before the restart
    assert [turn.transcript for turn in store.turns(chat.conversation.id)] == [None] * 4
    assert notices == []  # background work failing is no news for the user


def test_a_transcript_for_a_conversation_no_longer_shown_is_still_stored(chat: ChatController,
                                                                        view: ConversationView,
                                                                        store: HistoryStore) -> None:
    engine = chat.engine
    chat.send(speech=SPEECH)
    engine.reply("Hi.")
    spoken_in = chat.conversation.id
    chat.new_conversation()
    engine.transcribed.emit(engine.transcriptions[0].request_id, {"text": "Hello?", "cancelled": False})
    assert store.turns(spoken_in)[0].transcript == "Hello?" and view.widgets == {}
