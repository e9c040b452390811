"""`main.py --self-test`: one spoken turn with a generated model, one line either way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine import selftest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_self_test_passes_from_source() -> None:
    result = subprocess.run([sys.executable, "main.py", "--self-test"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("self-test passed: one spoken turn on cpu (nf4, torch ")


def test_a_failure_is_one_line_naming_the_step(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_folder: Path) -> Path:
        raise OSError("No space left on device")

    monkeypatch.setattr("engine.testing.write_test_model", broken)
    assert selftest.run() == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "self-test failed: test checkpoint: OSError: No space left on device\n"


def test_a_missing_native_library_fails_the_self_test(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(selftest, "NATIVE_MODULES", ("sounddevice", "omnivox_no_such_module"))
    assert selftest.run() == 1
    assert capsys.readouterr().err.startswith("self-test failed: native libraries: ModuleNotFoundError")


def test_a_failing_import_names_the_module_and_where_it_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # as a frozen build without kernels' data failed: a dependency raising at import, deep below the app
    (tmp_path / "omnivox_probe").mkdir()
    (tmp_path / "omnivox_probe" / "__init__.py").write_text("")
    (tmp_path / "omnivox_probe" / "fine.py").write_text("")
    (tmp_path / "omnivox_probe" / "uses_dependency.py").write_text("import omnivox_probe_dependency\n")
    (tmp_path / "omnivox_probe_dependency.py").write_text(
        "raise FileNotFoundError('Cannot load dependency data, is `kernels` correctly installed?')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(selftest, "APP_PACKAGES", ("omnivox_probe",))
    assert selftest.run() == 1
    assert capsys.readouterr().err == (
        "self-test failed: imports: omnivox_probe.uses_dependency (raised in omnivox_probe_dependency): "
        "FileNotFoundError: Cannot load dependency data, is `kernels` correctly installed?\n")


def test_the_self_test_imports_every_module_of_the_app_and_the_engine() -> None:
    names = set(selftest.module_names("engine")) | set(selftest.module_names("app"))
    assert {"engine.extraction", "engine.server", "app.gui", "app.audio.playback"} <= names
