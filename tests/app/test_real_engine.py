"""End to end: the real window, the real engine process on the test checkpoint, the real `history` command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from PySide6.QtCore import QSettings, Qt

from app.audio.capture import Capture
from app.audio.endpointer import SpeechEnded, SpeechStarted
from app.audio.playback import Playback
from app.engine_client import EngineClient
from app.history import HistoryStore
from app.voice_controller import Heard, VoiceController, WindowVoice
from app.window import MainWindow, ModelChoice
from tests.app.audio.fake_sounddevice import FakeSoundDevice, device
from tests.signals import tone

ROOT = Path(__file__).resolve().parents[2]


def test_turns_through_the_engine_appear_in_the_window_and_the_history(qtbot, test_model: Path,
                                                                        tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = HistoryStore.open(data)
    engine = EngineClient()
    sd = FakeSoundDevice([device("speaker", outputs=1, rate=16000), device("mic", inputs=1, rate=16000)],
                         default=(1, 0))
    controller = VoiceController(engine, Playback(sd), lambda: Capture(sd))  # the spoken turn's real path
    window = MainWindow(engine, store, QSettings(str(data / "settings.ini"), QSettings.Format.IniFormat),
                        voice=WindowVoice(controller), model=ModelChoice(str(test_model), "fp32", "cpu"),
                        max_new_tokens=8)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    try:
        with qtbot.waitSignal(window.engine.modelLoaded, timeout=120_000):
            pass
        assert window.engine_status.text() == "Engine: Lyra_Test (fp32 on cpu)"
        with qtbot.waitSignal(window.chat.replyEnded, timeout=120_000) as ended:
            window.message.setFocus()
            qtbot.keyClicks(window.message, "Describe the picture, please.")
            qtbot.keyClick(window.message, Qt.Key.Key_Return)
        assert ended.args[1] is False
        user, reply = window.view.widgets.values()
        assert user.body.text() == "Describe the picture, please." and reply.body.text()
        assert reply.footer.text().startswith("first words")

        speech = (tone(2.0) * 32767).astype("<i2").tobytes()
        speaker = next(stream for stream in sd.streams if stream.kind == "output")
        with qtbot.waitSignal(window.engine.transcribed, timeout=120_000):  # a spoken turn's follows its reply
            controller.on_heard(Heard(SpeechStarted(0.0), time.monotonic(), 0.0))  # as the listener reports it
            controller.on_heard(Heard(SpeechEnded(speech, 0.0, 2.0, "silence", 0.0), time.monotonic(), 2.0))
            # The speaker plays the reply out, half a second a poll; then the engine is free to transcribe.
            qtbot.waitUntil(lambda: speaker.pull(8000) is not None and controller.turn is None, timeout=180_000)
        key = list(window.view.widgets)[2]
        qtbot.waitUntil(lambda: not window.view.widgets[key].transcript.isHidden())
        transcript = window.chat.views[key].transcript
        assert transcript and window.view.widgets[key].transcript.text() == f"“{transcript}”"
    finally:
        window.close()  # stops the engine process
        store.close()

    out = subprocess.run([sys.executable, "main.py", "history", "--data-dir", str(data), "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    [conversation] = json.loads(out.stdout)["conversations"]
    asked, answered, spoken_turn, _ = conversation["turns"]
    assert spoken_turn["transcript"] == transcript and spoken_turn["audio_file"]
    assert (asked["role"], asked["text"]) == ("user", "Describe the picture, please.")
    assert answered["role"] == "assistant" and answered["text"] == reply.body.text()
    assert Path(answered["audio_file"]).is_file() and answered["timings"]["total"] > 0
    assert conversation["title"] == "Describe the picture, please."
