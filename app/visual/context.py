"""The visual context: which of none / camera / screen / image the assistant sees, and what it sees now.

`snapshot()` is the picture a turn carries: the window calls it when the user starts speaking
(or presses send), so the turn is about what was on screen or in front of the camera *then*.
A dropped or pasted image stays attached to every following turn until it is cleared.
`picture()` is the same snapshot on its way to PNG bytes: the grab happens at once, on the GUI
thread (Qt requires it, and it takes a few ms), the encoding on a worker (a 4K screen takes
hundreds of ms, which would freeze the window just as the user starts talking).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, QRect, QTimer, Signal, Slot
from PySide6.QtGui import QImage

from app.visual import screen as screens
from app.visual.camera import Camera, describe, parse_source
from app.visual.frames import png_from_qimage
from app.visual.image_input import ImageInput, LoadedImage
from app.workers import run_in_background

MODES = ("none", "camera", "screen", "image")
SCREEN_REFRESH_MS = 1000  # the screen preview; a turn always takes a fresh capture


@dataclass(frozen=True)
class Snapshot:
    image: QImage
    label: str  # where it came from, for the turn's caption
    png: bytes | None = None  # already encoded (dropped images); frames are encoded on a worker

    def encode(self) -> Picture:
        """Start encoding on a worker (unless the bytes are here already); call on the GUI thread."""
        if self.png is not None:
            return Picture(self.png)
        picture = Picture()
        run_in_background(lambda: png_from_qimage(self.image), picture.arrive, picture.fail)
        return picture


class Picture:
    """A turn's picture as PNG bytes that may still be being encoded.

    `then(callback)` hands the bytes to `callback` on the GUI thread: at once when they are here,
    else when the worker is done. A failed encoding hands over None, with `failure` saying why.
    """

    def __init__(self, png: bytes | None = None) -> None:
        self.png = png
        self.ready = png is not None
        self.failure = ""
        self.waiting: list[Callable[[bytes | None], None]] = []

    def then(self, callback: Callable[[bytes | None], None]) -> None:
        if self.ready:
            callback(self.png)
        else:
            self.waiting.append(callback)

    def arrive(self, png: bytes | None) -> None:
        self.png, self.ready = png, True
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback(png)

    def fail(self, message: str) -> None:
        self.failure = message
        self.arrive(None)


@dataclass(frozen=True)
class ScreenTarget:
    """A screen (by index), a window of another program (by id), or a region of a screen."""

    screen: int = 0
    window: int | None = None
    region: QRect | None = None
    label: str = "screen"


class VisualContext(QObject):
    modeChanged = Signal(str)
    previewChanged = Signal(QImage)  # a null QImage clears the preview
    notice = Signal(str)
    busyChanged = Signal(bool)  # an image is being loaded

    def __init__(self, camera: Camera, images: ImageInput, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.mode = "none"
        self.camera = camera
        self.images = images
        self.camera_source = "0"
        self.screen_target = ScreenTarget()
        self.attached: LoadedImage | None = None
        self.refresh = QTimer(self)
        self.refresh.setInterval(SCREEN_REFRESH_MS)
        self.refresh.timeout.connect(self.refresh_screen)
        camera.frameReady.connect(self.on_camera_frame)
        camera.failed.connect(self.on_camera_failed)
        images.attached.connect(self.on_image)
        images.notice.connect(self.notice)
        images.busyChanged.connect(self.busyChanged)

    # ---- choosing -------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == self.mode:
            return
        self.mode = mode
        self.camera.stop()
        self.refresh.stop()
        self.previewChanged.emit(QImage())
        if mode == "camera":
            self.camera.start(parse_source(self.camera_source))
        elif mode == "screen":
            self.refresh_screen()
            self.refresh.start()
        elif mode == "image" and self.attached is not None:
            self.previewChanged.emit(self.attached.image)
        self.modeChanged.emit(mode)

    def set_camera_source(self, text: str) -> None:
        self.camera_source = text.strip() or "0"
        if self.mode == "camera":
            self.camera.start(parse_source(self.camera_source))

    def set_screen_target(self, target: ScreenTarget) -> None:
        self.screen_target = target
        if self.mode == "screen":
            self.refresh_screen()

    def clear_image(self) -> None:
        self.attached = None
        if self.mode == "image":
            self.set_mode("none")

    # ---- what is seen ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot | None:
        """The picture for a turn starting now, or None."""
        if self.mode == "camera" and self.camera.latest is not None:
            return Snapshot(self.camera.latest, describe(parse_source(self.camera_source)))
        if self.mode == "screen":
            image = self.capture_screen()
            return Snapshot(image, self.screen_target.label) if image is not None else None
        if self.mode == "image" and self.attached is not None:
            return Snapshot(self.attached.image, self.attached.name, self.attached.png)
        return None

    def picture(self) -> Picture | None:
        """The picture for a turn starting now, its encoding under way on a worker; or None."""
        snapshot = self.snapshot()
        return snapshot.encode() if snapshot is not None else None

    def capture_screen(self) -> QImage | None:
        target = self.screen_target
        all_screens = screens.screens()
        screen = all_screens[target.screen] if target.screen < len(all_screens) else None
        try:
            if target.window is not None:
                return screens.capture_window(target.window, screen)
            if target.region is not None:
                return screens.capture_region(screen, target.region)
            return screens.capture_screen(screen)
        except screens.CaptureRefused as err:
            self.refresh.stop()  # asking again every second would repeat the same refusal
            self.notice.emit(str(err))
            return None

    @Slot()
    def refresh_screen(self) -> None:
        image = self.capture_screen()
        if image is not None:
            self.previewChanged.emit(image)

    @Slot(QImage)
    def on_camera_frame(self, preview: QImage) -> None:
        if self.mode == "camera":
            self.previewChanged.emit(preview)

    @Slot(str)
    def on_camera_failed(self, message: str) -> None:
        self.notice.emit(message)
        self.previewChanged.emit(QImage())

    @Slot(object)
    def on_image(self, loaded: LoadedImage) -> None:
        self.attached = loaded
        if self.mode == "image":
            self.previewChanged.emit(loaded.image)
        else:
            self.set_mode("image")

    def shutdown(self) -> None:
        self.refresh.stop()
        self.camera.shutdown()
