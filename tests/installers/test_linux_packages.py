"""The built Linux packages, installed the way a user gets them, run the self-test and open the window.

The .deb is unpacked with dpkg-deb into a fresh folder whose path has spaces and non-ASCII
characters, and run as an unprivileged user for whom the install folder is read-only (as /opt is),
so settings, history and any GPU runtime must go to the user data folder. The .tar.gz is unpacked
into another such folder and runs as its owner. Set OMNIVOX_DEB and OMNIVOX_TARBALL to test built
artifacts instead of building (the build takes about five minutes on two cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.gui import SHOWN_MARKER
from engine.protocol import PORT_ANNOUNCEMENT, TOKEN_ENV, RespondRequest, encode_frame, hello_frame, read_frame
from installers.download import CHUNK
from installers.gpu_runtime import MANIFEST_NAME, Manifest, Wheel
from tests.installers.http_server import Behaviour, LoopbackServer
from tests.signals import tone

pytestmark = [pytest.mark.slow, pytest.mark.installer]

ROOT = Path(__file__).resolve().parents[2]
ODD_NAME = "Omnivox tëst ü 日本"
NOBODY = 65534
DEB_SIZE_GOAL = 700_000_000
WINDOW_GOAL_SECONDS = 3.0


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if os.environ.get("OMNIVOX_DEB") and os.environ.get("OMNIVOX_TARBALL"):
        return {"deb": os.environ["OMNIVOX_DEB"], "tar": os.environ["OMNIVOX_TARBALL"]}
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(["bash", "installers/build_linux.sh"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMNIVOX_DIST": str(out)}, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    record({"build": summary})
    return summary


@pytest.fixture(scope="module")
def shared_folder() -> Iterator[Path]:
    """A folder every user may enter (pytest's own temporary folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="omnivox-installer-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def deb_install(artifacts: dict, shared_folder: Path) -> Path:
    root = shared_folder / ODD_NAME / "root"
    root.mkdir(parents=True)
    (shared_folder / ODD_NAME).chmod(0o755)
    subprocess.run(["dpkg-deb", "-x", artifacts["deb"], str(root)], check=True)
    if os.getuid() != 0:  # as dpkg would leave it for a user: /opt is not theirs to write
        subprocess.run(["chmod", "-R", "a-w", str(root / "opt")], check=True)
    return root


def record(measurements: dict) -> None:
    """Adds to build/installer-measurements.json, where CI and the README's numbers come from."""
    path = ROOT / "build" / "installer-measurements.json"
    path.parent.mkdir(exist_ok=True)
    known = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**known, **measurements}, indent=1))


