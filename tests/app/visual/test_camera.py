"""The camera: sources, a preview from a generated video file paced at its rate, failures reported."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtGui import QImage

from app.visual.camera import PREVIEW_SIDE, Camera, parse_source
from tests.app.video import write_test_video


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
