"""`python main.py doctor`: what this machine offers Omnivox, for users and bug reports."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from engine.models import ModelStore

CAMERA_PROBES = 4


def gpu_report() -> dict:
    import torch

    report: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                    "cuda_runtime": torch.version.cuda}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        report |= {"gpu": torch.cuda.get_device_name(0), "vram_free_gb": round(free / 1e9, 2),
                   "vram_total_gb": round(total / 1e9, 2)}
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10)
        report["driver"] = result.stdout.strip() or None
    return report


def bitsandbytes_report() -> dict:
    try:
        import bitsandbytes
        import torch
    except ImportError as err:
        return {"installed": False, "error": str(err)}
    return {"installed": True, "version": bitsandbytes.__version__,
            "backend": "cuda" if torch.cuda.is_available() else "cpu"}


def audio_report() -> dict:
    try:
        import sounddevice
    except OSError as err:  # PortAudio library missing
        return {"error": f"PortAudio is not available: {err}"}
    devices = sounddevice.query_devices()
    return {
        "inputs": [d["name"] for d in devices if d["max_input_channels"] > 0],
        "outputs": [d["name"] for d in devices if d["max_output_channels"] > 0],
    }


def camera_report() -> list[int]:
    """Indices of cameras that open (V4L2 devices on Linux, probed only when they exist)."""
    import cv2

    found = []
    for index in range(CAMERA_PROBES):
        if sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{index}"):
            continue
        capture = cv2.VideoCapture(index)
        with contextlib.suppress(Exception):
            if capture.isOpened():
                found.append(index)
        capture.release()
    return found


def doctor(data_dir: Path) -> dict:
    store = ModelStore(data_dir)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": gpu_report(),
        "bitsandbytes": bitsandbytes_report(),
        "audio": audio_report(),
        "cameras": camera_report(),
        "data_dir": str(data_dir),
        "models": {name: record["folder"] for name, record in store.registry().items()},
    }
