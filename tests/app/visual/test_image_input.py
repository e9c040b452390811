"""Dropped and pasted images: every accepted format, and every way a drop can be wrong."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QTimer, QUrl
from PySide6.QtGui import QColor, QImage

from app.visual.image_input import MAX_SIDE, ImageInput, LoadedImage
from tests.probes import PNG_GREY_1BIT, PNG_RGBA, blank_png

ROOT = Path(__file__).resolve().parents[3]


def write(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, ...] = (220, 40, 40), **save) -> Path:
    Image.new("RGB", size, color).save(path, **save)
    return path


def attach(qtbot, paths: list[Path]) -> tuple[LoadedImage | None, list[str]]:
    """Drop `paths` on an ImageInput; what it attached (or None) and what it told the user."""
    images, notices = ImageInput(), []
    images.notice.connect(notices.append)
    attached: list[LoadedImage] = []
    images.attached.connect(attached.append)
    with qtbot.waitSignal(images.busyChanged, check_params_cb=lambda busy: not busy, timeout=30_000):
        images.add_paths(paths)
    return (attached[0] if attached else None), notices


@pytest.mark.parametrize("suffix", ["png", "jpg", "webp", "bmp", "gif"])
def test_each_accepted_format_is_attached_as_png(qtbot, tmp_path: Path, suffix: str) -> None:
    loaded, notices = attach(qtbot, [write(tmp_path / f"red.{suffix}")])
    assert notices == [] and loaded.name == f"red.{suffix}" and loaded.original_size == (64, 48)
    assert Image.open(io.BytesIO(loaded.png)).format == "PNG"
    red = QColor(loaded.image.pixel(10, 10))
    assert red.red() > 180 and red.green() < 90


def test_a_gif_attaches_its_first_frame(qtbot, tmp_path: Path) -> None:
    frames = [Image.new("RGB", (40, 30), color) for color in ((0, 200, 0), (0, 0, 200))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    loaded, _ = attach(qtbot, [tmp_path / "anim.gif"])
    assert QColor(loaded.image.pixel(5, 5)).green() > 150


def text_file(folder: Path) -> Path:
    (folder / "notes.txt").write_text("hello")
    return folder / "notes.txt"


def empty_file(folder: Path) -> Path:
    (folder / "empty.png").write_bytes(b"")
    return folder / "empty.png"


def a_folder(folder: Path) -> Path:
    (folder / "photos").mkdir()
    return folder / "photos"


def tiff_file(folder: Path) -> Path:
    return write(folder / "scan.tiff", format="TIFF")


@pytest.mark.parametrize(("make", "expected"), [
    (text_file, "notes.txt is not an image"),
    (empty_file, "empty.png is empty (0 bytes)"),
    (a_folder, "photos is a folder"),
    (tiff_file, "scan.tiff is a TIFF image; Omnivox takes PNG"),
])
def test_files_that_cannot_be_attached_are_explained(qtbot, tmp_path: Path, make: Callable[[Path], Path],
                                                     expected: str) -> None:
    loaded, notices = attach(qtbot, [make(tmp_path)])
    assert loaded is None and len(notices) == 1 and notices[0].startswith(expected)


def test_a_truncated_image_is_reported_as_damaged(qtbot, tmp_path: Path) -> None:
    data = write(tmp_path / "whole.png", (300, 200)).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    loaded, notices = attach(qtbot, [tmp_path / "cut.png"])
    assert loaded is None and notices[0].startswith("cut.png is damaged")


def test_many_files_attach_the_first_image_and_say_so(qtbot, tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("not an image")
    paths = [tmp_path / "readme.txt", write(tmp_path / "a.png"), write(tmp_path / "b.jpg")]
    loaded, notices = attach(qtbot, paths)
    assert loaded.name == "a.png"
    assert notices and notices[0].startswith("3 files dropped; attached the first image, a.png.")
    assert "readme.txt is not an image" in notices[0]


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("RGB", (12_500, 8_000), (40, 90, 160)).save(path, compress_level=1)  # 100 megapixels, the most taken
    return path


def test_a_100_megapixel_image_is_downscaled_while_the_ui_keeps_running(qtbot, huge_png: Path) -> None:
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    loaded, notices = attach(qtbot, [huge_png])
    timer.stop()
    assert max(loaded.image.width(), loaded.image.height()) == MAX_SIDE and loaded.original_size == (12_500, 8_000)
    assert notices == [f"huge.png is 12500×8000; attached at 2880×{loaded.image.height()}."]
    longest_gap = max(b - a for a, b in zip(ticks, ticks[1:], strict=False))
    assert len(ticks) > 50 and longest_gap < 0.25  # decoding took seconds; the event loop never stopped for long


PROBE = """
import json, resource, sys
from pathlib import Path
from app.visual.image_input import ImageRejected, load_image_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    outcome = "attached at %dx%d" % load_image_file(Path(sys.argv[1])).image.size().toTuple()
except ImageRejected as err:
    outcome = str(err)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({"outcome": outcome, "grown": grown}))
"""


@pytest.mark.parametrize(("size", "depth_and_colour", "outcome", "most"), [
    ((17_300, 17_300), PNG_GREY_1BIT, "is too large (17300×17300, over 100 megapixels)", 50 << 20),  # 35 KB
    ((20_000, 19_950), PNG_GREY_1BIT, "is too large (20000×19950, over 100 megapixels)", 50 << 20),  # 48 KB
    ((27_930, 27_930), PNG_GREY_1BIT, "is too large (over 100 megapixels)", 50 << 20),  # 95 KB
    ((12_500, 8_000), PNG_RGBA, "attached at 2880x1843", 1 << 30),  # the most it decodes
])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path, size: tuple[int, int],
                                                         depth_and_colour: tuple[int, int], outcome: str,
                                                         most: int) -> None:
    path = blank_png(tmp_path / "probe.png", *size, depth_and_colour)
    result = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert outcome in report["outcome"] and report["grown"] < most, report


def test_a_pasted_image_and_a_dropped_url_go_through_the_same_path(qtbot, tmp_path: Path) -> None:
    images = ImageInput()
    mime = QMimeData()
    picture = QImage(300, 200, QImage.Format.Format_RGB32)
    picture.fill(QColor(10, 200, 30))
    mime.setImageData(picture)
    with qtbot.waitSignal(images.attached, timeout=10_000) as pasted:
        assert images.accept_mime(mime, "pasted image")
    assert pasted.args[0].name == "pasted image" and pasted.args[0].image.size() == picture.size()

    dropped = QMimeData()
    dropped.setUrls([QUrl.fromLocalFile(str(write(tmp_path / "d.png")))])
    assert ImageInput.can_accept(dropped)
    with qtbot.waitSignal(images.attached, timeout=10_000) as attached:
        images.accept_mime(dropped)
    assert attached.args[0].name == "d.png"
    assert not images.accept_mime(QMimeData())  # nothing usable: the caller says so
