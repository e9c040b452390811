"""The main window's behaviour, with a stand-in engine and voice controller (the real engine: test_real_engine.py)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QColor, QDropEvent, QGuiApplication, QImage
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QComboBox,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QProgressBar,
)

from app.audio.capture import Capture
from app.audio.endpointer import SpeechEnded, SpeechStarted
from app.audio.playback import Playback
from app.devices import DeviceProviders
from app.history import DB_NAME, HistoryStore
from app.model_manager import ModelRow
from app.settings import load_preferences
from app.voice_controller import Heard, VoiceController, WindowVoice
from app.window import MainWindow, ModelChoice
from app.window.settings_dialog import SettingsDialog
from tests.app.audio.fake_sounddevice import FakeSoundDevice, device
from tests.app.fakes import FakeEngine, FakeModelManager, FakeVoice
from tests.app.video import write_test_video
from tests.signals import tone

PROVIDERS = DeviceProviders(microphones=lambda: ["USB mic"], speakers=lambda: ["Headset", "Speakers"],
                            cameras=lambda: ["0", "1"])
MODEL = ModelChoice("/models/Lyra_Test", "fp32", "cpu")


@pytest.fixture
def make_window(qtbot, tmp_path: Path) -> Callable[..., MainWindow]:
    stores: list[HistoryStore] = []

    def make(voice: VoiceController | None = None, model: ModelChoice | None = MODEL,
             engine: FakeEngine | None = None) -> MainWindow:
        store = HistoryStore.open(tmp_path / "data")
        stores.append(store)
        settings = QSettings(str(tmp_path / "data" / "settings.ini"), QSettings.Format.IniFormat)
        window = MainWindow(engine or FakeEngine(), store, settings, providers=PROVIDERS, voice=voice, model=model,
                            models=FakeModelManager(), max_new_tokens=8)
        qtbot.addWidget(window)
        window.show()
        window.activateWindow()  # shortcuts (Esc, Ctrl+N, Ctrl+V, Space) go to the active window
        if model is not None:  # without one the model manager opens, and it has the focus
            qtbot.waitUntil(window.isActiveWindow)
        return window

    yield make
    for store in stores:
        store.close()


def png_file(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (120, 80)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def drop(window: MainWindow, mime: QMimeData) -> None:
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)


def drop_files(qtbot, window: MainWindow, *paths: Path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    with qtbot.waitSignal(window.images.busyChanged, check_params_cb=lambda busy: not busy, timeout=10_000):
        drop(window, mime)


def color_of(png: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((5, 5))


def type_and_send(qtbot, window: MainWindow, text: str) -> None:
    window.message.setFocus()
    qtbot.keyClicks(window.message, text)
    qtbot.keyClick(window.message, Qt.Key.Key_Return)


def bubbles(window: MainWindow) -> list[tuple[str, str]]:
    return [(widget.objectName(), widget.body.text()) for widget in window.view.widgets.values()]


def test_the_window_is_up_before_the_engine_is_started(qtbot, make_window) -> None:
    window = make_window()
    engine = window.engine
    qtbot.waitUntil(lambda: engine.started == 1)
    assert engine.loaded == [("/models/Lyra_Test", "fp32", "cpu")]
    assert not window.banner.isVisible() and window.model_dialog is None


def test_the_empty_conversation_hint_fits_a_narrow_window(qtbot, make_window) -> None:
    window = make_window()
    window.resize(window.minimumSizeHint().width(), 600)
    hint = window.view.empty
    qtbot.waitUntil(lambda: hint.isVisible() and window.view.viewport().width() < hint.fontMetrics().horizontalAdvance(
        hint.text().splitlines()[1]))  # narrower than the hint's longer line
    assert hint.width() <= window.view.viewport().width()  # not cut off at the right edge
    assert hint.heightForWidth(hint.width()) <= hint.height()  # every wrapped line shown


def test_without_a_model_the_window_says_how_to_get_one(make_window) -> None:
    window = make_window(model=None)
    assert window.banner.isVisible() and "<b>Models</b>" in window.banner.text()
    window.send_text("hello?")
    assert window.engine.requests == [] and "no model" in window.statusBar().currentMessage()


MINI = ModelRow("Lyra-Mini-3B", "3.28 B", 6.6, 2.2, True, "/data/models/Lyra-Mini-3B", 0)
BASE = ModelRow("Lyra-Base-9B", "9.37 B", 18.7, 6.12, False, None, 4_000_000)


def test_the_first_run_opens_the_model_manager_and_a_chosen_model_is_loaded_and_kept(qtbot, make_window) -> None:
    window = make_window(model=None)
    qtbot.waitUntil(lambda: window.model_dialog is not None and window.model_dialog.isVisible())
    dialog, models = window.model_dialog, window.models
    assert models.refreshes == 1 and window.engine.loaded == []
    models.listed.emit([MINI, BASE])
    assert dialog.table.item(1, 4).text() == "too big" and dialog.table.item(1, 5).text() == "paused at 4 MB"
    dialog.table.selectRow(1)
    assert dialog.download_button.text() == "Resume download" and not dialog.use_button.isEnabled()
    dialog.table.selectRow(0)
    qtbot.mouseClick(dialog.use_button, Qt.MouseButton.LeftButton)
    assert window.engine.loaded == [("/data/models/Lyra-Mini-3B", None, None)] and not dialog.isVisible()
    assert not window.banner.isVisible() and window.model == ModelChoice("/data/models/Lyra-Mini-3B", None, None)
    assert load_preferences(QSettings(window.settings.fileName(), QSettings.Format.IniFormat)).model == MINI.folder
    window.close()
    assert models.shut  # a running download stops with the window (and resumes next time)


def test_the_model_in_use_is_not_removed_and_a_paused_download_can_be_discarded(qtbot, make_window) -> None:
    window = make_window(model=ModelChoice(MINI.folder, None, None))
    qtbot.mouseClick(window.models_button, Qt.MouseButton.LeftButton)
    dialog, models = window.model_dialog, window.models
    models.listed.emit([MINI, BASE])
    dialog.confirm = lambda question: True
    dialog.table.selectRow(0)
    qtbot.mouseClick(dialog.remove_button, Qt.MouseButton.LeftButton)
    assert models.removing is None and "is the model in use" in dialog.status.text()
    dialog.table.selectRow(1)
    assert dialog.remove_button.text() == "Discard download"
    qtbot.mouseClick(dialog.remove_button, Qt.MouseButton.LeftButton)
    assert models.removing == "Lyra-Base-9B" and dialog.table.item(1, 5).text() == "removing"
    models.removed.emit("Lyra-Base-9B", "permission denied")
    assert dialog.status.text() == "Could not remove Lyra-Base-9B: permission denied"


def test_the_models_button_opens_the_manager_on_a_running_download(qtbot, make_window) -> None:
    window = make_window()
    qtbot.mouseClick(window.models_button, Qt.MouseButton.LeftButton)
    dialog, models = window.model_dialog, window.models
    assert dialog.isVisible() and models.refreshes == 1
    models.listed.emit([MINI, BASE])
    dialog.table.selectRow(1)
    qtbot.mouseClick(dialog.download_button, Qt.MouseButton.LeftButton)
    models.progress.emit("Lyra-Base-9B", 9_350_000_000, 18_700_000_000)  # past 2 GB: no int overflow
    assert dialog.progress.isVisible() and dialog.progress.value() == 500 and dialog.cancel_button.isEnabled()
    assert dialog.table.item(1, 5).text() == "downloading" and not dialog.download_button.isEnabled()
    dialog.close()
    window.open_models()  # reopened: the same dialog, still showing the download
    assert window.model_dialog is dialog and dialog.progress.value() == 500
    models.downloading = None
    models.stopped.emit("Lyra-Base-9B", "Lyra-Base-9B: the disk is full; free some space and run the download again")
    assert dialog.status.text().endswith("the disk is full; free some space and run the download again")
    assert not dialog.progress.isVisible() and dialog.download_button.isEnabled()


def test_a_typed_turn_streams_into_the_conversation_and_the_history(qtbot, make_window) -> None:
    window = make_window()
    engine = window.engine
    type_and_send(qtbot, window, "What time is it?")
    [request] = engine.requests
    assert (request.text, request.image, request.pcm, request.max_new_tokens) == ("What time is it?", None, None, 8)
    assert window.message.toPlainText() == "" and window.indicator.state == "thinking"

    engine.textDelta.emit(request.turn_id, "It is ")
    assert window.indicator.state == "speaking"
    assert bubbles(window) == [("userTurn", "What time is it?"), ("assistantTurn", "It is  ▍")]  # still coming
    engine.reply("noon.")
    assert bubbles(window)[-1] == ("assistantTurn", "noon. ")  # turnDone's text is the reply of record
    assert window.indicator.state == "idle"

    store = window.store
    [conversation] = store.conversations()
    user, reply = store.turns(conversation.id)
    assert (user.role, user.text, reply.role, reply.text) == ("user", "What time is it?", "assistant", "noon. ")
    assert reply.audio_file and store.path(reply.audio_file).is_file() and reply.audio_seconds == 0.5
    assert reply.timings["first_audio"] == 310.0 and not reply.interrupted
    assert window.sidebar.list.item(0).text() == "What time is it?"


def test_a_dropped_image_stays_attached_until_cleared(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window()
    engine = window.engine
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(png_file(tmp_path / "red.png", (230, 20, 20))))])
    assert window.images.can_accept(mime)
    drop_files(qtbot, window, tmp_path / "red.png")
    assert window.context.mode == "image" and not window.panel.preview.image.isNull()
    assert window.panel.image_name.text() == "red.png"

    window.send_text("What colour is this?")
    engine.reply("Red.")
    window.send_text("Are you sure?")
    first, second = engine.requests
    assert color_of(first.image) == (230, 20, 20) and second.image == first.image
    user_bubble = next(iter(window.view.widgets.values()))
    assert not user_bubble.thumbnail.isHidden() and "sees red.png" in user_bubble.header.text()
    stored = window.store.turns(window.chat.conversation.id)[0]
    assert color_of(window.store.path(stored.image_file).read_bytes()) == (230, 20, 20)

    engine.reply("Yes.")
    window.context.clear_image()
    window.send_text("And now?")
    assert engine.requests[-1].image is None and window.context.mode == "none"


def test_a_pasted_image_is_attached(qtbot, make_window) -> None:
    window = make_window()
    picture = QImage(200, 100, QImage.Format.Format_RGB32)
    picture.fill(QColor(20, 200, 40))
    QGuiApplication.clipboard().setImage(picture)
    window.view.setFocus()
    with qtbot.waitSignal(window.images.attached, timeout=10_000) as attached:
        qtbot.keyClick(window, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert attached.args[0].name == "pasted image" and window.context.mode == "image"

    window.context.clear_image()
    window.message.setFocus()
    with qtbot.waitSignal(window.images.attached, timeout=10_000):
        qtbot.keyClick(window.message, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)  # into the text box
    assert window.message.toPlainText() == "" and window.context.mode == "image"


@pytest.mark.parametrize(("name", "expected"), [("folder", "folder is a folder"), ("notes.txt", "not an image"),
                                                ("empty.png", "empty (0 bytes)")])
def test_bad_drops_are_explained_in_the_status_area(qtbot, make_window, tmp_path: Path, name: str,
                                                     expected: str) -> None:
    window = make_window()
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"" if name.endswith(".png") else b"plain text")
    drop_files(qtbot, window, path)
    assert expected in window.statusBar().currentMessage() and window.context.mode == "none"


def test_many_files_dropped_attach_the_first_image_with_a_notice(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window()
    drop_files(qtbot, window, png_file(tmp_path / "one.png", (1, 2, 3)), png_file(tmp_path / "two.png", (4, 5, 6)))
    assert window.context.attached.name == "one.png"
    assert window.statusBar().currentMessage().startswith("2 files dropped; attached the first image, one.png.")


def test_the_camera_frame_current_at_send_goes_with_the_turn(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window()
    video = write_test_video(tmp_path / "cam.avi", frames=120, size=(640, 360))
    window.context.camera_source = str(video)
    window.panel.mode_buttons["camera"].click()
    qtbot.waitUntil(lambda: not window.panel.preview.image.isNull(), timeout=5000)
    assert window.panel.camera_choice.currentText() == str(video)
    window.send_text("What do you see?")
    qtbot.waitUntil(lambda: len(window.engine.requests) == 1, timeout=5000)  # after the frame is encoded
    assert Image.open(io.BytesIO(window.engine.requests[0].image)).size == (640, 360)
    window.panel.mode_buttons["none"].click()
    assert not window.context.camera.running


def test_stop_cancels_the_reply_which_is_stored_as_interrupted(qtbot, make_window) -> None:
    voice = FakeVoice()
    window = make_window(voice)
    engine = window.engine
    window.send_text("Tell me a story")
    engine.textDelta.emit(engine.requests[0].turn_id, "Once upon ")
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert engine.cancelled == [engine.requests[0].turn_id] and voice.stops == 1
    engine.reply("Once upon", cancelled=True)
    reply = window.store.turns(window.chat.conversation.id)[-1]
    assert reply.interrupted and reply.text.startswith("Once upon")
    assert list(window.view.widgets.values())[-1].footer.text() == "interrupted"
    assert voice.ends == [True]  # the cancelled reply's audio is dropped too


def test_a_new_turn_cancels_the_running_reply_and_waits_for_it(make_window) -> None:
    window = make_window()
    engine = window.engine
    window.send_text("first")
    window.send_text("second")  # the engine runs one turn at a time
    assert len(engine.requests) == 1 and engine.cancelled == [engine.requests[0].turn_id]
    engine.textDelta.emit(engine.requests[0].turn_id, "Fir")  # sent before the engine saw the cancel
    engine.turnDone.emit(engine.requests[0].turn_id, {"text": "Fir", "cancelled": True})
    assert [request.text for request in engine.requests] == ["first", "second"]
    engine.reply("Second answer.")
    roles = [(turn.role, turn.text, turn.interrupted) for turn in window.store.turns(1)]
    assert roles == [("user", "first", False), ("user", "second", False), ("assistant", "Second answer. ", False)]
    assert bubbles(window) == [("userTurn", "first"), ("userTurn", "second"), ("assistantTurn", "Second answer. ")]


def test_the_window_survives_the_engine_dying_mid_reply(qtbot, make_window) -> None:
    window = make_window()
    engine = window.engine
    window.send_text("Are you there?")
    engine.textDelta.emit(engine.requests[0].turn_id, "Yes, I")
    engine.engineDied.emit("the engine process was killed (SIGKILL, possibly out of memory)")
    assert "killed (SIGKILL" in window.statusBar().currentMessage()
    assert window.engine_status.text() == "Engine: restarting"
    assert bubbles(window) == [("userTurn", "Are you there?"), ("assistantTurn", "Yes, I")]
    assert window.indicator.state == "idle"
    stored = window.store.turns(window.chat.conversation.id)
    assert stored[-1].interrupted and stored[-1].text == "Yes, I"
    window.send_text("Hello again")  # and the conversation goes on once the engine is back
    assert engine.requests[-1].text == "Hello again"


def test_an_engine_error_for_a_turn_ends_it_with_a_notice(make_window) -> None:
    window = make_window()
    window.send_text("hi")
    window.engine.error.emit(window.engine.requests[0].turn_id, "no model loaded; load one first")
    assert window.statusBar().currentMessage() == "The reply failed: no model loaded; load one first"
    assert window.indicator.state == "idle" and window.chat.running is None


def test_the_voice_controller_drives_the_window(qtbot, make_window, tmp_path: Path) -> None:
    voice = FakeVoice()
    window = make_window(voice)
    engine = window.engine
    assert voice.window is window and voice.hands_free == [True] and voice.prefs
    window.set_mic_level(-20.0)
    assert window.meter.value() == 67
    window.set_voice_state("listening")
    assert window.indicator.state == "listening"

    drop_files(qtbot, window, png_file(tmp_path / "before.png", (200, 0, 0)))
    window.set_voice_state("user speaking")
    assert window.indicator.state == "user speaking" and color_of(window.picture().png) == (200, 0, 0)
    speech = (tone(1.0) * 32767).astype("<i2").tobytes()
    window.set_voice_state("thinking")
    window.on_turn_sent(engine.respond(speech, 16000, None, None, 8), speech, 16000, None)  # as the controller does

    user = next(iter(window.view.widgets.values()))
    assert "voice 1.0 s" in user.header.text() and user.transcript.isHidden()
    window.set_voice_state("speaking")
    engine.reply("A red square.")
    window.set_voice_state("listening")
    assert voice.ends == [False] and window.indicator.state == "listening"
    window.chat.set_transcript(window.chat.views[min(window.view.widgets)], "What is this?")
    assert user.transcript.text() == "“What is this?”"
    stored = window.store.turns(window.chat.conversation.id)[0]
    assert stored.transcript == "What is this?" and window.store.path(stored.audio_file).is_file()


def test_a_turn_the_voice_controller_sent_itself_is_shown_and_stored(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window(FakeVoice())
    engine = window.engine
    speech = (tone(0.5) * 32767).astype("<i2").tobytes()
    picture = png_file(tmp_path / "seen.png", (0, 180, 0)).read_bytes()
    window.set_voice_state("thinking")
    window.on_turn_sent("voice1", speech, 16000, picture)
    user = next(iter(window.view.widgets.values()))
    assert "voice 0.5 s" in user.header.text() and window.indicator.state == "thinking"
    qtbot.waitUntil(lambda: not user.thumbnail.isHidden(), timeout=5000)  # decoded on a worker
    engine.reply("Green.", turn_id="voice1")
    user_turn, reply = window.store.turns(window.chat.conversation.id)
    assert color_of(window.store.path(user_turn.image_file).read_bytes()) == (0, 180, 0)
    assert reply.text == "Green. " and engine.requests == []  # the controller, not the window, sent it
    window.on_voice_turn_finished("voice1", {"speech_end": 0.0, "request_sent": 12.0, "first_audio_played": 905.0})
    stored = window.store.turn(reply.id)
    assert stored.timings["voice_ms"]["first_audio_played"] == 905.0  # the latency telemetry, kept with the reply
    assert not stored.interrupted


def test_a_spoken_over_reply_stays_silent_when_more_of_it_arrives(make_window) -> None:
    window = make_window(FakeVoice())
    window.on_turn_sent("voice1", (tone(0.5) * 32767).astype("<i2").tobytes(), 16000, None)
    window.on_voice_turn_finished("voice1", {"speech_end": 0.0}, interrupted=True)  # the user spoke over it
    window.engine.reply("More of it.", turn_id="voice1")  # sent before the engine saw the cancel
    assert window.voice.played == []  # the voice controller plays its own turns; this one it stopped


def test_a_reply_spoken_over_after_the_engine_finished_it_is_stored_as_interrupted(make_window) -> None:
    window = make_window(FakeVoice())
    window.on_turn_sent("voice1", (tone(0.5) * 32767).astype("<i2").tobytes(), 16000, None)
    window.engine.reply("A long answer.", turn_id="voice1")  # stored whole: the engine is done, playback is not
    (reply,) = [turn for turn in window.store.turns(window.chat.conversation.id) if turn.role == "assistant"]
    assert not reply.interrupted
    window.on_voice_turn_finished("voice1", {"speech_end": 0.0, "first_audio_played": 700.0}, True)  # barge-in
    stored = window.store.turn(reply.id)
    assert stored.interrupted and stored.timings["voice_ms"]["first_audio_played"] == 700.0
    view = next(view for view in window.chat.views.values() if view.history_id == reply.id)
    assert view.interrupted


def test_a_reply_spoken_over_before_the_engine_reported_it_done_is_stored_as_interrupted(make_window) -> None:
    window = make_window(FakeVoice())
    window.on_turn_sent("voice1", (tone(0.5) * 32767).astype("<i2").tobytes(), 16000, None)
    window.on_voice_turn_finished("voice1", {"speech_end": 0.0, "first_audio_played": 650.0}, True)  # barge-in
    window.engine.reply("All of it.", turn_id="voice1")  # the engine had finished: its turn_done was on its way
    (reply,) = [turn for turn in window.store.turns(window.chat.conversation.id) if turn.role == "assistant"]
    assert reply.interrupted and reply.timings["voice_ms"]["first_audio_played"] == 650.0


def test_with_a_voice_loop_a_transcription_waits_until_the_reply_has_been_played(make_window) -> None:
    window = make_window(FakeVoice())
    engine = window.engine
    window.set_voice_state("thinking")
    window.on_turn_sent("voice1", (tone(0.5) * 32767).astype("<i2").tobytes(), 16000, None)
    window.set_voice_state("speaking")
    engine.reply("Here you go.", turn_id="voice1")  # the engine is done; the speaker is not
    assert engine.transcriptions == []
    window.set_voice_state("user speaking")  # and the user goes on talking over it
    assert engine.transcriptions == []
    window.set_voice_state("listening")
    assert [request.rate for request in engine.transcriptions] == [16000]

def test_speaking_over_a_typed_reply_cancels_it_and_the_speech_is_answered(qtbot, make_window,
                                                                           tmp_path: Path) -> None:
    """The spoken turn takes the production path: listener events into the real voice controller, which
    sends the turn with the window's picture and hands it to the window (as app/gui.py wires them)."""
    engine = FakeEngine()
    sd = FakeSoundDevice([device("speaker", outputs=1, rate=16000), device("mic", inputs=1, rate=16000)],
                         default=(1, 0))
    controller = VoiceController(engine, Playback(sd), lambda: Capture(sd))
    window = make_window(WindowVoice(controller), engine=engine)
    window.send_text("Tell me a story")
    typed = engine.requests[0].turn_id
    engine.textDelta.emit(typed, "Once ")
    engine.audioChunk.emit(typed, (0.1 * tone(1.0)).astype("<f4").tobytes(), 16000)
    assert controller.playback.buffered > 0  # the typed reply is on the speaker

    drop_files(qtbot, window, png_file(tmp_path / "seen.png", (200, 0, 0)))
    speech = (tone(1.0) * 32767).astype("<i2").tobytes()
    controller.on_heard(Heard(SpeechStarted(0.0), 100.0, 0.2))
    assert [color_of(png) for png in engine.prefetched] == [(200, 0, 0)]  # ahead, while the user talks
    controller.on_heard(Heard(SpeechEnded(speech, 0.0, 1.0, "silence", 0.0), 100.8, 1.0))
    spoken = engine.requests[1]
    assert color_of(spoken.image) == (200, 0, 0) and spoken.text is None
    assert engine.cancelled == [typed] and controller.playback.buffered == 0  # the typed reply, not the speech
    engine.reply("Once", cancelled=True, turn_id=typed)  # the engine confirms the cancel
    engine.reply("A red square.", turn_id=spoken.turn_id)
    stored = window.store.turns(window.chat.conversation.id)
    assert [(turn.role, turn.text.strip(), turn.interrupted) for turn in stored] == [
        ("user", "Tell me a story", False), ("assistant", "Once", True), ("user", "", False),
        ("assistant", "A red square.", False)]
    assert stored[2].audio_seconds == pytest.approx(1.0) and window.store.path(stored[2].image_file).is_file()


