"""Camera preview: OpenCV capture on its own thread, frames handed to the GUI as QImages.

The worker opens the device (which can take a second), reads at the camera's own rate, converts
and downscales each frame off the GUI thread, and emits it. A device index ("0") and a video
file or stream URL go through the same VideoCapture path, which is how the tests run without a
camera. A source that cannot be opened, or that delivers no frame for STALL_S, ends the preview
with one line saying so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from PySide6.QtGui import QImage

from app.visual.frames import qimage_from_array

STALL_S = 2.0  # no frame for this long: the camera is gone (unplugged, taken by another app, end of stream)
RETRY_S = 0.02  # wait between failed reads, so a dead source does not spin
DEFAULT_FPS = 30.0  # when the source does not say
PREVIEW_SIDE = 640  # preview frames are downscaled in the worker; the GUI only paints them
MAX_FRAME_SIDE = 2880  # the attached frame, like a dropped image

OpenCapture = Callable[[int | str], Any]  # cv2.VideoCapture or a stand-in with isOpened/read/get/release


def parse_source(text: str) -> int | str:
    """"0" means device 0; anything else is a file path or stream URL."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def describe(source: int | str) -> str:
    return f"camera {source}" if isinstance(source, int) else str(source)


class CameraWorker(QObject):
    frame = Signal(QImage, QImage)  # full frame (long side ≤ MAX_FRAME_SIDE), preview
    opened = Signal(float)  # frames per second
    failed = Signal(str)
    finished = Signal()

    def __init__(self, source: int | str, open_capture: OpenCapture | None = None) -> None:
        super().__init__()
        self.source = source
        self.open_capture = open_capture
        self.stopping = threading.Event()

    @Slot()
    def run(self) -> None:
        import cv2  # here, on the worker thread: importing OpenCV takes longer than showing the window

        capture = (self.open_capture or cv2.VideoCapture)(self.source)
        try:
            if not capture.isOpened():
                self.failed.emit(f"Could not open {describe(self.source)}: no such device, or it is in use.")
                return
            fps = capture.get(cv2.CAP_PROP_FPS)
            fps = fps if 1 <= fps <= 240 else DEFAULT_FPS
            self.opened.emit(fps)
            self.read_frames(capture, fps, cv2)
        finally:
            capture.release()
            self.finished.emit()

    def read_frames(self, capture: Any, fps: float, cv2: Any) -> None:
        # Paced to the source's rate: a file would otherwise play as fast as it decodes;
        # a device blocks in read() until its next frame, so the pacing rarely waits.
        period, due, last_frame = 1.0 / fps, time.monotonic(), time.monotonic()
        while not self.stopping.is_set():
            ok, bgr = capture.read()
            now = time.monotonic()
            if not ok or bgr is None:
                if now - last_frame > STALL_S:
                    self.failed.emit(f"{describe(self.source).capitalize()} stopped delivering frames.")
                    return
                self.stopping.wait(RETRY_S)
                continue
            last_frame = now
            self.frame.emit(*self.convert(bgr, cv2))
            due = max(due + period, now)
            self.stopping.wait(max(0.0, due - time.monotonic()))

    @staticmethod
    def convert(bgr: Any, cv2: Any) -> tuple[QImage, QImage]:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        full, preview = fit(rgb, MAX_FRAME_SIDE, cv2), fit(rgb, PREVIEW_SIDE, cv2)
        return qimage_from_array(full), qimage_from_array(preview)


def fit(pixels: Any, side: int, cv2: Any) -> Any:
    height, width = pixels.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return pixels
    return cv2.resize(pixels, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)


class Camera(QObject):
    """One preview at a time; `start` replaces a running one."""

    frameReady = Signal(QImage)  # preview-sized
    started = Signal(float)  # frames per second
    failed = Signal(str)

    def __init__(self, open_capture: OpenCapture | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.open_capture = open_capture
        self.thread: QThread | None = None
        self.worker: CameraWorker | None = None
        self.latest: QImage | None = None  # the newest full-size frame: what a turn attaches
        self.retiring: list[tuple[QThread, CameraWorker]] = []  # stopped previews whose threads are still ending

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, source: int | str) -> None:
        self.stop()
        worker = CameraWorker(source, self.open_capture)
        thread = QThread(self)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.frame.connect(self.on_frame)
        worker.opened.connect(self.started)
        worker.failed.connect(self.on_failed)
        # Direct: quit() is thread-safe, and a queued call would wait for a GUI thread that may be in shutdown().
        worker.finished.connect(thread.quit, Qt.ConnectionType.DirectConnection)
        thread.finished.connect(self.on_thread_finished)
        self.thread, self.worker = thread, worker
        thread.start()

    def stop(self) -> None:
        """Stop the preview at once; its thread ends on its own (opening a stream URL may take a while)."""
        if self.worker is None or self.thread is None:
            return
        thread, worker = self.thread, self.worker
        self.thread = self.worker = None
        self.latest = None
        worker.stopping.set()
        self.retiring.append((thread, worker))  # both stay alive until the thread has ended

    def shutdown(self, timeout_ms: int = 3000) -> None:
        """At exit: stop and wait, so no thread outlives its QThread object."""
        self.stop()
        for thread, _ in self.retiring:
            thread.wait(timeout_ms)

    @Slot()
    def on_thread_finished(self) -> None:
        """Let a stopped preview's worker and thread go, now that nothing runs on that thread."""
        ended = [pair for pair in self.retiring if pair[0] is self.sender()]
        for pair in ended:
            self.retiring.remove(pair)
            pair[0].deleteLater()

    @Slot(QImage, QImage)
    def on_frame(self, full: QImage, preview: QImage) -> None:
        if self.sender() is not self.worker:  # queued before its preview was stopped or replaced
            return
        self.latest = full
        self.frameReady.emit(preview)

    @Slot(str)
    def on_failed(self, message: str) -> None:
        if self.sender() is self.worker:  # not a preview stopped or replaced in the meantime
            self.stop()
            self.failed.emit(message)
