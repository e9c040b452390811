"""Take docs/screenshot.png: the main window mid-conversation, grabbed from a real X screen.

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python docs/screenshot.py

The engine is the tests' stand-in replaying a scripted reply, so the picture shows readable
text (the random-weight test model only produces noise); everything else is the real window.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, QSettings, QTimer
from PySide6.QtGui import QColor, QFont, QGuiApplication, QImage, QPainter
from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.history import HistoryStore  # noqa: E402
from app.window import MainWindow, ModelChoice  # noqa: E402
from app.window.theme import apply_theme  # noqa: E402
from tests.app.fakes import FakeEngine, FakeVoice  # noqa: E402
from tests.signals import tone  # noqa: E402

QUESTION = "What does this chart say about the second quarter?"
ANSWER = ("Sales climb every month. The second quarter is the strongest: April to June bring in about 40% more "
          "than January to March, and June is the best month of the half-year.")
FOLLOW_UP = "And which month was the weakest?"
STREAMING = "February was the weakest month, at roughly"


def chart() -> QImage:
    """A small bar chart to talk about."""
    image = QImage(960, 600, QImage.Format.Format_RGB32)
    image.fill(QColor("#ffffff"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setFont(QFont("DejaVu Sans", 26, QFont.Weight.Bold))
    painter.setPen(QColor("#1d2330"))
    painter.drawText(QPointF(60, 70), "Sales, January – June")
    painter.setFont(QFont("DejaVu Sans", 18))
    values = (42, 35, 51, 63, 70, 84)
    for index, (month, value) in enumerate(zip(("Jan", "Feb", "Mar", "Apr", "May", "Jun"), values, strict=True)):
        x = 90 + index * 140
        height = value * 5
        painter.fillRect(QRectF(x, 520 - height, 90, height), QColor("#2f6fde" if index >= 3 else "#9db8ee"))
        painter.drawText(QPointF(x + 22, 560), month)
        painter.drawText(QPointF(x + 26, 510 - height), str(value))
    painter.end()
    return image


def main() -> int:
    parser = argparse.ArgumentParser(description="Take the README screenshot under a real X server.")
    parser.add_argument("--theme", default="light", choices=("light", "dark"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()
    app = QApplication(sys.argv[:1])
    apply_theme(app, args.theme)
    data = Path(tempfile.mkdtemp(prefix="omnivox-shot-"))
    picture = data / "sales-chart.png"
    chart().save(str(picture))
    engine, voice = FakeEngine(), FakeVoice()
    settings = QSettings(str(data / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(engine, HistoryStore.open(data), settings, voice=voice,
                        model=ModelChoice("/models/scripted-stand-in", "fp32", "cpu"))
    window.setGeometry(0, 0, 1280, 776)
    window.show()
    window.images.add_paths([picture])
    steps = [
        lambda: engine.modelLoaded.emit({"model": "/models/scripted-stand-in", "precision": "fp32", "device": "cpu"}),
        lambda: window.send_text(QUESTION),
        lambda: engine.reply(ANSWER, audio_seconds=7.4),
        lambda: window.set_voice_state("listening"),
        lambda: window.set_voice_state("thinking"),
        lambda: window.on_turn_sent(engine.respond(tone(2.3).tobytes(), 16000, None, None, 512),  # as the
                                    (tone(2.3) * 32767).astype("<i2").tobytes(), 16000, None),  # controller does
        lambda: window.chat.set_transcript(window.chat.views[max(window.view.widgets)], FOLLOW_UP),
        lambda: [engine.textDelta.emit(engine.requests[-1].turn_id, word + " ") for word in STREAMING.split()],
        lambda: window.set_voice_state("speaking"),
        lambda: window.set_mic_level(-38.0),
    ]

    def run(index: int = 0) -> None:
        if index < len(steps):
            steps[index]()
            QTimer.singleShot(250, lambda: run(index + 1))
            return
        shot = QGuiApplication.primaryScreen().grabWindow(0).copy(window.frameGeometry())
        shot.save(str(args.out))
        print(f"wrote {args.out} ({shot.width()}×{shot.height()})")
        window.close()

    QTimer.singleShot(800, run)  # the image loads on a worker first
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
