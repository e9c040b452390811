"""The CUDA runtime of the small installer: detection, installation and activation. Qt-free.

The CPU installer bundles the CPU build of torch. When an NVIDIA GPU is present, the CUDA build of
torch, its nvidia-* libraries and bitsandbytes are fetched once (a manifest of wheel URLs with
SHA-256 sums, made at build time by installers/gpu_manifest.py), unpacked into a `gpu-runtime/`
folder, and put ahead of the bundled packages in every process that imports torch.

Layout of a runtime folder:
    downloads/       wheels (and `.part` files of interrupted downloads) until unpacked
    site/            the unpacked packages, importable
    installed.json   written last: the manifest digest it was built from (no file, no runtime)
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from installers.download import Progress, download

MANIFEST_NAME = "gpu-runtime.json"
MARKER_NAME = "installed.json"


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str
    capability: tuple[int, int] | None = None  # None: a driver too old to report it


@dataclass(frozen=True)
class Wheel:
    name: str  # the wheel's file name
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    description: str  # e.g. "torch 2.13.0 (CUDA 13) + bitsandbytes 0.50.2 for CPython 3.11 on Linux x86-64"
    wheels: tuple[Wheel, ...]
    cuda: str = ""  # the CUDA release the torch build carries, e.g. "12.6"
    min_driver: str = ""  # the oldest NVIDIA driver that runs it, e.g. "525.60.13"
    archs: tuple[str, ...] = ()  # GPU architectures it has kernels for, e.g. ("sm_75", "sm_80")

    @property
    def total_bytes(self) -> int:
        return sum(wheel.size for wheel in self.wheels)

    @property
    def digest(self) -> str:
        """Identifies what is installed: a new app version with a new manifest installs anew."""
        return hashlib.sha256("".join(sorted(wheel.sha256 for wheel in self.wheels)).encode()).hexdigest()

    @classmethod
    def read(cls, path: Path) -> Manifest:
        runtimes = read_manifests(path)
        if len(runtimes) != 1:
            raise ValueError(f"{path}: holds {len(runtimes)} GPU runtimes, not one")
        return runtimes[0]

    @classmethod
    def from_dict(cls, data: dict, path: Path) -> Manifest:
        wheels = tuple(Wheel(w["name"], w["url"], w["sha256"], int(w["size"])) for w in data["wheels"])
        if not wheels or any("/" in w.name or "\\" in w.name for w in wheels):
            raise ValueError(f"{path}: not a GPU runtime manifest")
        return cls(data["description"], wheels, data.get("cuda", ""), data.get("min_driver", ""),
                   tuple(data.get("archs", ())))

    def to_dict(self) -> dict:
        return {"description": self.description, "cuda": self.cuda, "min_driver": self.min_driver,
                "archs": list(self.archs), "wheels": [vars(wheel) for wheel in self.wheels]}

    def write(self, path: Path) -> None:
        write_manifests(path, (self,))


def read_manifests(path: Path) -> tuple[Manifest, ...]:
    """The runtimes a build offers, in order of preference (a file of one runtime is read too)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    runtimes = data.get("runtimes", [data])
    return tuple(Manifest.from_dict(runtime, path) for runtime in runtimes)


def write_manifests(path: Path, runtimes: Sequence[Manifest]) -> None:
    path.write_text(json.dumps({"runtimes": [runtime.to_dict() for runtime in runtimes]}, indent=1),
                    encoding="utf-8")


# ---- which runtime this GPU can run ---------------------------------------------------------------

ARCH = re.compile(r"^sm_(\d+)(\d)[a-z]?$")  # sm_86 → 8.6, sm_120 → 12.0, sm_90a → 9.0


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def arch_capability(arch: str) -> tuple[int, int] | None:
    match = ARCH.match(arch)
    return (int(match[1]), int(match[2])) if match else None  # compute_XX (PTX) entries: None


def runs_on(capability: tuple[int, int], archs: Sequence[str]) -> bool:
    """Whether kernels built for `archs` run on a GPU of `capability`: a cubin runs on its own major
    generation at the same or a higher minor version (sm_80 code runs on an 8.6 GPU, not on 7.5 or 9.0)."""
    built = [arch_capability(arch) for arch in archs]
    return any(cap is not None and cap[0] == capability[0] and cap[1] <= capability[1] for cap in built)


