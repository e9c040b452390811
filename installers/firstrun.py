"""What the frozen app does about the GPU before it starts (used by installers/launcher.py).

- No NVIDIA driver: the bundled CPU build runs, with a notice saying so and how to change it.
- A GPU and the CUDA runtime installed: the runtime is activated in every process importing torch.
- A GPU without the runtime: opening the window offers the download (progress, cancel; a cancelled
  or failed download falls back to the CPU and resumes next time); headless commands say how to
  get it (`omnivox --gpu-runtime install`).
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from installers import gpu_runtime
from installers.download import DownloadError
from installers.gpu_runtime import Gpu, Manifest

CPU_NOTICE = ("No NVIDIA GPU driver found: Omnivox runs on the CPU, which is slow. "
              "Install the NVIDIA driver and restart Omnivox to use the GPU.")
STATE_NAME = "first-run.json"


@dataclass(frozen=True)
class Plan:
    action: Literal["gpu", "install", "cpu"]  # the installed runtime / offer the download / the bundled CPU torch
    notice: str | None = None


def plan(gpu: Gpu | None, manifest: Manifest | None, root: Path) -> Plan:
    if gpu is None:
        return Plan("cpu", CPU_NOTICE)
    if gpu_runtime.installed(root, manifest):
        return Plan("gpu")
    if manifest is None:
        return Plan("cpu", f"{gpu.name} found, but this build of Omnivox has no GPU runtime to download: "
                           "running on the CPU. Install the full (offline) build to use the GPU.")
    return Plan("install", f"{gpu.name} found. Omnivox downloads the CUDA build of torch and bitsandbytes once "
                           f"({manifest.total_bytes / 1e9:.1f} GB) to run on it.")


def install_dir() -> Path:
    return Path(sys.executable).resolve().parent


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("Omnivox", appauthor=False))


def bundled_manifest() -> Manifest | None:
    """The manifest the build put beside the app, or None when the build had none."""
    path = Path(getattr(sys, "_MEIPASS", install_dir())) / gpu_runtime.MANIFEST_NAME
    try:
        return Manifest.read(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as err:  # a damaged install must still start, on the CPU
        print(f"note: ignoring the GPU runtime manifest {path}: {err}", file=sys.stderr)
        return None


def current_plan() -> tuple[Plan, Manifest | None, Path]:
    manifest = bundled_manifest()
    root = gpu_runtime.runtime_root(install_dir(), data_dir())
    return plan(gpu_runtime.detect_nvidia(), manifest, root), manifest, root


def activate_for_engine() -> None:
    """Before torch is imported: the CUDA runtime when it is there and usable, else a notice."""
    decided, _, root = current_plan()
    if decided.action == "gpu":
        gpu_runtime.activate(root)
    elif decided.action == "install":
        print(f"note: {decided.notice} Run `omnivox --gpu-runtime install`; until then it runs on the CPU.",
              file=sys.stderr)


def opens_window(argv: list[str]) -> bool:
    from main import build_gui_parser  # only the window's options: no engine, no torch

    options, rest = build_gui_parser().parse_known_args(argv)
    return not rest and not getattr(options, "self_test", False)


def first_run_for_window() -> None:
    decided, manifest, root = current_plan()
    if decided.action == "install":
        assert manifest is not None
        from installers.firstrun_dialog import run_install_dialog

        run_install_dialog(manifest, root, decided.notice or "")
    elif decided.notice is not None and not notice_shown(decided.notice):
        print(f"note: {decided.notice}", file=sys.stderr)
        from installers.firstrun_dialog import show_notice

        show_notice(decided.notice)


def notice_shown(notice: str) -> bool:
    """True when this notice was shown at an earlier start; records it otherwise (shown once per install)."""
    path = data_dir() / STATE_NAME
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    if state.get("notice") == notice:
        return True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"notice": notice}), encoding="utf-8")
    except OSError:  # an unwritable data folder: the notice shows again next time, nothing worse
        pass
    return False


def command(argv: list[str]) -> int:
    """`omnivox --gpu-runtime status|install|remove`."""
    action = argv[0] if argv else "status"
    decided, manifest, root = current_plan()
    if action == "status":
        state = "installed" if gpu_runtime.installed(root) else "not installed"
        print(f"GPU runtime: {state} ({root}); {decided.notice or 'the GPU is used'}")
        return 0
    if action == "remove":
        gpu_runtime.remove(root)
        print(f"removed {root}")
        return 0
    if action != "install":
        print(f"error: unknown --gpu-runtime action {action!r} (status, install or remove)", file=sys.stderr)
        return 2
    if manifest is None:
        print("error: this build has no GPU runtime manifest", file=sys.stderr)
        return 1
    cancel = threading.Event()

    def show(done: int, total: int) -> None:
        print(f"\rGPU runtime: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB", end="", file=sys.stderr, flush=True)

    try:
        gpu_runtime.install(manifest, root, show, cancel)
    except (DownloadError, OSError, ValueError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nerror: interrupted; run again to resume", file=sys.stderr)
        return 130
    print(f"\nGPU runtime installed in {root}", file=sys.stderr)
    return 0