def test_push_to_talk_with_space_when_the_text_box_is_not_focused(qtbot, make_window) -> None:
    voice = FakeVoice()
    window = make_window(voice)
    window.push_to_talk.click()
    assert voice.hands_free == [True, False] and not load_preferences(window.settings).hands_free
    window.view.setFocus()
    qtbot.keyPress(window.view, Qt.Key.Key_Space)
    qtbot.keyRelease(window.view, Qt.Key.Key_Space)
    assert voice.pushes == ["press", "release"]
    window.message.setFocus()
    qtbot.keyClick(window.message, Qt.Key.Key_Space)
    assert voice.pushes == ["press", "release"] and window.message.toPlainText() == " "


def test_without_a_voice_controller_the_mic_controls_are_off(make_window) -> None:
    window = make_window()
    assert not window.meter.isEnabled() and not window.push_to_talk.isEnabled()


def test_ctrl_n_starts_a_new_conversation(qtbot, make_window) -> None:
    window = make_window()
    window.send_text("hello")
    window.engine.reply("hi")
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.view.widgets == {} and window.chat.conversation is None and window.engine.resets == 1
    window.send_text("a new topic")
    assert len(window.store.conversations()) == 2


def test_every_control_has_an_accessible_name(make_window) -> None:
    window = make_window(FakeVoice())
    controls = [widget for kind in (QAbstractButton, QComboBox, QLineEdit, QPlainTextEdit, QListWidget, QProgressBar)
                for widget in window.findChildren(kind)]
    unnamed = [f"{type(w).__name__} {w.objectName() or w.text() if hasattr(w, 'text') else ''}" for w in controls
               if not w.accessibleName() and not isinstance(w.parent(), QComboBox)]  # a combo's own line edit
    assert len(controls) > 15 and unnamed == []