def as_user(home: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix and environment for a user with a fresh home, to whom the install is read-only:
    `nobody` when the tests run as root (as the installing admin), else the current user."""
    home.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("XDG_")}
    env.update(HOME=str(home), LANG="C.UTF-8")
    if os.getuid() != 0:
        return [], env
    os.chown(home, NOBODY, NOBODY)
    if os.environ.get("XAUTHORITY"):  # xvfb-run's cookie is readable by root only: give the user a copy
        cookie = home / ".Xauthority"
        shutil.copyfile(os.environ["XAUTHORITY"], cookie)
        os.chown(cookie, NOBODY, NOBODY)
        env["XAUTHORITY"] = str(cookie)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"], env


def test_deb_metadata_and_desktop_integration(artifacts: dict) -> None:
    info = subprocess.run(["dpkg-deb", "-f", artifacts["deb"], "Package", "Architecture", "Depends"],
                          capture_output=True, text=True, check=True).stdout
    assert "Package: omnivox" in info and "Architecture: amd64" in info and "libxcb-cursor0" in info
    listing = subprocess.run(["dpkg-deb", "-c", artifacts["deb"]], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/omnivox -> /opt/omnivox/omnivox" in listing
    assert "./usr/share/applications/omnivox.desktop" in listing
    assert "./usr/share/icons/hicolor/scalable/apps/omnivox.svg" in listing
    assert Path(artifacts["deb"]).stat().st_size <= DEB_SIZE_GOAL


def test_deb_self_test_from_an_odd_read_only_path(deb_install: Path, shared_folder: Path) -> None:
    binary = deb_install / "opt" / "omnivox" / "omnivox"
    before = sorted(p.name for p in binary.parent.iterdir())
    prefix, env = as_user(shared_folder / "home")
    result = subprocess.run([*prefix, str(binary), "--self-test"], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("self-test passed: one spoken turn on cpu (nf4, torch ")
    status = subprocess.run([*prefix, str(binary), "--gpu-runtime", "status"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    # the install folder is read-only for this user: the runtime would live in the user data folder
    assert str(shared_folder / "home" / ".local" / "share" / "Omnivox" / "gpu-runtime") in status.stdout
    assert "No NVIDIA GPU driver found" in status.stdout
    assert sorted(p.name for p in binary.parent.iterdir()) == before


@pytest.fixture(scope="module")
def tar_install(artifacts: dict, shared_folder: Path) -> Path:
    target = shared_folder / "Mý Äpps (x86)"
    target.mkdir()
    with tarfile.open(artifacts["tar"]) as archive:
        archive.extractall(target, filter="tar")
    (folder,) = target.iterdir()
    return folder


def test_tarball_self_test_from_an_odd_path(tar_install: Path) -> None:
    assert {"omnivox.desktop", "omnivox.svg", "install-desktop-entry.sh"} <= {p.name for p in tar_install.iterdir()}
    result = subprocess.run([str(tar_install / "omnivox"), "--self-test"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"from {tar_install / '_internal' / 'torch'}" in result.stdout  # the bundled CPU torch
    status = subprocess.run([str(tar_install / "omnivox"), "--gpu-runtime", "status"], capture_output=True,
                            text=True, timeout=60)
    assert str(tar_install / "gpu-runtime") in status.stdout  # a writable app folder keeps its runtime inside


def test_first_run_gpu_runtime_resumes_and_is_checked_before_use(tar_install: Path, tmp_path: Path) -> None:
    """The first-run download in the frozen app, with the GPU injected: an `nvidia-smi` on PATH that
    reports one (there is none here), and a manifest put where the build puts it, listing this
    machine's CPU torch wheel (no CUDA wheels can be fetched here) served on the loopback interface.
    The download is killed part-way and resumed by the next run. The check after it imports torch
    from the runtime folder, not the bundle — and, since that torch reaches no GPU, refuses the
    runtime: the self-test keeps the bundled torch, as a user's app would after a too-old driver."""
    wheel = next(Path("/opt/wheels").glob("torch-*.whl"), None)
    if wheel is None:
        pytest.skip("no local torch wheel to serve")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA Test GPU, 999.99'\n")
    (tools / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "HOME": str(tmp_path / "home")}
    binary = str(tar_install / "omnivox")
    body = wheel.read_bytes()
    behaviour = Behaviour(files={wheel.name: body}, stall_after=len(body) // 3)
    runtime = tar_install / "gpu-runtime"
    with LoopbackServer(behaviour) as server:
        Manifest("torch (test runtime)", (Wheel(wheel.name, server.url(wheel.name),
                                                hashlib.sha256(body).hexdigest(), len(body)),)
                 ).write(tar_install / "_internal" / MANIFEST_NAME)
        status = subprocess.run([binary, "--gpu-runtime", "status"], capture_output=True, text=True, env=env)
        assert "NVIDIA Test GPU found" in status.stdout and "not installed" in status.stdout
        first = subprocess.Popen([binary, "--gpu-runtime", "install"], env=env, stderr=subprocess.DEVNULL)
        part = runtime / "downloads" / f"{wheel.name}.part"
        deadline = time.monotonic() + 120
        # the client reads 1 MB blocks, so the stalled block's start is the last that reaches the disk
        while not (part.exists() and part.stat().st_size >= len(body) // 3 - CHUNK) and time.monotonic() < deadline:
            time.sleep(0.1)
        first.kill()  # the app dies mid-download (power cut, killed, network gone)
        first.wait()
        behaviour.release.set()
        kept = part.stat().st_size
        assert 0 < kept < len(body)
        second = subprocess.run([binary, "--gpu-runtime", "install"], capture_output=True, text=True, env=env,
                                timeout=600)
        assert second.returncode == 1, second.stderr
        assert "cannot use the GPU; update the NVIDIA driver" in second.stderr
    assert behaviour.requests[-1] == (f"/{wheel.name}", f"bytes={kept}-")
    check = subprocess.run([binary, "--gpu-runtime", "check", str(runtime)], capture_output=True, text=True,
                           env=env, timeout=600)
    assert Path(json.loads(check.stdout.strip().splitlines()[-1])["torch"]).is_relative_to(runtime / "site" / "torch")
    status = subprocess.run([binary, "--gpu-runtime", "status"], capture_output=True, text=True, env=env)
    assert "GPU runtime: installed" in status.stdout and "cannot use the GPU" in status.stdout
    result = subprocess.run([binary, "--self-test"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"from {tar_install / '_internal' / 'torch'}" in result.stdout
    without_gpu = subprocess.run([binary, "--self-test"], capture_output=True, text=True, timeout=600,
                                 env={**env, "PATH": os.environ["PATH"]})  # the driver is gone: CPU torch again
    assert f"from {tar_install / '_internal' / 'torch'}" in without_gpu.stdout
    subprocess.run([binary, "--gpu-runtime", "remove"], check=True, capture_output=True, env=env)
    assert not runtime.exists()


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X server (scripts/test.sh runs under Xvfb)")
def test_installed_window_opens_within_the_goal(deb_install: Path, shared_folder: Path) -> None:
    binary = deb_install / "opt" / "omnivox" / "omnivox"
    prefix, env = as_user(shared_folder / "home-window")
    started = time.perf_counter()
    process = subprocess.Popen([*prefix, str(binary), "--no-voice", "--print-shown"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(SHOWN_MARKER):
                shown = time.perf_counter() - started
                break
        else:
            pytest.fail(f"the window never showed: {process.stderr.read() if process.stderr else ''}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    record({"window_shown_seconds": round(shown, 3)})
    assert shown <= WINDOW_GOAL_SECONDS
    errors = process.stderr.read() if process.stderr else ""
    assert "No NVIDIA GPU driver found" in errors  # the CPU fallback says so (and shows it once in a box)
    assert "Could not parse application stylesheet" not in errors  # the icons' path has spaces here


def test_frozen_engine_process_answers_a_spoken_turn(deb_install: Path, test_model: Path) -> None:
    """The window runs the engine as `<its executable> -m engine.server`; in the frozen app that is omnivox."""
    binary = deb_install / "opt" / "omnivox" / "omnivox"
    token = secrets.token_hex(32)  # as the window hands its engine the start token
    process = subprocess.Popen([str(binary), "-m", "engine.server", "--listen", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, env={**os.environ, TOKEN_ENV: token})
    assert process.stdout is not None
    name, port = process.stdout.readline().decode().split()
    assert name == PORT_ANNOUNCEMENT
    with socket.create_connection(("127.0.0.1", int(port)), timeout=300) as sock, sock.makefile("rb") as stream:
        sock.sendall(hello_frame(token))
        def until(frame_id: str, *kinds: str) -> list[dict]:
            headers = [read_frame(stream, sender="engine")[0]]
            while not (headers[-1]["id"] == frame_id and headers[-1]["type"] in kinds):
                headers.append(read_frame(stream, sender="engine")[0])
            return headers

        sock.sendall(encode_frame({"type": "load_model", "id": "load", "model": str(test_model),
                                   "precision": "nf4", "device": "cpu"}))
        assert until("load", "model_loaded", "error")[-1]["type"] == "model_loaded"
        speech = tone(2.0, 44100).astype("<f4").tobytes()
        sock.sendall(RespondRequest("t1", speech=speech, sample_rate=44100, max_new_tokens=8).encode())
        headers = until("t1", "turn_done", "error")
        assert headers[-1]["type"] == "turn_done", headers[-1]
        assert any(header["type"] == "audio_chunk" for header in headers)
        sock.sendall(encode_frame({"type": "shutdown", "id": "bye"}))
        assert process.wait(timeout=60) == 0
