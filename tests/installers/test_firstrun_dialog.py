"""The first-run download dialog with a real download from a loopback server: done, cancelled, declined."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox, QProgressDialog

from installers import firstrun_dialog, gpu_runtime
from installers.gpu_runtime import Manifest, Wheel
from tests.installers.http_server import Behaviour, LoopbackServer


def wheel_shaped(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("probe/__init__.py", os.urandom(size // 2).hex())
    return buffer.getvalue()


BODY = wheel_shaped(3_000_000)


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for the user at the two message boxes; records the notices shown."""
    notices: list[str] = []
    monkeypatch.setattr(QMessageBox, "question", lambda *_args: QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(firstrun_dialog, "show_notice", notices.append)
    return notices


def manifest(server: LoopbackServer) -> Manifest:
    return Manifest("test", (Wheel("w.whl", server.url("w.whl"), hashlib.sha256(BODY).hexdigest(), len(BODY)),))


def test_download_completes_and_the_dialog_closes(qapp: QApplication, answers: list[str], tmp_path: Path) -> None:
    with LoopbackServer(Behaviour(files={"w.whl": BODY})) as server:
        wanted = manifest(server)
        assert firstrun_dialog.run_install_dialog(wanted, tmp_path, "NVIDIA Test GPU found.")
    assert gpu_runtime.installed(tmp_path, wanted)
    assert (tmp_path / "site" / "probe" / "__init__.py").is_file()
    assert answers == []


def test_cancel_falls_back_to_the_cpu_and_keeps_the_partial_file(qapp: QApplication, answers: list[str],
                                                                 tmp_path: Path) -> None:
    behaviour = Behaviour(files={"w.whl": BODY}, stall_after=len(BODY) // 2)

    def press_cancel() -> None:
        dialog = next((w for w in qapp.topLevelWidgets() if isinstance(w, QProgressDialog) and w.isVisible()), None)
        if dialog is None or not (tmp_path / "downloads" / "w.whl.part").exists():
            QTimer.singleShot(50, press_cancel)
            return
        dialog.cancel()
        behaviour.release.set()

    QTimer.singleShot(50, press_cancel)
    with LoopbackServer(behaviour) as server:
        assert not firstrun_dialog.run_install_dialog(manifest(server), tmp_path, "NVIDIA Test GPU found.")
    assert not gpu_runtime.installed(tmp_path)
    assert (tmp_path / "downloads" / "w.whl.part").stat().st_size > 0
    assert answers == ["You cancelled the download. Omnivox runs on the CPU this time and resumes the download "
                       "at the next start."]


def test_declining_runs_on_the_cpu(qapp: QApplication, answers: list[str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(QMessageBox, "question", lambda *_args: QMessageBox.StandardButton.No)
    never = Manifest("t", (Wheel("w.whl", "http://127.0.0.1:9/w", "0" * 64, 1),))
    assert not firstrun_dialog.run_install_dialog(never, tmp_path, "NVIDIA Test GPU found.")
    assert "runs on the CPU this time" in answers[0]
    assert not (tmp_path / "downloads").exists()
