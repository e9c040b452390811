"""Renders resources/icons/omnivox.svg into the icon files installers need (Qt's SVG renderer, Pillow).

    python -m installers.render_icons ico  build/omnivox.ico     # Windows (EXE and Inno Setup)
    python -m installers.render_icons icns build/omnivox.icns    # macOS (needs iconutil)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

SVG = Path(__file__).resolve().parents[1] / "resources" / "icons" / "omnivox.svg"
SIZES = (16, 32, 48, 64, 128, 256, 512, 1024)


def render(size: int, path: Path) -> None:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    QSvgRenderer(str(SVG)).render(painter)
    painter.end()
    if not image.save(str(path)):
        raise SystemExit(f"could not write {path}")


def main(kind: str, out: Path) -> int:
    QGuiApplication(["render_icons", "-platform", "offscreen"])
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if kind == "ico":
            render(256, folder / "icon.png")
            Image.open(folder / "icon.png").save(out, sizes=[(s, s) for s in SIZES if s <= 256])
        elif kind == "icns":
            iconset = folder / "omnivox.iconset"
            iconset.mkdir()
            for size in SIZES[:-1]:
                render(size, iconset / f"icon_{size}x{size}.png")
                render(size * 2, iconset / f"icon_{size}x{size}@2x.png")
            subprocess.run(["iconutil", "-c", "icns", str(iconset), "-o", str(out)], check=True)
        else:
            raise SystemExit("usage: python -m installers.render_icons ico|icns OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
