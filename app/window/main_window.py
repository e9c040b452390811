"""The main window: history on the left, the conversation in the middle, what the assistant sees on the right.

It wires the parts and renders their state; decisions live in the chat controller (turns and
history), the visual context (what a turn carries) and the voice controller (when the user is
talking), all injected so tests can replace the engine, devices and dialogs. The engine starts
after the window is on screen and is never waited for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QEvent, QObject, QRect, QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QButtonGroup,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.chat import DEFAULT_MAX_NEW_TOKENS, ChatController, TurnView
from app.devices import DeviceProviders
from app.history import Clip, Conversation, HistoryStore
from app.model_manager import ModelManager
from app.settings import Preferences, load_preferences, save_preferences
from app.visual import screen as screens
from app.visual.camera import Camera
from app.visual.context import Picture, VisualContext
from app.visual.image_input import ImageInput
from app.voice import STATES, VoiceController, combined_state
from app.window.controls import LevelMeter, MessageBox, StateIndicator
from app.window.conversation_view import ConversationView
from app.window.model_dialog import ModelDialog
from app.window.region_picker import RegionPicker
from app.window.settings_dialog import SettingsDialog
from app.window.sidebar import HistorySidebar
from app.window.theme import apply_theme, icon
from app.window.visual_panel import VisualPanel

NOTICE_MS = 12_000
RESTING = ("idle", "listening")  # voice states in which the engine may do background work
LOADING_IMAGE = "Loading the image…"
NO_MODEL = ("<b>No model yet.</b> Download one in <b>Models</b> (it shows what fits your GPU) and use it, or "
            "start Omnivox with <code>--model FOLDER</code>, or choose the folder in Settings. To try the window "
            "without a download, <code>python main.py make-test-model FOLDER</code> writes a tiny random-weight "
            "model (its replies are noise).")


@dataclass(frozen=True)
class ModelChoice:
    folder: str
    precision: str | None
    device: str | None


class MainWindow(QMainWindow):
    def __init__(self, engine: Any, store: HistoryStore, settings: QSettings, *,
                 providers: DeviceProviders | None = None, camera: Camera | None = None,
                 voice: VoiceController | None = None, model: ModelChoice | None = None,
                 models: ModelManager | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        super().__init__()
        self.setWindowTitle("Omnivox")
        self.setWindowIcon(icon("omnivox"))
        self.setAcceptDrops(True)
        self.engine = engine
        self.store = store
        self.settings = settings
        self.prefs = load_preferences(settings)
        self.providers = providers or DeviceProviders()
        self.voice = voice
        self.voice_state = "idle"
        self.model = model or self.model_from(self.prefs)
        self.engine_started = False
        self.picker: RegionPicker | None = None
        self.models = models or ModelManager(store.folder, parent=self)  # models live beside the history
        self.model_dialog: ModelDialog | None = None

        self.chat = ChatController(engine, store, max_new_tokens, self)
        # Transcriptions also wait while the user talks and while a reply is still being played: on a
        # CPU they would take the cores from the playback, and a new turn would cancel them anyway.
        self.chat.transcripts.idle = lambda: self.chat.idle() and self.voice_state in RESTING
        self.images = ImageInput(self)
        self.context = VisualContext(camera or Camera(parent=self), self.images, self)
        self.context.camera_source = self.prefs.camera
        self.build()
        self.connect_parts()
        self.refresh_sidebar()
        if store.notice:
            self.show_notice(store.notice)
        if voice is not None:
            QApplication.instance().installEventFilter(self)  # Space for push-to-talk, whichever child has focus
            voice.attach(self)
            voice.apply_preferences(self.prefs)
            voice.set_hands_free(self.prefs.hands_free)
        self.update_voice_controls()

    # ---- layout --------------------------------------------------------------------------------

    def build(self) -> None:
        self.sidebar = HistorySidebar(self)
        self.view = ConversationView(self)
        self.panel = VisualPanel(self.context, self.providers.cameras, self)

        self.banner = QLabel(NO_MODEL, self, objectName="banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.setAccessibleName("No model notice")
        self.banner.setVisible(self.model is None)

        self.indicator = StateIndicator(self)
        self.meter = LevelMeter(self)
        self.listen_modes = QButtonGroup(self)
        self.hands_free = QPushButton("Hands-free", self, objectName="segment")
        self.push_to_talk = QPushButton("Push to talk", self, objectName="segment")
        for button, name, tip in ((self.hands_free, "Hands-free listening", "Listen all the time; a pause ends "
                                   "your turn"), (self.push_to_talk, "Push-to-talk listening",
                                                  "Hold Space while you talk")):
            button.setCheckable(True)
            button.setAccessibleName(name)
            button.setToolTip(tip)
            self.listen_modes.addButton(button)
        (self.hands_free if self.prefs.hands_free else self.push_to_talk).setChecked(True)
        self.stop_button = QPushButton(icon("stop"), "Stop", self, objectName="stopButton")
        self.stop_button.setAccessibleName("Stop")
        self.stop_button.setToolTip("Stop the reply (Esc)")
        self.models_button = QPushButton("Models", self, objectName="modelsButton")
        self.models_button.setAccessibleName("Model manager")
        self.models_button.setToolTip("Download a model and choose the one to use")
        self.settings_button = QPushButton(icon("settings"), "", self, objectName="settingsButton")
        self.settings_button.setAccessibleName("Settings")
        self.settings_button.setToolTip("Settings")

        bar = QHBoxLayout()
        bar.addWidget(self.indicator)
        bar.addWidget(self.meter)
        bar.addStretch(1)
        bar.addWidget(self.hands_free)
        bar.addWidget(self.push_to_talk)
        bar.addSpacing(8)
        bar.addWidget(self.stop_button)
        bar.addWidget(self.models_button)
        bar.addWidget(self.settings_button)

        self.message = MessageBox(self)
        self.send_button = QPushButton(icon("send"), "", self, objectName="sendButton")
        self.send_button.setAccessibleName("Send message")
        self.send_button.setToolTip("Send (Enter)")
        composer = QHBoxLayout()
        composer.addWidget(self.message, 1)
        composer.addWidget(self.send_button)

        middle = QWidget(self, objectName="middle")
        column = QVBoxLayout(middle)
        column.setContentsMargins(8, 8, 8, 8)
        column.addLayout(bar)
        column.addWidget(self.banner)
        column.addWidget(self.view, 1)
        column.addLayout(composer)

        splitter = QSplitter(self)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(middle)
        splitter.addWidget(self.panel)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([220, 640, 340])
        splitter.setChildrenCollapsible(False)
        self.setCentralWidget(splitter)

        self.engine_status = QLabel("Engine: starting…", self, objectName="engineStatus")
        self.engine_status.setAccessibleName("Engine status")
        self.statusBar().addPermanentWidget(self.engine_status)
        self.statusBar().setAccessibleName("Status")
        self.resize(1240, 760)

        QShortcut(QKeySequence.StandardKey.New, self, self.chat.new_conversation)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop)
        QShortcut(QKeySequence.StandardKey.Paste, self, self.paste)

    def connect_parts(self) -> None:
        chat, engine = self.chat, self.engine
        chat.turnAdded.connect(self.view.add_turn)
        chat.turnUpdated.connect(self.view.update_turn)
        chat.conversationOpened.connect(self.on_conversation_opened)
        chat.conversationsChanged.connect(self.refresh_sidebar)
        chat.phaseChanged.connect(lambda _: self.update_state())
        chat.notice.connect(self.show_notice)
        if self.voice is not None:
            chat.replyAudio.connect(self.voice.play)
            chat.replyEnded.connect(self.voice.end_playback)

        engine.ready.connect(lambda: self.set_engine_status("ready" if self.model is None else "loading the model…"))
        engine.progress.connect(lambda stage, fraction: self.set_engine_status(f"{stage} ({fraction:.0%})"))
        engine.modelLoaded.connect(self.on_model_loaded)
        engine.engineDied.connect(self.on_engine_died)

        self.sidebar.newRequested.connect(self.chat.new_conversation)
        self.sidebar.openRequested.connect(self.open_conversation)
        self.sidebar.renameRequested.connect(self.rename_conversation)
        self.sidebar.deleteRequested.connect(self.delete_conversation)
        self.sidebar.exportRequested.connect(self.export_conversation)

        self.message.submitted.connect(self.send_text)
        self.message.mediaPasted.connect(lambda mime: self.images.accept_mime(mime, "pasted image"))
        self.send_button.clicked.connect(self.send_typed)
        self.stop_button.clicked.connect(self.stop)
        self.settings_button.clicked.connect(self.open_settings)
        self.models_button.clicked.connect(self.open_models)
        self.hands_free.toggled.connect(self.on_listen_mode)

        self.context.notice.connect(self.show_notice)
        self.context.busyChanged.connect(self.on_image_busy)
        self.images.attached.connect(lambda _: self.panel.show_attached())
        self.panel.openImageRequested.connect(self.open_image)
        self.panel.regionRequested.connect(self.pick_region)

    # ---- engine --------------------------------------------------------------------------------

    @staticmethod
    def model_from(prefs: Preferences) -> ModelChoice | None:
        return ModelChoice(prefs.model, prefs.precision or None, prefs.device or None) if prefs.model else None

    def showEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self.engine_started:  # after the first paint: starting a process is not the window's business
            self.engine_started = True
            QTimer.singleShot(0, self.start_engine)

    def start_engine(self) -> None:
        self.engine.start()
        if self.model is not None:
            self.engine.load_model(self.model.folder, self.model.precision, self.model.device)
            self.set_engine_status("starting…")
        else:  # the first run: getting a model is the first thing to do
            self.open_models()

    def set_engine_status(self, text: str) -> None:
        self.engine_status.setText(f"Engine: {text}")

    @Slot(dict)
    def on_model_loaded(self, info: dict) -> None:
        name = Path(str(info.get("model", ""))).name
        self.set_engine_status(f"{name} ({info.get('precision')} on {info.get('device')})")

    @Slot(str)
    def on_engine_died(self, reason: str) -> None:
        self.set_engine_status("restarting")
        self.show_notice(f"The engine stopped: {reason}. The conversation is kept.")

    # ---- turns ---------------------------------------------------------------------------------

    def send_typed(self) -> None:
        text = self.message.toPlainText().strip()
        if text:
            self.message.clear()
            self.send_text(text)

    @Slot(str)
    def send_text(self, text: str) -> None:
        if self.model is None:
            self.banner.show()
            self.show_notice("There is no model to answer yet; see the notice above.")
            return
        self.chat.send(text=text, snapshot=self.context.snapshot())

    def stop(self) -> None:
        self.chat.stop()
        if self.voice is not None:
            self.voice.stop_playback()

    # VoiceSink: the voice controller calls these (see app/voice.py).

    @Slot(float)
    def set_mic_level(self, db: float) -> None:
        self.meter.set_db(db)

    @Slot(str)
    def set_voice_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"voice state must be one of {STATES}, got {state!r}")
        self.voice_state = state
        self.update_state()
        if state in RESTING:
            self.chat.transcripts.pump()

    def picture(self) -> Picture | None:
        """What a turn starting now carries: the visual context's picture, encoding on a worker."""
        return self.context.picture()

    @Slot(str, bytes, int, object)
    def on_turn_sent(self, turn_id: str, pcm: bytes, rate: int, image: bytes | None) -> None:
        self.chat.adopt(turn_id, Clip(np.frombuffer(pcm, dtype="<i2"), rate), None, image)

    @Slot(str, dict, bool)
    def on_voice_turn_finished(self, turn_id: str, timings_ms: dict, interrupted: bool = False) -> None:
        self.chat.add_voice_timings(turn_id, timings_ms, interrupted)

    @Slot(str)
    def show_notice(self, message: str) -> None:
        self.statusBar().showMessage(message, NOTICE_MS)

    def on_image_busy(self, busy: bool) -> None:
        if busy:
            self.show_notice(LOADING_IMAGE)
        elif self.statusBar().currentMessage() == LOADING_IMAGE:
            self.statusBar().clearMessage()

    def update_state(self) -> None:
        self.indicator.set_state(combined_state(self.chat.phase, self.voice_state))

    def update_voice_controls(self) -> None:
        available = self.voice is not None
        for widget in (self.meter, self.hands_free, self.push_to_talk):
            widget.setEnabled(available)
        if not available:
            self.meter.setToolTip("No voice input: type below")

    def on_listen_mode(self, hands_free: bool) -> None:
        self.prefs = replace(self.prefs, hands_free=hands_free)
        save_preferences(self.settings, self.prefs)
        if self.voice is not None:
            self.voice.set_hands_free(hands_free)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        """Push-to-talk: Space held anywhere in the window except where Space types."""
        kind = event.type()
        if (kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and self.voice is not None
                and not self.prefs.hands_free and event.key() == Qt.Key.Key_Space and not event.isAutoRepeat()
                and self.isActiveWindow() and not isinstance(QApplication.focusWidget(), QPlainTextEdit | QLineEdit)):
            if kind == QEvent.Type.KeyPress:
                self.voice.press_to_talk()
            else:
                self.voice.release_to_talk()
            return True
        return False

    # ---- conversations -------------------------------------------------------------------------

    def refresh_sidebar(self) -> None:
        conversations = self.chat.guard(self.store.conversations) or []
        current = self.chat.conversation.id if self.chat.conversation else None
        self.sidebar.set_conversations(conversations, current)

    def on_conversation_opened(self, conversation: Conversation | None, views: list[TurnView]) -> None:
        self.view.show_conversation(views)
        self.setWindowTitle(f"{conversation.display_title} — Omnivox" if conversation else "Omnivox")
        self.refresh_sidebar()

    def open_conversation(self, conversation_id: int) -> None:
        if self.chat.conversation is None or self.chat.conversation.id != conversation_id:
            self.chat.open_conversation(conversation_id)

    def rename_conversation(self, conversation_id: int) -> None:
        current = self.store.conversation(conversation_id).display_title
        title = self.ask_title(current)
        if title is not None and title.strip():
            self.chat.rename(conversation_id, title)

    def delete_conversation(self, conversation_id: int) -> None:
        if self.confirm_delete(self.store.conversation(conversation_id).display_title):
            self.chat.delete(conversation_id)

    def export_conversation(self, conversation_id: int) -> None:
        folder = self.ask_export_folder()
        if folder is not None:
            self.chat.export(conversation_id, folder)

    # Dialogs, separate so tests can answer them.

    def ask_title(self, current: str) -> str | None:
        title, ok = QInputDialog.getText(self, "Rename conversation", "Title:", text=current)
        return title if ok else None

    def confirm_delete(self, title: str) -> bool:
        answer = QMessageBox.question(self, "Delete conversation",
                                      f"Delete “{title}” with its recordings and images?")
        return answer == QMessageBox.StandardButton.Yes

    def ask_export_folder(self) -> Path | None:
        folder = QFileDialog.getExistingDirectory(self, "Export the conversation to")
        return Path(folder) if folder else None

    # ---- visual context ------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if ImageInput.can_accept(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        if self.images.accept_mime(event.mimeData()):
            event.acceptProposedAction()

    def paste(self) -> None:
        if not self.images.accept_mime(QGuiApplication.clipboard().mimeData(), "pasted image"):
            self.show_notice("The clipboard holds no image or file to attach.")

    def open_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Attach an image", "",
                                              "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif)")
        if path:
            self.images.add_paths([Path(path)])

    def pick_region(self, screen_index: int) -> None:
        all_screens = screens.screens()
        screen = all_screens[min(screen_index, len(all_screens) - 1)]
        try:
            capture = screens.capture_screen(screen)
        except screens.CaptureRefused as err:
            self.show_notice(str(err))
            return
        self.picker = RegionPicker(screen, capture)
        self.picker.picked.connect(lambda region: self.panel.set_region(all_screens.index(screen), QRect(region)))
        self.picker.show()

    # ---- settings and exit ---------------------------------------------------------------------

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.prefs, self.providers, self)
        if dialog.exec() == SettingsDialog.DialogCode.Accepted:
            self.apply_preferences(dialog.chosen())

    def open_models(self) -> None:
        """The model manager, non-modal: a download may take a while and the window stays usable."""
        if self.model_dialog is None:
            self.model_dialog = ModelDialog(self.models, self)
            self.model_dialog.modelChosen.connect(self.use_model)
        self.model_dialog.in_use = self.model.folder if self.model is not None else None
        self.model_dialog.refresh()
        self.model_dialog.show()
        self.model_dialog.raise_()

    def use_model(self, folder: str) -> None:
        """Load a model chosen in the model manager, and keep it as the one to use (as in Settings)."""
        self.apply_preferences(replace(self.prefs, model=folder))

    def apply_preferences(self, prefs: Preferences) -> None:
        old, self.prefs = self.prefs, prefs
        save_preferences(self.settings, prefs)
        if prefs.theme != old.theme:
            apply_theme(QApplication.instance(), prefs.theme)
        if prefs.camera != old.camera:
            self.context.set_camera_source(prefs.camera)
        model = self.model_from(prefs)
        if model is not None and model != self.model_from(old):  # not a command-line model the user left alone
            self.model = model
            self.engine.load_model(model.folder, model.precision, model.device)
            self.set_engine_status("loading the model…")
        self.banner.setVisible(self.model is None)
        if self.voice is not None:
            self.voice.apply_preferences(prefs)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        self.context.shutdown()
        self.models.shutdown()  # a download stops; the next one resumes it
        if self.voice is not None:
            self.voice.shutdown()
        self.engine.shutdown()
        super().closeEvent(event)
