"""Run a function on Qt's thread pool and get its result back on the GUI thread.

For work that would stall the window (decoding a 200-megapixel image, encoding a PNG): the
function runs on a pool thread, and its result (or a one-line failure) is handed to a callback
on the GUI thread through one long-lived courier object. No QObject is made per task: a
short-lived one, kept alive by the closures around it, would be freed by Python's cycle
collector at some random moment on some random thread — which Qt does not survive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal, Slot

from engine.errors import OmnivoxError


def one_line(err: BaseException) -> str:
    if isinstance(err, OmnivoxError):
        return str(err)
    return " ".join(f"{type(err).__name__}: {err}".split())


class Courier(QObject):
    """Lives on the GUI thread; `deliver` emitted from a pool thread arrives there, queued."""

    deliver = Signal(object, object)  # callback, its argument

    def __init__(self) -> None:
        super().__init__()
        self.deliver.connect(self.call)

    @Slot(object, object)
    def call(self, callback: Callable[[Any], None], value: object) -> None:
        callback(value)


courier: Courier | None = None


def run_in_background(work: Callable[[], Any], on_done: Callable[[Any], None],
                      on_failed: Callable[[str], None] | None = None) -> None:
    """Call from the GUI thread; `on_done(result)` or `on_failed(message)` runs there later."""
    global courier
    if courier is None:
        courier = Courier()  # on the first caller's thread, the GUI thread

    def run() -> None:  # on a pool thread
        try:
            result = work()
        except Exception as err:  # reported to the GUI thread, which shows it as one line
            if on_failed is not None:
                courier.deliver.emit(on_failed, one_line(err))
        else:
            courier.deliver.emit(on_done, result)

    QThreadPool.globalInstance().start(run)
