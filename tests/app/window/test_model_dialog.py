"""The model manager dialog over the real `main.py models` process, against the loopback hub stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.model_manager import ModelManager, failure_line, parse_listing
from app.window.model_dialog import ModelDialog
from engine.catalog import CATALOG
from engine.models import CHUNK, ModelStore, read_vocoder_source
from tests.engine.hub_standin import HubStandIn

NAME = "Lyra-Mini-3B"
PROCESS_MS = 120_000  # each run imports torch: seconds on a busy machine
LEFT = Qt.MouseButton.LeftButton


@pytest.fixture
def hub(test_model: Path) -> Iterator[HubStandIn]:
    with HubStandIn(CATALOG[NAME].repo, test_model, test_model / "vocoder") as standin:
        yield standin


@pytest.fixture
def managers() -> Iterator[list[ModelManager]]:
    made: list[ModelManager] = []
    yield made
    for manager in made:
        manager.shutdown()  # a listing still running after the test's last check


def open_dialog(qtbot, manager: ModelManager, managers: list[ModelManager]) -> ModelDialog:
    managers.append(manager)
    dialog = ModelDialog(manager)
    qtbot.addWidget(dialog)
    dialog.show()
    with qtbot.waitSignal(manager.listed, timeout=PROCESS_MS):
        dialog.refresh()
    return dialog


def cells(dialog: ModelDialog, row: int) -> list[str]:
    return [dialog.table.item(row, column).text() for column in range(dialog.table.columnCount())]


def test_download_with_progress_then_use(qtbot, hub: HubStandIn, tmp_path: Path, managers) -> None:
    manager = ModelManager(tmp_path / "data", endpoint=hub.url, vocoder_source=hub.vocoder_source(tmp_path / "v.json"))
    dialog = open_dialog(qtbot, manager, managers)
    assert [cells(dialog, row)[:4] for row in range(2)] == [
        ["Lyra-Mini-3B", "3.28 B", "6.6 GB", "2.2 GB"], ["Lyra-Base-9B", "9.37 B", "18.7 GB", "6.1 GB"]]
    assert cells(dialog, 0)[4] in ("fits", "too big", "no CUDA GPU: runs on the CPU, slowly")
    assert cells(dialog, 0)[5] == "not downloaded" and not dialog.use_button.isEnabled()

    values: list[int] = []
    dialog.progress.valueChanged.connect(values.append)
    with qtbot.waitSignal(manager.installed, timeout=PROCESS_MS) as installed:
        qtbot.mouseClick(dialog.download_button, LEFT)
        assert dialog.progress.isVisible() and not dialog.download_button.isEnabled()
    folder = installed.args[1]
    assert values and values[-1] == 1000 and values == sorted(values)
    assert dialog.status.text() == f"{NAME} is ready in {folder}." and not dialog.progress.isVisible()
    assert ModelStore(tmp_path / "data").verify(NAME) == []
    qtbot.waitUntil(lambda: cells(dialog, 0)[5] == "installed", timeout=PROCESS_MS)  # listed again
    with qtbot.waitSignal(dialog.modelChosen) as chosen:
        qtbot.mouseClick(dialog.use_button, LEFT)
    assert chosen.args == [folder] and not dialog.isVisible()


def test_cancel_then_resume(qtbot, hub: HubStandIn, test_model: Path, tmp_path: Path, managers) -> None:
    manager = ModelManager(tmp_path / "data", endpoint=hub.url, vocoder_source=hub.vocoder_source(tmp_path / "v.json"))
    dialog = open_dialog(qtbot, manager, managers)
    hub.delay_per_chunk = 0.05  # 16 KB every 50 ms: seconds into the 1.6 MB shard, the first MB is on disk
    dialog.download()
    # The downloader writes what it reads in pieces of up to CHUNK (1 MB): the biggest shard's .part
    # reaches that ~2 s before it is whole. (Any smaller file's .part is whole on disk a moment before
    # its rename, and a .part listed one moment can be gone the next.)
    biggest = max(test_model.glob("*.safetensors"), key=lambda path: path.stat().st_size)
    store = ModelStore(tmp_path / "data")
    part = store.model_folder(NAME) / f"{biggest.name}.part"

    def part_bytes() -> int:
        try:
            return part.stat().st_size
        except FileNotFoundError:  # not started yet (or whole, and renamed)
            return 0

    qtbot.waitUntil(lambda: part_bytes() >= CHUNK, timeout=PROCESS_MS)
    with qtbot.waitSignal(manager.stopped, timeout=10_000) as stopped:
        qtbot.mouseClick(dialog.cancel_button, LEFT)
    assert stopped.args == [NAME, ""] and "cancelled" in dialog.status.text()
    kept = part_bytes()
    assert kept >= CHUNK and store.installed(NAME) is None
    qtbot.waitUntil(lambda: cells(dialog, 0)[5].startswith("paused at"), timeout=PROCESS_MS)
    assert dialog.download_button.text() == "Resume download" and dialog.download_button.isEnabled()

    hub.delay_per_chunk = 0.0
    hub.requests.clear()
    with qtbot.waitSignal(manager.installed, timeout=PROCESS_MS):
        qtbot.mouseClick(dialog.download_button, LEFT)
    assert f"bytes={kept}-" in " ".join(hub.requests)  # resumed from what the cancelled run left
    assert store.verify(NAME) == [] and not list((tmp_path / "data").rglob("*.part"))


def test_remove_after_asking(qtbot, hub: HubStandIn, tmp_path: Path, managers) -> None:
    store = ModelStore(tmp_path / "data", endpoint=hub.url,
                       vocoder=read_vocoder_source(hub.vocoder_source(tmp_path / "v.json")))
    folder = store.download(NAME).folder
    manager = ModelManager(tmp_path / "data", endpoint=hub.url, vocoder_source=hub.vocoder_source(tmp_path / "v.json"))
    dialog = open_dialog(qtbot, manager, managers)
    assert cells(dialog, 0)[5] == "installed" and dialog.remove_button.isEnabled()
    asked: list[str] = []
    dialog.confirm = lambda question: asked.append(question) or False  # the user says no
    qtbot.mouseClick(dialog.remove_button, LEFT)
    assert asked == [f"Remove {NAME} (6.6 GB)? Using it again means downloading it again."] and folder.is_dir()

    dialog.confirm = lambda question: True
    with qtbot.waitSignal(manager.removed, timeout=PROCESS_MS) as removed:
        qtbot.mouseClick(dialog.remove_button, LEFT)
        assert cells(dialog, 0)[5] == "removing" and not dialog.remove_button.isEnabled()
    assert removed.args == [NAME, ""] and dialog.status.text() == f"{NAME} was removed."
    assert store.installed(NAME) is None and not folder.exists()
    qtbot.waitUntil(lambda: cells(dialog, 0)[5] == "not downloaded", timeout=PROCESS_MS)  # listed again
    assert not dialog.remove_button.isEnabled() and dialog.download_button.isEnabled()


def test_no_network_is_one_line_in_the_dialog(qtbot, hub: HubStandIn, tmp_path: Path, managers) -> None:
    manager = ModelManager(tmp_path / "data", endpoint="http://127.0.0.1:9",
                           vocoder_source=hub.vocoder_source(tmp_path / "v.json"))
    dialog = open_dialog(qtbot, manager, managers)
    with qtbot.waitSignal(manager.stopped, timeout=PROCESS_MS):
        dialog.download()
    assert dialog.status.text().startswith(f"{NAME}: zszhong/Lyra_Mini_3B: download failed")
    assert "check the network" in dialog.status.text() and "\n" not in dialog.status.text()
    assert dialog.download_button.isEnabled() and not dialog.use_button.isEnabled()


def test_a_model_manager_that_cannot_run_is_reported(qtbot, tmp_path: Path) -> None:
    manager = ModelManager(tmp_path, python="/nonexistent/python3")
    dialog = ModelDialog(manager)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(manager.failed, timeout=10_000):
        dialog.refresh()
    assert dialog.status.text().startswith("The model list is unavailable: the model manager could not start")


def test_command_output_parsing() -> None:
    assert failure_line("Traceback…\nerror: disk is full\n\n", 1) == "disk is full"
    assert failure_line("", 9) == "the model manager exited with status 9"
    with pytest.raises(ValueError, match="unreadable model list"):
        parse_listing('[{"name": "x"}]')


def test_a_cut_chunked_download_stops_with_a_resumable_reason(qtbot, hub: HubStandIn, tmp_path: Path,
                                                              managers) -> None:
    manager = ModelManager(tmp_path / "data", endpoint=hub.url, vocoder_source=hub.vocoder_source(tmp_path / "v.json"))
    managers.append(manager)
    hub.chunked, hub.drop_after_bytes = True, 40000  # no Content-Length; the body ends mid-file
    with qtbot.waitSignal(manager.stopped, timeout=PROCESS_MS) as stopped:
        manager.download(NAME)
    assert stopped.args[0] == NAME and "IncompleteRead" in stopped.args[1]
    assert "resumes where it stopped" in stopped.args[1] and "\n" not in stopped.args[1]
    assert list((tmp_path / "data").rglob("*.part")) and ModelStore(tmp_path / "data").installed(NAME) is None
