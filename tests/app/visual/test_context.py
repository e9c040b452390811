"""The visual context a turn carries: the camera frame current at the snapshot, and its PNG encoded on a worker."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PySide6.QtGui import QColor, QImage

from app.visual import context as visual_context
from app.visual.camera import Camera
from app.visual.context import Snapshot, VisualContext
from app.visual.frames import png_from_qimage
from app.visual.image_input import ImageInput


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
