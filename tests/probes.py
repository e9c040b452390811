"""Hostile input files made on the fly, without ever holding their decoded size in memory.

A PNG's rows are written through zlib a stripe at a time, so a 780-megapixel picture of 95 KB costs
the test a few megabytes; a long multichannel FLAC is written block by block.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
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
