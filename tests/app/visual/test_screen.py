"""Screen capture through Qt: whole screen, a region, a refused capture, a real X server's pixels."""

from __future__ import annotations

import os

import pytest
from PySide6.QtCore import QRect
from PySide6.QtGui import QColor, QGuiApplication, QPixmap
from PySide6.QtWidgets import QWidget

from app.visual import screen as screens
from app.visual.camera import Camera
from app.visual.context import ScreenTarget, VisualContext
from app.visual.image_input import ImageInput


def test_screen_capture_returns_an_image_of_the_screen(qapp) -> None:
    screen = QGuiApplication.primaryScreen()
    image = screens.capture_screen(screen)
    expected = screen.geometry().size() * screen.devicePixelRatio()
    assert not image.isNull() and image.size() == expected  # blank under offscreen, a real picture under X
    region = screens.capture_region(screen, QRect(10, 20, 100, 50))
    assert (region.width(), region.height()) == (round(100 * screen.devicePixelRatio()),
                                                 round(50 * screen.devicePixelRatio()))


def test_a_refused_capture_becomes_one_line(qapp, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = QGuiApplication.primaryScreen()
    monkeypatch.setattr(type(screen), "grabWindow", lambda self, window=0, *args: QPixmap())
    with pytest.raises(screens.CaptureRefused, match="refused the screen capture"):
        screens.capture_screen(screen)
    context = VisualContext(Camera(), ImageInput())
    notices: list[str] = []
    context.notice.connect(notices.append)
    context.set_mode("screen")
    assert context.snapshot() is None
    assert notices and "\n" not in notices[0] and not context.refresh.isActive()  # it does not retry every second


@pytest.mark.skipif(not os.environ.get("DISPLAY"),
                    reason="needs a real X server: run under xvfb-run -a -s '-screen 0 1280x800x24'")
def test_screen_capture_under_x_shows_what_is_on_screen(qtbot) -> None:
    window = QWidget()
    window.setStyleSheet("background: rgb(250, 20, 160);")
    window.setGeometry(100, 100, 200, 150)
    window.show()
    qtbot.waitExposed(window)
    qtbot.wait(200)
    image = screens.capture_region(QGuiApplication.primaryScreen(), QRect(150, 150, 40, 40))
    assert QColor(image.pixel(20, 20)).getRgb()[:3] == (250, 20, 160)
    context = VisualContext(Camera(), ImageInput())
    context.set_screen_target(ScreenTarget(region=QRect(150, 150, 40, 40), label="region"))
    context.set_mode("screen")
    assert QColor(context.snapshot().image.pixel(5, 5)).getRgb()[:3] == (250, 20, 160)
    context.shutdown()
    assert isinstance(screens.list_windows(), list)  # through libX11; empty without a window manager
