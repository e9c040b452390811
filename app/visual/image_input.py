"""Images the user drops on the window or pastes: checked, decoded and downscaled off the GUI thread.

`load_first_image` is the plain logic (paths in, one `LoadedImage` or `ImageRejected` out) and
`ImageInput` adapts it to Qt: drops and clipboard contents in, `attached` / `notice` signals out.
A 200-megapixel photo takes seconds to decode; it happens on a pool thread and the window keeps
running. Whatever the source, what comes out is at most MAX_SIDE pixels on its long side.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from PySide6.QtCore import QMimeData, QObject, Signal
from PySide6.QtGui import QImage

from app.visual.frames import pil_from_qimage, png_bytes, qimage_from_pil
from app.workers import run_in_background
from engine.errors import OmnivoxError

FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF"}
ACCEPTED = "PNG, JPEG, WebP, BMP or GIF"
MAX_SIDE = 2880  # the long side of what is attached; the engine downscales further for the model
# Pixels a decode may produce, checked from the header (after a JPEG's reduced-scale draft) before decoding:
# up to 0.4 GB as RGBA in the window's process, far above any screen (8K is 33 megapixels).
MAX_PIXELS = 100_000_000
# Headers beyond this are refused as they are opened: Pillow warns past it, and here its warning is an error.
Image.MAX_IMAGE_PIXELS = 400_000_000


class ImageRejected(OmnivoxError):
    """A file (or clipboard content) that cannot be attached, described in one line."""


@dataclass(frozen=True)
class LoadedImage:
    png: bytes  # what the engine and the history get
    image: QImage  # for previews and thumbnails
    name: str
    original_size: tuple[int, int]
    notice: str | None = None  # something the user should know (other files ignored, downscaled)


def load_image_file(path: Path) -> LoadedImage:
    if path.is_dir():
        raise ImageRejected(f"{path.name} is a folder; drop image files instead.")
    if not path.is_file():
        raise ImageRejected(f"{path.name} is not a file.")
    if path.stat().st_size == 0:
        raise ImageRejected(f"{path.name} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageRejected(f"{path.name} is not an image Omnivox can read ({ACCEPTED}).") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageRejected(f"{path.name} is too large (over {MAX_PIXELS // 1_000_000} megapixels).") from None
    except OSError as err:
        raise ImageRejected(f"{path.name} cannot be read: {err.strerror or err}.") from None
    with image:
        if image.format not in FORMATS:
            raise ImageRejected(f"{path.name} is a {image.format} image; Omnivox takes {ACCEPTED}.")
        return prepare(image, path.name)


def prepare(image: Image.Image, name: str) -> LoadedImage:
    """Decode (the first frame of an animation), orient, downscale to MAX_SIDE and encode as PNG."""
    width, height = image.size
    image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: let the decoder skip detail we would throw away
    if image.width * image.height > MAX_PIXELS:  # what decoding would make, known before a pixel is decoded
        raise ImageRejected(f"{name} is too large ({width}×{height}, over {MAX_PIXELS // 1_000_000} megapixels).")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageRejected(f"{name} is damaged and cannot be decoded ({err}).") from None
    mode = "RGBA" if image.has_transparency_data else "RGB"
    if image.mode not in ("RGB", "RGBA", "L", "LA"):  # palette, CMYK, 16-bit: resampling needs plain channels
        image = image.convert(mode)
    # Shrink first: orienting and converting a 200-megapixel image would copy 600 MB each time.
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    image = ImageOps.exif_transpose(image).convert(mode)
    notice = None
    if max(width, height) > MAX_SIDE:
        notice = f"{name} is {width}×{height}; attached at {image.width}×{image.height}."
    return LoadedImage(png_bytes(image), qimage_from_pil(image), name, (width, height), notice)


def load_first_image(paths: Sequence[Path]) -> LoadedImage:
    """The first of `paths` that loads; the notice mentions what else was dropped."""
    failures = []
    for path in paths:
        try:
            loaded = load_image_file(path)
        except ImageRejected as err:
            failures.append(str(err))
            continue
        if len(paths) == 1:
            return loaded
        notes = [f"{len(paths)} files dropped; attached the first image, {path.name}."]
        notes += failures + ([loaded.notice] if loaded.notice else [])
        return LoadedImage(loaded.png, loaded.image, loaded.name, loaded.original_size, " ".join(notes))
    if not failures:
        raise ImageRejected("Nothing to attach.")
    raise ImageRejected(failures[0] if len(failures) == 1 else f"None of the {len(paths)} files is an image "
                        f"Omnivox can read ({ACCEPTED}).")


def load_qimage(image: QImage, name: str) -> LoadedImage:
    if image.isNull() or image.width() == 0:
        raise ImageRejected(f"The {name} is empty.")
    return prepare(pil_from_qimage(image), name)


class ImageInput(QObject):
    """Drops and pastes in; the newest image that loads out. Older loads still running are ignored."""

    attached = Signal(object)  # LoadedImage
    notice = Signal(str)
    busyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.generation = 0

    @staticmethod
    def can_accept(mime: QMimeData) -> bool:
        return mime.hasImage() or any(url.isLocalFile() for url in mime.urls())

    def accept_mime(self, mime: QMimeData, source: str = "dropped image") -> bool:
        """Attach what a drop or the clipboard holds; False when it holds neither files nor an image."""
        paths = [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]
        if paths:
            self.add_paths(paths)
        elif mime.hasImage():
            self.add_qimage(QImage(mime.imageData()), source)
        else:
            return False
        return True

    def add_paths(self, paths: Sequence[Path]) -> None:
        self.load(lambda: load_first_image(list(paths)))

    def add_qimage(self, image: QImage, name: str = "pasted image") -> None:
        self.load(lambda: load_qimage(image, name))

    def load(self, work: Callable[[], LoadedImage]) -> None:
        self.generation += 1
        generation = self.generation
        self.busyChanged.emit(True)
        run_in_background(work, lambda loaded: self.finish(generation, loaded),
                          lambda message: self.finish(generation, message))

    def finish(self, generation: int, outcome: LoadedImage | str) -> None:
        if generation != self.generation:
            return
        self.busyChanged.emit(False)
        if isinstance(outcome, str):
            self.notice.emit(outcome)
            return
        self.attached.emit(outcome)
        if outcome.notice:
            self.notice.emit(outcome.notice)
