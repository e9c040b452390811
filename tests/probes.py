"""Hostile inputs made on the fly: files that expand past any budget, without the test ever holding
their decoded size in memory, and a small real filesystem that fills up.

A PNG's rows are written through zlib a stripe at a time, so a 780-megapixel picture of 95 KB costs
the test a few megabytes; a long multichannel FLAC is written block by block.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

PNG_GREY_1BIT, PNG_RGBA = (1, 0), (8, 6)  # (bit depth, colour type)
CHANNELS = {0: 1, 6: 4}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(path: Path, width: int, height: int, depth_and_colour: tuple[int, int] = PNG_GREY_1BIT) -> Path:
    """A valid all-zero PNG of any size: tiny on disk, `width × height` pixels once decoded."""
    depth, colour = depth_and_colour
    row = b"\0" + bytes(-(-width * depth * CHANNELS[colour] // 8))  # filter byte "none", then the pixels
    stripe = max(1, (1 << 22) // len(row))  # rows compressed at a time: ~4 MB
    compressor, compressed = zlib.compressobj(9), []
    for top in range(0, height, stripe):
        compressed.append(compressor.compress(row * min(stripe, height - top)))
    compressed.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(compressed))
                     + png_chunk(b"IEND", b""))
    return path


def silent_flac(path: Path, seconds: float, rate: int, channels: int) -> Path:
    """Silence as FLAC, written ten seconds at a time: a few hundred KB for minutes of 8-channel audio."""
    block = np.zeros((rate * 10, channels), dtype=np.int16)
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16",
                             compression_level=0.0) as out:
        left = round(seconds * rate)
        while left > 0:
            out.write(block[:left])
            left -= len(block)
    return path


@contextlib.contextmanager
def small_filesystem(mount_point: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` (e.g. "300k") at `mount_point`, so writes fail with ENOSPC as on a full disk;
    the test is skipped where mounting is not allowed (not root)."""
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