def choose(gpu: Gpu, runtimes: Sequence[Manifest]) -> Manifest | str:
    """The first runtime this GPU and its driver can run, or one line on why none can."""
    for runtime in runtimes:
        driver_ok = not runtime.min_driver or version_key(gpu.driver) >= version_key(runtime.min_driver)
        arch_ok = gpu.capability is None or not runtime.archs or runs_on(gpu.capability, runtime.archs)
        if driver_ok and arch_ok:
            return runtime
    if gpu.capability is not None and not any(runs_on(gpu.capability, runtime.archs) for runtime in runtimes
                                              if runtime.archs):
        oldest = min(cap for runtime in runtimes for arch in runtime.archs if (cap := arch_capability(arch)))
        return (f"{gpu.name} (compute capability {gpu.capability[0]}.{gpu.capability[1]}) is too old for "
                f"Omnivox's GPU runtime, which needs {oldest[0]}.{oldest[1]} or newer: Omnivox runs on the CPU.")
    needed = min((runtime.min_driver for runtime in runtimes if runtime.min_driver), key=version_key)
    return (f"{gpu.name} found, but its NVIDIA driver {gpu.driver} is older than {needed}, the oldest that "
            "Omnivox's GPU runtime runs on: update the driver to use the GPU; until then Omnivox runs on the CPU.")


def nvidia_smi() -> str | None:
    """nvidia-smi's GPU list (name, driver, compute capability), or None when there is no driver (or a
    broken one). Drivers before 510 do not know the compute_cap field: they are asked without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    for fields in ("name,driver_version,compute_cap", "name,driver_version"):
        try:
            result = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        if result.returncode == 0:
            return result.stdout
    return None


def detect_nvidia(query: Callable[[], str | None] = nvidia_smi) -> Gpu | None:
    """The first NVIDIA GPU the driver reports, or None."""
    lines = [line for line in (query() or "").splitlines() if line.strip()]
    if not lines:
        return None
    fields = [field.strip() for field in lines[0].split(",")]
    capability = re.fullmatch(r"(\d+)\.(\d+)", fields[-1])
    if capability and len(fields) >= 3:  # a GPU name may itself hold commas: count fields from the right
        return Gpu(",".join(fields[:-2]), fields[-2], (int(capability[1]), int(capability[2])))
    return Gpu(",".join(fields[:-1]), fields[-1])


def check_active_runtime() -> str | None:
    """In a fresh process that activated the runtime: None when its torch runs on this GPU, else why not.

    The manifest's driver and architecture requirements are checked before the download; this asks the
    downloaded torch itself, so a GPU it has no kernels for never meets "no kernel image is available"."""
    import torch

    if not torch.cuda.is_available():
        return (f"the GPU runtime (torch {torch.__version__}, CUDA {torch.version.cuda}) cannot use the GPU; "
                "update the NVIDIA driver. Omnivox runs on the CPU.")
    capability, archs = torch.cuda.get_device_capability(0), torch.cuda.get_arch_list()
    if not runs_on(capability, archs):
        return (f"{torch.cuda.get_device_name(0)} (compute capability {capability[0]}.{capability[1]}) is not "
                f"among the GPU runtime's architectures ({' '.join(archs)}): Omnivox runs on the CPU.")
    return None


def verify(root: Path, command: Sequence[str]) -> str | None:
    """Run `command` (a fresh process printing `check_active_runtime` as JSON), record its answer beside the
    runtime and return it. A runtime is used only once this has found no problem."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        problem = json.loads(result.stdout.strip().splitlines()[-1])["problem"]
    except (OSError, subprocess.SubprocessError) as err:
        problem = f"the GPU runtime's check could not run ({err}): Omnivox runs on the CPU."
    except (ValueError, KeyError, IndexError):  # it crashed: torch itself could not load
        reason = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        problem = f"the GPU runtime failed its check ({reason}): Omnivox runs on the CPU."
    marker = json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    marker |= {"checked": True, "problem": problem}
    (root / MARKER_NAME).write_text(json.dumps(marker), encoding="utf-8")
    return problem


