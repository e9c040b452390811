"""`python main.py doctor`: what this machine offers Omnivox, for users and bug reports."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from engine.models import ModelStore

CAMERA_PROBES = 4


def gpu_report() -> dict:
    """The GPU as torch and the driver see it: what decides the precision and whether the runtime fits."""
    import torch

    from engine.quantize import native_bf16

    report: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                    "cuda_runtime": torch.version.cuda}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        major, minor = torch.cuda.get_device_capability(0)
        report |= {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
                   "native_bf16": native_bf16(torch.device("cuda", 0)), "torch_archs": torch.cuda.get_arch_list(),
                   "vram_free_gb": round(free / 1e9, 2), "vram_total_gb": round(total / 1e9, 2)}
    report |= driver_report()
    return report


def driver_report() -> dict:
    """The NVIDIA driver's version and the newest CUDA release it runs (nvidia-smi's header), when there is one."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10)
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as err:
        return {"driver": None, "driver_error": str(err)}
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header.stdout)
    return {"driver": query.stdout.strip().splitlines()[0] if query.stdout.strip() else None,
            "driver_cuda": cuda[1] if cuda else None}


def bitsandbytes_report() -> dict:
    """Whether bitsandbytes loaded its CUDA library (else NF4 and int8 cannot run on the GPU) and why not."""
    try:
        import bitsandbytes
        from bitsandbytes import cextension
    except ImportError as err:
        return {"installed": False, "error": str(err)}
    failed = isinstance(cextension.lib, cextension.ErrorHandlerMockBNBNativeLibrary)  # its stand-in for a failed load
    return {"installed": True, "version": bitsandbytes.__version__, "backend": cextension.BNB_BACKEND,
            "cuda_library": cextension.lib.compiled_with_cuda is True,
            "library_error": cextension.lib.error_msg.strip().splitlines()[0] if failed else None}


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
