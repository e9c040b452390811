"""What the frozen app does about the GPU before it starts (used by installers/launcher.py).

- No NVIDIA driver: the bundled CPU build runs, with a notice saying so and how to change it.
- A GPU and the CUDA runtime installed: the runtime is activated in every process importing torch.
- A GPU without the runtime: opening the window offers the download (progress, cancel; a cancelled
  or failed download falls back to the CPU and resumes next time); headless commands say how to
  get it (`omnivox --gpu-runtime install`).

The build may offer several runtimes (e.g. the current CUDA build and one for older drivers and GPUs);
the first whose driver and architecture requirements this GPU meets is the one offered, and a GPU no
runtime suits is told so before any download. After installing, a fresh process imports the runtime's
torch and checks the GPU against `torch.cuda.get_arch_list()`; the runtime is used only if that passes.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
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
    # the checked runtime / check the installed runtime first / offer the download / the bundled CPU torch
    action: Literal["gpu", "check", "install", "cpu"]
    notice: str | None = None
    runtime: Manifest | None = None  # the runtime that suits this GPU


def plan(gpu: Gpu | None, runtimes: Sequence[Manifest], root: Path) -> Plan:
    if gpu is None:
        return Plan("cpu", CPU_NOTICE)
    if not runtimes:
        return Plan("cpu", f"{gpu.name} found, but this build of Omnivox has no GPU runtime to download: "
                           "running on the CPU. Install the full (offline) build to use the GPU.")
    chosen = gpu_runtime.choose(gpu, runtimes)
    if isinstance(chosen, str):
        return Plan("cpu", chosen)
    if gpu_runtime.installed(root, chosen):
        checked, problem = gpu_runtime.check_result(root)
        if problem is not None:
            return Plan("cpu", problem, chosen)
        return Plan("gpu" if checked else "check", None, chosen)
    return Plan("install", f"{gpu.name} found. Omnivox downloads the CUDA build of torch and bitsandbytes once "
                           f"({chosen.total_bytes / 1e9:.1f} GB) to run on it.", chosen)


def install_dir() -> Path:
    return Path(sys.executable).resolve().parent


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("Omnivox", appauthor=False))


def bundled_manifests() -> tuple[Manifest, ...]:
    """The runtimes the build put beside the app, preferred first; none when the build had none."""
    path = Path(getattr(sys, "_MEIPASS", install_dir())) / gpu_runtime.MANIFEST_NAME
    try:
        return gpu_runtime.read_manifests(path)
    except FileNotFoundError:
        return ()
    except (OSError, ValueError, KeyError) as err:  # a damaged install must still start, on the CPU
        print(f"note: ignoring the GPU runtime manifest {path}: {err}", file=sys.stderr)
        return ()


def check_command(root: Path) -> list[str]:
    """A fresh process that activates the runtime in `root` and reports `check_active_runtime`."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--gpu-runtime", "check", str(root)]
    project = str(Path(__file__).resolve().parents[1])  # from a source checkout, whatever the working folder
    start = f"import sys; sys.path.insert(0, {project!r}); from installers.launcher import main; sys.exit(main())"
    return [sys.executable, "-c", start, "--gpu-runtime", "check", str(root)]


def current_plan() -> tuple[Plan, Path]:
    """What to do on this start; an installed runtime not yet checked on this GPU is checked first."""
    gpu, runtimes = gpu_runtime.detect_nvidia(), bundled_manifests()
    root = gpu_runtime.runtime_root(install_dir(), data_dir())
    decided = plan(gpu, runtimes, root)
    if decided.action == "check":
        gpu_runtime.verify(root, check_command(root))
        decided = plan(gpu, runtimes, root)
    return decided, root


def activate_for_engine() -> None:
    """Before torch is imported: the CUDA runtime when it is there and usable, else a notice."""
    decided, root = current_plan()
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
    decided, root = current_plan()
    if decided.action == "install":
        assert decided.runtime is not None
        from installers.firstrun_dialog import run_install_dialog, show_notice

        if run_install_dialog(decided.runtime, root, decided.notice or ""):
            problem = gpu_runtime.verify(root, check_command(root))
            if problem is not None:
                show_notice(problem)
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
    """`omnivox --gpu-runtime status|install|remove` (and `check ROOT`, which the app runs itself)."""
    action = argv[0] if argv else "status"
    if action == "check" and len(argv) == 2:  # the fresh process of gpu_runtime.verify
        if not gpu_runtime.activate(Path(argv[1])):
            print(json.dumps({"problem": "the GPU runtime is not installed completely: install it again."}))
            return 1
        problem = gpu_runtime.check_active_runtime()
        print(json.dumps({"problem": problem, "torch": sys.modules["torch"].__file__}))  # where it came from
        return 0
    decided, root = current_plan()
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
    if decided.runtime is None:
        print(f"error: {decided.notice or 'this build has no GPU runtime manifest'}", file=sys.stderr)
        return 1
    manifest = decided.runtime
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
    problem = gpu_runtime.verify(root, check_command(root))
    if problem is not None:
        print(f"\nerror: {problem}", file=sys.stderr)
        return 1
    print(f"\nGPU runtime installed in {root}", file=sys.stderr)
    return 0

