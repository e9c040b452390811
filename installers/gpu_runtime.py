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

    @property
    def total_bytes(self) -> int:
        return sum(wheel.size for wheel in self.wheels)

    @property
    def digest(self) -> str:
        """Identifies what is installed: a new app version with a new manifest installs anew."""
        return hashlib.sha256("".join(sorted(wheel.sha256 for wheel in self.wheels)).encode()).hexdigest()

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text(encoding="utf-8"))
        wheels = tuple(Wheel(w["name"], w["url"], w["sha256"], int(w["size"])) for w in data["wheels"])
        if not wheels or any("/" in w.name or "\\" in w.name for w in wheels):
            raise ValueError(f"{path}: not a GPU runtime manifest")
        return cls(data["description"], wheels)

    def write(self, path: Path) -> None:
        data = {"description": self.description, "wheels": [vars(wheel) for wheel in self.wheels]}
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def nvidia_smi() -> str | None:
    """nvidia-smi's GPU list, or None when there is no driver (or a broken one)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def detect_nvidia(query: Callable[[], str | None] = nvidia_smi) -> Gpu | None:
    """The first NVIDIA GPU the driver reports, or None."""
    lines = [line for line in (query() or "").splitlines() if line.strip()]
    if not lines:
        return None
    name, _, driver = lines[0].rpartition(",")
    return Gpu(name.strip(), driver.strip())


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
