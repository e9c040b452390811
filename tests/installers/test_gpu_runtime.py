"""The first-run GPU runtime: detection (injected; there is no NVIDIA GPU here), the plan with its CPU
fallback, installation from a loopback server with resume and checksums, and activation."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from installers import gpu_runtime
from installers.download import DownloadCancelled, DownloadError
from installers.firstrun import CPU_NOTICE, plan
from installers.gpu_runtime import Gpu, Manifest, Wheel
from tests.installers.http_server import Behaviour, LoopbackServer

ROOT = Path(__file__).resolve().parents[2]


def wheel_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, (data, mode) in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


# Two wheels shaped like the real ones: a package that also exists in the app (it must win), and a
# data folder with an executable, as nvidia-* wheels carry libraries and tools.
WHEELS = {
    "platformdirs-99.0-py3-none-any.whl": wheel_bytes({
        "platformdirs/__init__.py": (b"__version__ = 'from the GPU runtime'\n" + b"# padding\n" * 300_000, 0o644),
        "platformdirs-99.0.dist-info/METADATA": (b"Name: platformdirs\nVersion: 99.0\n", 0o644),
    }),
    "nvidia_probe-1.0-py3-none-manylinux_2_28_x86_64.whl": wheel_bytes({
        "nvidia_probe/__init__.py": (b"", 0o644),
        "nvidia_probe/bin/ptxas": (b"#!/bin/sh\necho ok\n", 0o755),
    }),
}


def manifest_for(server: LoopbackServer, files: dict[str, bytes]) -> Manifest:
    return Manifest("test runtime", tuple(Wheel(name, server.url(name), hashlib.sha256(data).hexdigest(), len(data))
                                          for name, data in files.items()))


@pytest.mark.parametrize(("output", "expected"), [
    (None, None),  # no driver: nvidia-smi missing or failing
    ("", None),  # a driver without a GPU
    ("NVIDIA GeForce RTX 4070, 560.35.03\n", Gpu("NVIDIA GeForce RTX 4070", "560.35.03")),
    ("NVIDIA A100-SXM4-80GB, 550.54.15\nNVIDIA A100-SXM4-80GB, 550.54.15\n", Gpu("NVIDIA A100-SXM4-80GB", "550.54.15")),
])
def test_detection(output: str | None, expected: Gpu | None) -> None:
    assert gpu_runtime.detect_nvidia(lambda: output) == expected


def test_this_machine_has_no_nvidia_driver() -> None:
    assert gpu_runtime.detect_nvidia() is None


def test_no_driver_falls_back_to_the_cpu_with_a_notice(tmp_path: Path) -> None:
    decided = plan(None, (Manifest("m", (Wheel("a.whl", "http://x/a.whl", "0" * 64, 1),)),), tmp_path)
    assert decided.action == "cpu"
    assert decided.notice == CPU_NOTICE
    assert "NVIDIA driver" in CPU_NOTICE and "CPU" in CPU_NOTICE


def test_a_gpu_without_the_runtime_is_offered_the_download(tmp_path: Path) -> None:
    manifest = Manifest("m", (Wheel("a.whl", "http://x/a.whl", "0" * 64, 2_500_000_000),))
    decided = plan(Gpu("NVIDIA GeForce RTX 3060", "550"), (manifest,), tmp_path)
    assert decided.action == "install"
    assert "RTX 3060" in decided.notice and "2.5 GB" in decided.notice


def test_a_build_without_a_manifest_runs_on_the_cpu_and_says_why(tmp_path: Path) -> None:
    decided = plan(Gpu("NVIDIA GeForce RTX 3060", "550"), (), tmp_path)
    assert decided.action == "cpu"
    assert "no GPU runtime" in decided.notice


def test_runtime_goes_beside_a_writable_app_else_to_the_data_folder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    app, data = tmp_path / "app", tmp_path / "data"
    app.mkdir()
    assert gpu_runtime.runtime_root(app, data) == app / "gpu-runtime"
    # root may write anywhere, so an unwritable folder is what os.access reports for /opt as a user
    monkeypatch.setattr(gpu_runtime.os, "access", lambda path, mode: False)
    assert gpu_runtime.runtime_root(app, data) == data / "gpu-runtime"


def test_install_resume_and_activate(tmp_path: Path) -> None:
    behaviour = Behaviour(files=dict(WHEELS))
    root = tmp_path / "gpu runtime ü"
    cancel = threading.Event()
    seen: list[int] = []

    def cancel_midway(done: int, total: int) -> None:
        seen.append(done)
        if done > total // 4:
            cancel.set()

    with LoopbackServer(behaviour) as server:
        manifest = manifest_for(server, WHEELS)
        with pytest.raises(DownloadCancelled):  # the user pressed Cancel: CPU this time
            gpu_runtime.install(manifest, root, cancel_midway, cancel)
        assert not gpu_runtime.installed(root)
        assert not gpu_runtime.activate(root)
        gpu_runtime.install(manifest, root)  # the next start resumes
    first_wheel = next(iter(WHEELS))
    ranges = [ranged for path, ranged in behaviour.requests if path == f"/{first_wheel}"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert gpu_runtime.installed(root, manifest)
    assert not gpu_runtime.installed(root, Manifest("newer build", (Wheel("x.whl", "u", "f" * 64, 1),)))
    assert not (root / "downloads").exists()
    assert (root / "site/nvidia_probe/bin/ptxas").stat().st_mode & 0o111
    assert json.loads((root / gpu_runtime.MARKER_NAME).read_text())["digest"] == manifest.digest

    # A fresh interpreter, as the engine process: the runtime's package wins over the installed one.
    probe = ("import sys; sys.path.insert(0, sys.argv[2]); from installers import gpu_runtime;"
             "from pathlib import Path; assert gpu_runtime.activate(Path(sys.argv[1]));"
             "import platformdirs, nvidia_probe;"
             "print(platformdirs.__version__); print(nvidia_probe.__file__)")
    result = subprocess.run([sys.executable, "-c", probe, str(root), str(ROOT)], capture_output=True, text=True,
                            check=True)
    version, location = result.stdout.splitlines()
    assert version == "from the GPU runtime"
    assert Path(location).is_relative_to(root / "site")


def test_a_corrupt_wheel_is_not_installed(tmp_path: Path) -> None:
    files = dict(WHEELS)
    with LoopbackServer(Behaviour(files=files)) as server:
        manifest = manifest_for(server, files)
        files[next(iter(files))] = b"tampered" + files[next(iter(files))][8:]  # same size, other bytes
        with pytest.raises(DownloadError, match="checksum mismatch"):
            gpu_runtime.install(manifest, tmp_path)
    assert not gpu_runtime.installed(tmp_path)


def test_a_wheel_escaping_its_folder_is_refused(tmp_path: Path) -> None:
    files = {"evil-1.0-py3-none-any.whl": wheel_bytes({"../../outside.py": (b"", 0o644)})}
    with LoopbackServer(Behaviour(files=files)) as server, pytest.raises(ValueError, match="unsafe path"):
        gpu_runtime.install(manifest_for(server, files), tmp_path / "root")
    assert not (tmp_path / "outside.py").exists()
    assert not gpu_runtime.installed(tmp_path / "root")


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = Manifest("torch (CUDA)", (Wheel("a.whl", "https://x/a.whl", "ab" * 32, 10),
                                         Wheel("b.whl", "https://x/b.whl", "cd" * 32, 20)))
    manifest.write(tmp_path / "m.json")
    assert Manifest.read(tmp_path / "m.json") == manifest
    assert manifest.total_bytes == 30


def test_progress_covers_all_wheels_and_ends_at_the_total(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    with LoopbackServer(Behaviour(files=dict(WHEELS))) as server:
        manifest = manifest_for(server, WHEELS)
        gpu_runtime.install(manifest, tmp_path, lambda done, total: seen.append((done, total)))
    assert seen[-1] == (manifest.total_bytes, manifest.total_bytes)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
