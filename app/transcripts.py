"""Transcripts of the user's spoken turns, asked of the model while it has nothing better to do.

A transcript is never on a reply's critical path: one is asked for only after the reply to its
turn is over, when no reply runs and no turn waits to be sent, and one at a time. A turn that
starts meanwhile preempts it in the engine (a respond or prefetch cancels every transcription
there), and it is asked again once that turn's reply is over. A transcription that fails, or
whose engine died, leaves its turn without a transcript; nothing the user waits on needs one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Slot

from app.history import Clip

if TYPE_CHECKING:
    from app.chat import TurnView


@dataclass(frozen=True)
class Pending:
    view: TurnView
    speech: Clip


class Transcripts(QObject):
    def __init__(self, engine: Any, idle: Callable[[], bool], deliver: Callable[[TurnView, str], None],
                 max_new_tokens: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine  # an EngineClient, or a stand-in with its `transcribe` and signals
        self.idle = idle  # True when no reply runs and no turn waits to be sent
        self.deliver = deliver
        self.max_new_tokens = max_new_tokens
        self.queue: deque[Pending] = deque()
        self.asking: tuple[str, Pending] | None = None
        engine.transcribed.connect(self.on_transcribed)
        engine.engineDied.connect(self.on_engine_died)

    def add(self, view: TurnView, speech: Clip) -> None:
        """Transcribe this turn when the engine is next free (the caller calls `pump`)."""
        self.queue.append(Pending(view, speech))

    def pump(self) -> None:
        if self.asking is not None or not self.queue or not self.idle():
            return
        pending = self.queue.popleft()
        request_id = self.engine.transcribe(pending.speech.float32_bytes(), pending.speech.rate, self.max_new_tokens)
        self.asking = (request_id, pending)

    @Slot(str, dict)
    def on_transcribed(self, request_id: str, result: dict) -> None:
        if self.asking is None or self.asking[0] != request_id:
            return
        pending, self.asking = self.asking[1], None
        if result.get("cancelled"):
            # A turn came first. Asking again now would only be preempted again: wait for its reply to end.
            self.queue.appendleft(pending)
            return
        text = str(result.get("text", "")).strip()
        if text:
            self.deliver(pending.view, text)
        self.pump()

    @Slot(str)
    def on_engine_died(self, reason: str) -> None:
        self.asking = None  # not asked again: it may be what brought the engine down
