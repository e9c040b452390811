"""A generated video file: what the camera tests and the GUI benchmark use in place of a webcam."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_test_video(path: Path, frames: int = 60, fps: float = 30.0, size: tuple[int, int] = (320, 240)) -> Path:
    """Motion-JPEG AVI of a bright square sliding over a gradient; frame i has its index in the red channel."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    for index in range(frames):
        frame = gradient.copy()
        x = (index * 7) % (width - 40)
        frame[height // 2 - 20: height // 2 + 20, x: x + 40] = (255, 255, 255)  # BGR
        frame[:8, :8] = (0, 0, index % 256)
        writer.write(frame)
    writer.release()
    return path
