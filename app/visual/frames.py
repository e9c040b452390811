"""Conversions between numpy / Pillow images and QImage, safe to call from worker threads.

QImage is reentrant (unlike QPixmap), so frames are built and encoded off the GUI thread and
handed over finished. Encoding goes through Pillow, which releases the GIL while it works.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from PySide6.QtGui import QImage

PNG_LEVEL = 1  # zlib level: 3-5x faster than the default for a few percent larger files


def qimage_from_array(pixels: np.ndarray) -> QImage:
    """A QImage owning a copy of an H×W×3 (RGB) or H×W×4 (RGBA) uint8 array."""
    pixels = np.ascontiguousarray(pixels)
    height, width, channels = pixels.shape
    fmt = QImage.Format.Format_RGBA8888 if channels == 4 else QImage.Format.Format_RGB888
    return QImage(pixels.data, width, height, pixels.strides[0], fmt).copy()  # copy: the array may go away


def qimage_from_pil(image: Image.Image) -> QImage:
    return qimage_from_array(np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB")))


def pil_from_qimage(image: QImage) -> Image.Image:
    rgba = image.convertToFormat(QImage.Format.Format_RGBA8888)
    return Image.frombuffer("RGBA", (rgba.width(), rgba.height()), bytes(rgba.constBits()), "raw", "RGBA",
                            rgba.bytesPerLine(), 1)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def png_from_qimage(image: QImage) -> bytes:
    """PNG of a frame, dropping an alpha channel that carries nothing (camera, screen)."""
    pil = pil_from_qimage(image)
    if pil.getextrema()[3] == (255, 255):
        pil = pil.convert("RGB")
    return png_bytes(pil)
