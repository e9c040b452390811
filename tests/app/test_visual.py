"""Camera preview from a generated video file, screen capture, and the visual context a turn carries."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QRect
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPixmap
from PySide6.QtWidgets import QWidget

from app.visual import context as visual_context
from app.visual import screen as screens
from app.visual.camera import PREVIEW_SIDE, Camera, parse_source
from app.visual.context import ScreenTarget, Snapshot, VisualContext
from app.visual.frames import png_from_qimage
from app.visual.image_input import ImageInput
from tests.app.video import write_test_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("video") / "camera.avi", frames=90, size=(800, 600))


@pytest.fixture
def camera(qapp):
    camera = Camera()
    yield camera
    camera.shutdown()


def test_sources_are_device_numbers_or_paths() -> None:
    assert parse_source(" 0 ") == 0 and parse_source("2") == 2
    assert parse_source("/tmp/clip.avi") == "/tmp/clip.avi" and parse_source("rtsp://cam/1") == "rtsp://cam/1"


def test_camera_preview_runs_at_the_source_rate(qtbot, camera: Camera, video: Path) -> None:
    frames: list[QImage] = []
    camera.frameReady.connect(frames.append)
    with qtbot.waitSignal(camera.started, timeout=5000) as started:
        camera.start(str(video))
    assert started.args == [30.0]
    qtbot.waitUntil(lambda: len(frames) >= 3, timeout=5000)
    begin, count = time.perf_counter(), len(frames)
    qtbot.wait(1000)
    rate = (len(frames) - count) / (time.perf_counter() - begin)
    assert 20 <= rate <= 40  # paced at the file's 30 fps, not as fast as it decodes
    assert max(frames[-1].width(), frames[-1].height()) == PREVIEW_SIDE  # previews are downscaled off the GUI thread
    assert camera.latest is not None and (camera.latest.width(), camera.latest.height()) == (800, 600)


def test_a_camera_that_cannot_open_is_reported(qtbot, camera: Camera, tmp_path: Path) -> None:
    with qtbot.waitSignal(camera.failed, timeout=5000) as failed:
        camera.start(str(tmp_path / "no-such-camera.avi"))
    assert failed.args[0].startswith("Could not open") and not camera.running


def test_a_camera_that_stops_delivering_frames_is_reported(qtbot, camera: Camera, tmp_path: Path) -> None:
    short = write_test_video(tmp_path / "short.avi", frames=6)
    with qtbot.waitSignal(camera.failed, timeout=6000) as failed:
        camera.start(str(short))
    assert failed.args[0] == f"{short} stopped delivering frames." and camera.latest is None


def test_an_injected_capture_device_replaces_opencv(qtbot) -> None:
    """Devices are injected: anything with VideoCapture's isOpened/read/get/release will do."""

    class Unplugged:
        def __init__(self, source: int) -> None:
            self.source = source

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return False

        def release(self) -> None:
            pass

    camera = Camera(open_capture=Unplugged)
    with qtbot.waitSignal(camera.failed, timeout=5000) as failed:
        camera.start(0)
    assert failed.args[0] == "Could not open camera 0: no such device, or it is in use."
    camera.shutdown()


def test_the_context_snapshots_the_current_camera_frame(qtbot, camera: Camera, video: Path) -> None:
    context = VisualContext(camera, ImageInput())
    context.camera_source = str(video)
    previews: list[QImage] = []
    context.previewChanged.connect(previews.append)
    context.set_mode("camera")
    qtbot.waitUntil(lambda: camera.latest is not None, timeout=5000)
    snapshot = context.snapshot()
    assert snapshot.image is camera.latest and snapshot.label == str(video) and snapshot.png is None
    assert any(not image.isNull() for image in previews)
    context.set_mode("none")
    assert not camera.running and context.snapshot() is None
    context.shutdown()


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


def test_a_snapshot_is_encoded_on_a_worker_and_handed_over_on_the_gui_thread(qtbot, monkeypatch) -> None:
    encoders: list[int] = []

    def encode(image: QImage) -> bytes:
        encoders.append(threading.get_ident())
        return png_from_qimage(image)

    monkeypatch.setattr(visual_context, "png_from_qimage", encode)
    image = QImage(64, 48, QImage.Format.Format_RGB32)
    image.fill(QColor(0, 200, 0))
    picture = Snapshot(image, "screen").encode()
    handed: list[tuple[bytes | None, int]] = []
    picture.then(lambda png: handed.append((png, threading.get_ident())))
    assert not picture.ready  # the result comes back through the event loop, never within encode()
    qtbot.waitUntil(lambda: handed != [], timeout=5000)
    [(png, receiver)] = handed
    assert encoders[0] != threading.get_ident() and receiver == threading.get_ident()
    assert QImage.fromData(png).pixelColor(10, 10) == QColor(0, 200, 0)
    late: list[bytes | None] = []
    picture.then(late.append)  # asked after it arrived: answered at once
    assert late == [png]


def test_a_dropped_images_bytes_are_not_encoded_again(qtbot, monkeypatch) -> None:
    monkeypatch.setattr(visual_context, "png_from_qimage", lambda image: pytest.fail("encoded again"))
    picture = Snapshot(QImage(8, 8, QImage.Format.Format_RGB32), "drop.png", b"the file's bytes").encode()
    assert picture.ready and picture.png == b"the file's bytes"