def test_the_history_sidebar_reopens_renames_deletes_and_exports(qtbot, make_window, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    window = make_window()
    engine = window.engine
    drop_files(qtbot, window, png_file(tmp_path / "pic.png", (10, 120, 200)))
    window.send_text("first conversation")
    engine.reply("answer one")
    window.chat.new_conversation()
    window.context.clear_image()
    window.send_text("second conversation")
    engine.reply("answer two")
    assert [window.sidebar.list.item(i).text() for i in range(2)] == ["second conversation", "first conversation"]

    first_id = window.sidebar.list.item(1).data(Qt.ItemDataRole.UserRole)
    window.sidebar.list.setCurrentRow(1)
    window.sidebar.openRequested.emit(first_id)
    assert bubbles(window) == [("userTurn", "first conversation"), ("assistantTurn", "answer one ")]
    reopened = next(iter(window.view.widgets.values()))
    qtbot.waitUntil(lambda: not reopened.thumbnail.isHidden(), timeout=5000)  # read from the stored PNG on a worker

    monkeypatch.setattr(window, "ask_title", lambda current: "Renamed")
    window.sidebar.actions["Rename"][0].click()
    assert window.store.conversation(first_id).title == "Renamed" and window.windowTitle() != ""
    assert window.sidebar.list.item(1).text() == "Renamed"

    monkeypatch.setattr(window, "ask_export_folder", lambda: tmp_path / "export")
    window.sidebar.list.setCurrentRow(1)
    window.sidebar.actions["Export"][0].click()
    exported = tmp_path / "export" / "Renamed.md"
    assert exported.is_file() and "answer one" in exported.read_text()
    assert any(path.suffix == ".png" for path in (tmp_path / "export" / "Renamed files").iterdir())

    monkeypatch.setattr(window, "confirm_delete", lambda title: title == "Renamed")
    window.sidebar.list.setCurrentRow(1)
    window.sidebar.actions["Delete"][0].click()
    assert [c.title for c in window.store.conversations()] == ["second conversation"]
    assert window.view.widgets == {}  # the open conversation was the deleted one


def test_settings_use_injected_devices_and_persist(qtbot, make_window) -> None:
    voice = FakeVoice()
    window = make_window(voice)
    dialog = SettingsDialog(window.prefs, PROVIDERS, window)
    qtbot.addWidget(dialog)
    assert [dialog.microphone.itemText(i) for i in range(dialog.microphone.count())] == ["System default", "USB mic"]
    assert dialog.speaker.findText("Headset") >= 0 and dialog.camera.findText("Camera 1") >= 0
    dialog.microphone.setCurrentText("USB mic")
    dialog.camera.setCurrentText("/dev/shm/clip.avi")
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.vad.setCurrentIndex(dialog.vad.findData("high"))
    dialog.barge_in.setChecked(False)
    dialog.model.setText("/models/Other")
    dialog.extraction.setCurrentIndex(dialog.extraction.findData("strong"))
    window.apply_preferences(dialog.chosen())

    stored = load_preferences(QSettings(window.settings.fileName(), QSettings.Format.IniFormat))
    assert (stored.microphone, stored.camera, stored.theme, stored.vad_sensitivity, stored.barge_in) == (
        "USB mic", "/dev/shm/clip.avi", "dark", "high", False)
    assert stored.extraction == "strong"
    assert window.context.camera_source == "/dev/shm/clip.avi" and voice.prefs[-1] == stored
    assert window.engine.loaded[-1] == ("/models/Other", None, None)  # precision and device left to the engine
    assert "#242833" in QApplication.instance().styleSheet()  # the dark surface colour
    window.apply_preferences(stored)
    assert len(window.engine.loaded) == 2  # unchanged settings do not reload the model


def test_a_damaged_history_is_moved_aside_and_the_window_says_so(make_window, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / DB_NAME).write_bytes(b"\x00garbage" * 64)
    window = make_window()
    assert "history database was damaged" in window.statusBar().currentMessage()
    window.send_text("still saved")
    assert window.store.turns(window.chat.conversation.id)[0].text == "still saved"