def check_result(root: Path) -> tuple[bool, str | None]:
    """(whether `verify` ran on this runtime, the problem it found)."""
    try:
        marker = json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, None
    return bool(marker.get("checked")), marker.get("problem")


def runtime_root(install_dir: Path, data_dir: Path) -> Path:
    """Inside the app's own folder when it is writable (a user's unpacked .tar.gz), otherwise in
    the user data folder (a .deb under /opt, or any read-only install)."""
    return install_dir / "gpu-runtime" if os.access(install_dir, os.W_OK) else data_dir / "gpu-runtime"


def installed(root: Path, manifest: Manifest | None = None) -> bool:
    """A complete runtime is there (of this manifest's build, when one is given)."""
    try:
        marker = json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (root / "site").is_dir() and (manifest is None or marker.get("digest") == manifest.digest)


def install(manifest: Manifest, root: Path, progress: Progress | None = None,
            cancel: threading.Event | None = None) -> None:
    """Download every wheel (resuming), check it, unpack all of them, then mark the runtime complete.

    Unpacking goes to `site.new` and is renamed into place, so an interrupted install never leaves a
    half-unpacked runtime that would be imported."""
    downloads = root / "downloads"
    done_before = 0
    for wheel in manifest.wheels:
        def overall(done: int, _size: int, base: int = done_before) -> None:
            if progress is not None:
                progress(base + done, manifest.total_bytes)

        download(wheel.url, downloads / wheel.name, wheel.sha256, wheel.size, overall, cancel)
        done_before += wheel.size
        overall(0, wheel.size, done_before)  # also when the wheel was already there from an earlier run
    staging = root / "site.new"
    shutil.rmtree(staging, ignore_errors=True)
    for wheel in manifest.wheels:
        with zipfile.ZipFile(downloads / wheel.name) as archive:
            unpack(archive, staging)
    (root / MARKER_NAME).unlink(missing_ok=True)
    shutil.rmtree(root / "site", ignore_errors=True)
    staging.rename(root / "site")
    (root / MARKER_NAME).write_text(json.dumps({"digest": manifest.digest, "description": manifest.description}),
                                    encoding="utf-8")
    shutil.rmtree(downloads, ignore_errors=True)  # the wheels are unpacked; keeping them doubles the disk use


def unpack(archive: zipfile.ZipFile, target: Path) -> None:
    """Extract a wheel, refusing members that would land outside `target`; keep executable bits."""
    base = target.resolve()
    for member in archive.infolist():
        path = (target / member.filename).resolve()
        if not path.is_relative_to(base):
            raise ValueError(f"{archive.filename}: unsafe path {member.filename!r}")
        archive.extract(member, target)
        mode = member.external_attr >> 16
        if mode & 0o111:
            path.chmod(mode & 0o777)


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


class RuntimeFinder(importlib.abc.MetaPathFinder):
    """Imports the runtime's top-level packages from its folder, ahead of the frozen app's archive.

    sys.path alone is not enough: PyInstaller's importer sits in sys.meta_path before the path
    finder and would keep serving the bundled CPU torch."""

    def __init__(self, site: Path) -> None:
        self.site = str(site)
        self.packages = frozenset(top_level_names(site))

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: object = None):  # noqa: ANN201
        if fullname.partition(".")[0] not in self.packages:
            return None
        search = [self.site] if "." not in fullname else path
        return importlib.machinery.PathFinder.find_spec(fullname, search)


def top_level_names(site: Path) -> list[str]:
    names = []
    for entry in site.iterdir():
        if entry.is_dir() and not entry.name.endswith((".dist-info", ".data")) and entry.name != "__pycache__":
            names.append(entry.name)
        elif entry.suffix == ".py" or entry.suffix == ".so":
            names.append(entry.name.split(".")[0])
    return names


def activate(root: Path) -> bool:
    """Make the installed runtime's packages win every later import; False when none is installed."""
    if not installed(root):
        return False
    site = root / "site"
    if not any(isinstance(finder, RuntimeFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, RuntimeFinder(site))
        sys.path.insert(0, str(site))  # torch looks for the nvidia-* libraries along sys.path
    return True
