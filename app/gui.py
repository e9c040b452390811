"""`python main.py` with no sub-command: the desktop app.

Order matters for start-up time: the window is built and shown first; the engine process is
started from the event loop once the window is up, and loads its model in the background.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication

from app.audio.capture import Capture
from app.audio.playback import Playback
from app.chat import DEFAULT_MAX_NEW_TOKENS
from app.engine_client import EngineClient
from app.history import HistoryStore, default_data_dir
from app.settings import Preferences, load_preferences, open_settings
from app.voice_controller import VoiceController, VoiceSettings, WindowVoice
from app.window import MainWindow, ModelChoice
from app.window.theme import apply_theme, icon

SHOWN_MARKER = "OMNIVOX_WINDOW_SHOWN"
SIGNAL_POLL_MS = 200  # Python runs signal handlers only between bytecodes; the Qt loop gives it the chance


class FirstExpose(QObject):
    """Prints the marker line the GUI benchmark waits for, once the window is really on screen."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Expose and watched.isExposed():
            print(f"{SHOWN_MARKER} {time.perf_counter() - self.started:.3f}", flush=True)
            watched.removeEventFilter(self)
        return False


def voice_loop(engine: EngineClient, prefs: Preferences, max_new_tokens: int) -> WindowVoice:
    """Microphone → endpointer → engine, and the speaker, as chosen in Settings."""
    settings = VoiceSettings(mode="hands_free" if prefs.hands_free else "push_to_talk",
                             sensitivity=prefs.vad_sensitivity, barge_in=prefs.barge_in,
                             headphones=prefs.output == "headphones", max_new_tokens=max_new_tokens)
    playback = Playback(remembered=prefs.speaker or None)
    controller = VoiceController(engine, playback, lambda: Capture(remembered=prefs.microphone or None),
                                 settings=settings)
    return WindowVoice(controller)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Omnivox")
    app.setOrganizationName("Omnivox")
    app.setWindowIcon(icon("omnivox"))
    settings = open_settings(args.data_dir)
    prefs = load_preferences(settings)
    apply_theme(app, prefs.theme)

    store = HistoryStore.open(args.data_dir)
    model = None
    if args.model is not None:
        model = ModelChoice(str(args.model), args.precision or prefs.precision or None,
                            args.device or prefs.device or None)
    engine = EngineClient(data_dir=args.data_dir or default_data_dir())
    max_new_tokens = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    voice = None if args.no_voice else voice_loop(engine, prefs, max_new_tokens)
    window = MainWindow(engine, store, settings, model=model, voice=voice, max_new_tokens=max_new_tokens)
    if args.print_shown:
        window.winId()  # creates the native window, so its first expose can be watched
        marker = FirstExpose(started)
        window.windowHandle().installEventFilter(marker)
    window.show()

    for number in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C or a polite kill: close normally, stop the engine
        signal.signal(number, lambda *_: window.close())
    poll = QTimer()
    poll.start(SIGNAL_POLL_MS)
    poll.timeout.connect(lambda: None)
    try:
        return app.exec()
    finally:
        store.close()
