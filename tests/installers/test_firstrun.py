"""The frozen launcher's decisions that need no build: which starts open the window, notices shown once."""

from __future__ import annotations

from pathlib import Path

import pytest

from installers import firstrun


@pytest.mark.parametrize(("argv", "window"), [
    ([], True),
    (["--no-voice", "--model", "/m"], True),
    (["--self-test"], False),
    (["ask", "--model", "/m", "--text", "hi"], False),
    (["history"], False),
    (["-h"], False),
])
def test_which_starts_open_the_window(argv: list[str], window: bool) -> None:
    assert firstrun.opens_window(argv) is window


def test_a_notice_is_shown_once_per_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firstrun, "data_dir", lambda: tmp_path / "data")
    assert not firstrun.notice_shown(firstrun.CPU_NOTICE)
    assert firstrun.notice_shown(firstrun.CPU_NOTICE)
    assert not firstrun.notice_shown("a different situation")


def test_an_unwritable_data_folder_only_repeats_the_notice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(firstrun, "data_dir", lambda: blocker / "data")  # a folder under a file: cannot exist
    assert not firstrun.notice_shown(firstrun.CPU_NOTICE)
    assert not firstrun.notice_shown(firstrun.CPU_NOTICE)


def test_status_without_a_driver_names_the_cpu_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    assert firstrun.command(["status"]) == 0
    assert "No NVIDIA GPU driver found" in capsys.readouterr().out


def test_unknown_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert firstrun.command(["upgrade"]) == 2
    assert "unknown --gpu-runtime action" in capsys.readouterr().err


def test_a_damaged_manifest_means_cpu_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gpu-runtime.json").write_text("{not json")
    monkeypatch.setattr(firstrun.sys, "_MEIPASS", str(tmp_path), raising=False)
    assert firstrun.bundled_manifests() == ()
    assert "ignoring the GPU runtime manifest" in capsys.readouterr().err
    (tmp_path / "gpu-runtime.json").unlink()
    assert firstrun.bundled_manifests() == ()
