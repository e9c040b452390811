"""One conversation between the user and the engine, kept in the history as it happens.

`ChatController` sits between the window, the engine client and the history store. A turn
(typed text and/or speech, plus the picture current when it started) is shown at once, its
picture is encoded on a worker, then it is stored and sent. The reply streams into the view;
its text and audio are stored when the engine reports it done, with the interrupted flag when
it was cancelled or the engine died. The engine runs one turn at a time, so a turn sent while
a reply runs cancels that reply and waits for it to end. Spoken turns get their transcript
afterwards, when the engine is otherwise idle (app/transcripts.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QImage

from app.history import Clip, Conversation, HistoryStore, Turn
from app.transcripts import Transcripts
from app.visual.context import Snapshot
from app.visual.frames import png_from_qimage
from app.workers import run_in_background
from engine.protocol import SAMPLE_RATE

DEFAULT_MAX_NEW_TOKENS = 512
T = TypeVar("T")


@dataclass
class TurnView:
    """What the conversation view shows of one turn; updated in place as the turn progresses."""

    key: int
    role: str
    text: str = ""
    image: QImage | None = None
    image_path: Path | None = None  # a reopened turn: the view loads its thumbnail from here
    image_label: str = ""
    audio_seconds: float | None = None
    transcript: str | None = None
    interrupted: bool = False
    done: bool = False
    timings: dict | None = None
    history_id: int | None = None


@dataclass
class Outgoing:
    """A user turn on its way to the engine, then the reply coming back."""

    conversation: int | None  # where both are stored (None: the history is unavailable)
    user: TurnView
    text: str | None
    speech: Clip | None
    image: QImage | None
    png: bytes | None = None
    ready: bool = True  # False while the picture is being encoded
    engine_id: str | None = None
    reply: TurnView | None = None
    chunks: list[bytes] = field(default_factory=list)
    rate: int = SAMPLE_RATE
    cancelled: bool = False
    spoken: bool = False  # sent by the voice controller, which plays the reply itself (and stops it on barge-in)


class ChatController(QObject):
    turnAdded = Signal(object)  # TurnView
    turnUpdated = Signal(object)  # TurnView: reply text grew, transcript arrived, turn finished
    conversationOpened = Signal(object, list)  # Conversation or None (a new one, not stored yet), [TurnView]
    conversationsChanged = Signal()  # the sidebar's list needs refreshing
    phaseChanged = Signal(str)  # idle / thinking / speaking: where the reply is
    replyAudio = Signal(bytes, int)  # float32 PCM, rate: for the voice controller's playback
    replyEnded = Signal(str, bool)  # a reply is over: its engine turn id ("" if never sent), cut short or lost
    notice = Signal(str)

    def __init__(self, engine: Any, store: HistoryStore, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine  # an EngineClient, or a stand-in with its signals and methods
        self.store = store
        self.max_new_tokens = max_new_tokens
        self.conversation: Conversation | None = None  # created with its first turn
        self.views: dict[int, TurnView] = {}
        self.stored_replies: dict[str, int] = {}  # engine turn id → history id of its stored reply
        self.early_voice: dict[str, tuple[dict, bool]] = {}  # the voice loop's word on a reply not stored yet
        self.outbox: list[Outgoing] = []
        self.running: Outgoing | None = None
        self.phase = "idle"
        self.keys = count(1)
        self.transcripts = Transcripts(engine, self.idle, self.set_transcript, max_new_tokens, self)
        engine.textDelta.connect(self.on_text)
        engine.audioChunk.connect(self.on_audio)
        engine.turnDone.connect(self.on_done)
        engine.error.connect(self.on_error)
        engine.engineDied.connect(self.on_engine_died)

    # ---- turns ---------------------------------------------------------------------------------

    def send(self, text: str | None = None, speech: Clip | None = None, snapshot: Snapshot | None = None) -> bool:
        """Show the turn now and send it as soon as the engine is free; False when there is nothing to send."""
        text = text.strip() if text else None
        if not text and speech is None:
            return False
        outgoing = self.show_turn(text, speech)
        if snapshot is not None:
            outgoing.user.image, outgoing.user.image_label = snapshot.image, snapshot.label
            outgoing.image, outgoing.png = snapshot.image, snapshot.png
        self.turnAdded.emit(outgoing.user)
        self.outbox.append(outgoing)
        if outgoing.image is not None and outgoing.png is None:
            outgoing.ready = False
            run_in_background(lambda: png_from_qimage(outgoing.image), lambda png: self.encoded(outgoing, png),
                              lambda message: self.encoded(outgoing, None, message))
        self.cancel_reply()  # a new turn supersedes the reply still running
        self.pump()
        return True

    def adopt(self, turn_id: str, speech: Clip | None, text: str | None, png: bytes | None) -> None:
        """A turn the voice controller sent to the engine itself: show it, store it and follow its reply."""
        if self.running is not None:  # the controller's newer turn wins, as a typed one would
            self.cancel_reply()
            self.finish(self.running, interrupted=True)
        outgoing = self.show_turn(text, speech)
        outgoing.png, outgoing.engine_id, outgoing.spoken = png, turn_id, True
        if png is not None:
            outgoing.user.image_label = "the picture you were looking at"
            run_in_background(lambda: QImage.fromData(png), lambda image: self.show_image(outgoing.user, image))
        self.turnAdded.emit(outgoing.user)
        self.store_user_turn(outgoing)
        self.running = outgoing
        self.set_phase("thinking")

    def show_turn(self, text: str | None, speech: Clip | None) -> Outgoing:
        if self.conversation is None:
            self.conversation = self.guard(self.store.new_conversation)
            self.conversationsChanged.emit()
        view = TurnView(next(self.keys), "user", text or "", audio_seconds=speech.seconds if speech else None)
        self.views[view.key] = view
        return Outgoing(self.conversation.id if self.conversation else None, view, text, speech, None)

    def show_image(self, view: TurnView, image: QImage) -> None:
        view.image = image
        self.turnUpdated.emit(view)

    def encoded(self, outgoing: Outgoing, png: bytes | None, failure: str = "") -> None:
        if failure:
            self.notice.emit(f"The picture could not be encoded ({failure}); the turn was sent without it.")
        outgoing.png, outgoing.ready = png, True
        self.pump()

    def stop(self) -> None:
        """The stop button: drop turns not yet sent and cancel the reply."""
        self.outbox.clear()
        self.cancel_reply()

    def cancel_reply(self) -> None:
        """The engine confirms with a cancelled turn_done; the reply is stored as interrupted then."""
        if self.running is not None and not self.running.cancelled:
            self.running.cancelled = True
            self.engine.cancel(self.running.engine_id)

    def idle(self) -> bool:
        """No reply runs and no turn waits: the engine may do background work."""
        return self.running is None and not self.outbox

    def pump(self) -> None:
        """Store and send the next turn when the engine is free and the turn's picture is ready;
        with no turn waiting, let a transcription go."""
        if self.idle():
            self.transcripts.pump()
        if self.running is not None or not self.outbox or not self.outbox[0].ready:
            return
        outgoing = self.outbox.pop(0)
        self.store_user_turn(outgoing)
        speech = outgoing.speech
        outgoing.engine_id = self.engine.respond(speech.float32_bytes() if speech else None,
                                                 speech.rate if speech else SAMPLE_RATE, outgoing.png, outgoing.text,
                                                 self.max_new_tokens)
        self.running = outgoing
        self.set_phase("thinking")

    def store_user_turn(self, outgoing: Outgoing) -> None:
        if outgoing.conversation is None:
            return
        stored = self.guard(lambda: self.store.add_turn(outgoing.conversation, "user", outgoing.text or "",
                                                        audio=outgoing.speech, image_png=outgoing.png))
        if stored is not None:
            outgoing.user.history_id = stored.id
            self.conversationsChanged.emit()  # the first typed words name the conversation

    def current(self, turn_id: str) -> Outgoing | None:
        running = self.running
        return running if running is not None and running.engine_id == turn_id else None

    def streaming(self, turn_id: str) -> Outgoing | None:
        """The running turn, when this text or audio is about it and is still to be shown: words the engine
        sends after a cancel it has not seen yet only count for a reply already on screen."""
        outgoing = self.current(turn_id)
        return outgoing if outgoing is not None and (outgoing.reply is not None or not outgoing.cancelled) else None

    def reply_view(self, outgoing: Outgoing) -> TurnView:
        if outgoing.reply is None:
            outgoing.reply = TurnView(next(self.keys), "assistant")
            if outgoing.user.key in self.views:  # its conversation is still the one on screen
                self.views[outgoing.reply.key] = outgoing.reply
                self.turnAdded.emit(outgoing.reply)
            self.set_phase("speaking")
        return outgoing.reply

    @Slot(str, str)
    def on_text(self, turn_id: str, text: str) -> None:
        outgoing = self.streaming(turn_id)
        if outgoing is not None:
            view = self.reply_view(outgoing)
            view.text += text
            self.turnUpdated.emit(view)

    @Slot(str, bytes, int)
    def on_audio(self, turn_id: str, pcm: bytes, rate: int) -> None:
        outgoing = self.streaming(turn_id)
        if outgoing is not None:
            self.reply_view(outgoing)
            outgoing.chunks.append(pcm)
            outgoing.rate = rate
            if not (outgoing.cancelled or outgoing.spoken):
                self.replyAudio.emit(pcm, rate)

    @Slot(str, dict)
    def on_done(self, turn_id: str, result: dict) -> None:
        outgoing = self.current(turn_id)
        if outgoing is None:
            return
        interrupted = bool(result.get("cancelled")) or outgoing.cancelled
        if outgoing.reply is not None or not interrupted:  # a reply cancelled before it showed stays unseen
            view = self.reply_view(outgoing)
            view.text = str(result.get("text", view.text))
            view.timings = result.get("timings_ms")
        self.finish(outgoing, interrupted)
        self.pump()

    @Slot(str, str)
    def on_error(self, request_id: str, message: str) -> None:
        outgoing = self.current(request_id)
        if outgoing is None:
            self.notice.emit(f"Engine: {message}")
            return
        self.notice.emit(f"The reply failed: {message}")
        self.finish(outgoing, interrupted=True)
        self.pump()

    @Slot(str)
    def on_engine_died(self, reason: str) -> None:
        if self.running is not None:
            self.finish(self.running, interrupted=True)
            self.pump()  # the restarted engine takes requests as soon as it is up

    def finish(self, outgoing: Outgoing, interrupted: bool) -> None:
        """The reply is over: store what it said (nothing is stored for a reply that never began)."""
        self.running = None
        reply = outgoing.reply
        # The voice loop may be done with this reply first: spoken over after the engine had finished it,
        # before its turn_done got here.
        voice = self.early_voice.pop(outgoing.engine_id, None) if outgoing.engine_id is not None else None
        if reply is not None:
            cut = interrupted or (voice is not None and voice[1])
            reply.interrupted, reply.done = cut, True
            if voice is not None:
                reply.timings = {**(reply.timings or {}), "voice_ms": voice[0]}
            audio = None
            if outgoing.chunks:
                audio = Clip(np.frombuffer(b"".join(outgoing.chunks), dtype="<f4"), outgoing.rate)
                reply.audio_seconds = audio.seconds
            if outgoing.conversation is not None:
                stored = self.guard(lambda: self.store.add_turn(outgoing.conversation, "assistant", reply.text,
                                                                audio=audio, timings=reply.timings,
                                                                interrupted=cut))
                reply.history_id = stored.id if stored is not None else None
                if stored is not None and outgoing.engine_id is not None and voice is None:
                    self.stored_replies[outgoing.engine_id] = stored.id
            self.turnUpdated.emit(reply)
        if outgoing.speech is not None:
            self.transcripts.add(outgoing.user, outgoing.speech)
        self.set_phase("idle")
        self.replyEnded.emit(outgoing.engine_id or "", interrupted)

    def add_voice_timings(self, turn_id: str, timings_ms: dict, interrupted: bool = False) -> None:
        """The voice loop's latency telemetry for a spoken turn (speech end → request → first text →
        first audio played, in ms from the end of speech), stored with the reply it led to.

        `interrupted`: its playback was cut (the user spoke over it, or the engine died) after the
        engine had finished the reply, so the reply was stored whole: it is marked cut short now.
        """
        history_id = self.stored_replies.pop(turn_id, None)
        if history_id is None:
            running = self.running
            if running is not None and running.engine_id == turn_id:  # stored by `finish` when the engine is done
                self.early_voice[turn_id] = (timings_ms, interrupted)
            return
        self.guard(lambda: self.store.add_timings(history_id, {"voice_ms": timings_ms}))
        if interrupted:
            self.guard(lambda: self.store.set_interrupted(history_id))
            view = next((view for view in self.views.values() if view.history_id == history_id), None)
            if view is not None and not view.interrupted:
                view.interrupted = True
                self.turnUpdated.emit(view)

    def set_transcript(self, view: TurnView, transcript: str) -> None:
        """Fill in what the user said in a spoken turn (stored even when its conversation is no longer shown)."""
        view.transcript = transcript
        if view.history_id is not None:
            self.guard(lambda: self.store.set_transcript(view.history_id, transcript))
            self.conversationsChanged.emit()  # an untitled conversation is named after it
        if self.views.get(view.key) is view:
            self.turnUpdated.emit(view)

    def set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.phaseChanged.emit(phase)

    # ---- conversations -------------------------------------------------------------------------

    def new_conversation(self) -> None:
        """Start afresh; the conversation is stored with its first turn, so empty ones never pile up."""
        self.abandon()
        self.conversation = None
        self.conversationOpened.emit(None, [])

    def open_conversation(self, conversation_id: int) -> None:
        """Show a stored conversation; new turns continue it (the model starts from a clean context)."""
        turns = self.guard(lambda: self.store.turns(conversation_id))
        conversation = self.guard(lambda: self.store.conversation(conversation_id))
        if turns is None or conversation is None:
            return
        self.abandon()
        self.conversation = conversation
        self.views = {}
        for turn in turns:
            view = self.view_of(turn)
            self.views[view.key] = view
        self.conversationOpened.emit(conversation, list(self.views.values()))

    def view_of(self, turn: Turn) -> TurnView:
        image = self.store.path(turn.image_file) if turn.image_file else None
        return TurnView(next(self.keys), turn.role, turn.text, image_path=image,
                        image_label=image.name if image else "", audio_seconds=turn.audio_seconds,
                        transcript=turn.transcript, interrupted=turn.interrupted, done=True, timings=turn.timings,
                        history_id=turn.id)

    def abandon(self) -> None:
        """Drop queued turns and cancel the reply (it is still stored, in its own conversation, when it
        ends); the engine forgets the conversation."""
        self.stop()
        self.views = {}
        self.engine.reset()

    def rename(self, conversation_id: int, title: str) -> None:
        self.guard(lambda: self.store.rename(conversation_id, title))
        if self.conversation is not None and self.conversation.id == conversation_id:
            self.conversation = self.guard(lambda: self.store.conversation(conversation_id)) or self.conversation
        self.conversationsChanged.emit()

    def delete(self, conversation_id: int) -> None:
        if self.conversation is not None and self.conversation.id == conversation_id:
            self.new_conversation()
        self.guard(lambda: self.store.delete(conversation_id))
        self.conversationsChanged.emit()

    def export(self, conversation_id: int, folder: Path) -> Path | None:
        path = self.guard(lambda: self.store.export_markdown(conversation_id, folder))
        if path is not None:
            self.notice.emit(f"Exported to {path}")
        return path

    def guard(self, action: Callable[[], T]) -> T | None:
        """Run a history operation; a failure (disk full, folder gone) is a notice, not a lost reply."""
        try:
            return action()
        except (sqlite3.Error, OSError, KeyError) as err:
            self.notice.emit(f"History: {err}")
            return None
