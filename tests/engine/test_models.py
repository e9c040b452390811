"""The model manager against a loopback stand-in of the hub: download, resume, cancel, verify, remove."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from engine.catalog import CATALOG
from engine.errors import OmnivoxError
from engine.models import DownloadCancelled, ModelStore, Progress
from tests.engine.hub_standin import HubStandIn

NAME = "Lyra-Mini-3B"


@pytest.fixture
def hub(test_model: Path):
    repo = CATALOG[NAME].repo
    with HubStandIn(repo, test_model, test_model / "vocoder") as standin:
        yield standin


def store_for(hub: HubStandIn, tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "data", endpoint=hub.url, vocoder_url=f"{hub.url}/vocoder")


def test_download_reports_progress_and_installs_a_loadable_model(hub: HubStandIn, tmp_path: Path) -> None:
    store = store_for(hub, tmp_path)
    events: list[Progress] = []
    paths = store.download(NAME, progress=events.append)
    assert (paths.folder / "config.json").is_file() and (paths.vocoder / "g_00500000").is_file()
    seen = {event.file: event.file_done for event in events}
    shard = "model-00002-of-00002.safetensors"
    assert seen[f"{CATALOG[NAME].repo}/{shard}"] == (hub.repo_folder / shard).stat().st_size
    assert seen["vocoder/g_00500000"] == (hub.vocoder_folder / "g_00500000").stat().st_size
    everything = sum(p.stat().st_size for p in paths.folder.rglob("*") if p.is_file())
    assert events[-1].done == events[-1].total == everything  # one bar for the whole model
    assert [event.done for event in events] == sorted(event.done for event in events)
    assert store.installed(NAME) == paths
    assert store.verify(NAME) == []

    from engine.loading import load_lyra
    from engine.quantize import Precision

    assert paths.vocoder == paths.folder / "vocoder"  # found without --vocoder
    assert load_lyra(paths.folder, Precision.parse("fp32", "cpu")).report.unexpected == []


def test_an_interrupted_download_resumes_with_a_range_request(hub: HubStandIn, tmp_path: Path) -> None:
    store = store_for(hub, tmp_path)
    hub.drop_after_bytes = 32768  # the first file body is cut off after 32 KiB
    with pytest.raises(OmnivoxError, match="resumes where it stopped"):
        store.download(NAME)
    assert store.installed(NAME) is None  # a partial download is never listed as installed
    partial = next((tmp_path / "data" / "models").rglob("*.part"))
    assert partial.stat().st_size == 32768 and store.partial_bytes(NAME) >= 32768
    events: list[Progress] = []
    store.download(NAME, progress=events.append)
    label = f"{CATALOG[NAME].repo}/{partial.relative_to(tmp_path / 'data' / 'models' / NAME).as_posix()[:-5]}"
    assert min(event.file_done for event in events if event.file == label) > 32768  # counted from what is there
    assert any(r.startswith("GET ") and r.endswith("bytes=32768-") for r in hub.requests)
    assert store.verify(NAME) == [] and not list((tmp_path / "data").rglob("*.part"))


def test_vocoder_download_resumes_with_a_range_request(hub: HubStandIn, tmp_path: Path) -> None:
    store = store_for(hub, tmp_path)
    folder = tmp_path / "data" / "models" / NAME / "vocoder"
    folder.mkdir(parents=True)
    original = (hub.vocoder_folder / "g_00500000").read_bytes()
    (folder / "g_00500000.part").write_bytes(original[:100000])
    store.download_vocoder(folder, lambda *a: None, threading.Event())
    assert (folder / "g_00500000").read_bytes() == original


def test_cancel_stops_the_download_and_leaves_nothing_installed(hub: HubStandIn, tmp_path: Path) -> None:
    store = store_for(hub, tmp_path)
    hub.delay_per_chunk = 0.02
    cancel = threading.Event()

    def cancel_soon(progress: Progress) -> None:
        if progress.file_done > 20000:
            cancel.set()

    with pytest.raises(DownloadCancelled, match="cancelled"):
        store.download(NAME, progress=cancel_soon, cancel=cancel)
    assert store.installed(NAME) is None


def test_no_network_is_a_clear_error(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "data", endpoint="http://127.0.0.1:9", vocoder_url="http://127.0.0.1:9")
    with pytest.raises(OmnivoxError, match="check the network"):
        store.download(NAME)


def test_verify_finds_damage_and_remove_forgets(hub: HubStandIn, tmp_path: Path) -> None:
    store = store_for(hub, tmp_path)
    paths = store.download(NAME)
    shard = paths.folder / "model-00001-of-00002.safetensors"
    shard.resolve().write_bytes(b"\0" * 10)
    assert any("model-00001-of-00002.safetensors" in p for p in store.verify(NAME))
    store.remove(NAME)
    assert store.installed(NAME) is None and not paths.folder.exists()
    with pytest.raises(OmnivoxError, match="not installed"):
        store.remove(NAME)


def test_remove_discards_an_unfinished_download(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "data")
    folder = store.model_folder(NAME)
    folder.mkdir(parents=True)
    (folder / "model-00001-of-00002.safetensors.part").write_bytes(b"\0" * 1000)
    assert store.partial_bytes(NAME) == 1000
    store.remove(NAME)
    assert store.partial_bytes(NAME) == 0 and not folder.exists()


def test_unknown_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(OmnivoxError, match="Lyra-Mini-3B"):
        ModelStore(tmp_path).download("Lyra-Pro-74B")



@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 300 KB filesystem (tmpfs), so writes fail with ENOSPC as on a full disk."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount_point)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_is_a_clear_error_and_nothing_is_installed(hub: HubStandIn, tiny_disk: Path) -> None:
    store = ModelStore(tiny_disk / "data", endpoint=hub.url, vocoder_url=f"{hub.url}/vocoder")
    with pytest.raises(OmnivoxError, match="disk is full"):
        store.download(NAME)
    assert store.installed(NAME) is None
    finished = [p for p in (tiny_disk / "data" / "models").rglob("*") if p.is_file() and p.suffix != ".part"]
    sizes = {name: (hub.repo_folder / name).stat().st_size for name in hub.repo_files()}
    for path in finished:  # every file that is not a .part is whole
        assert path.stat().st_size == sizes[path.relative_to(tiny_disk / "data" / "models" / NAME).as_posix()]


def test_models_and_doctor_commands_print_json(hub: HubStandIn, tmp_path: Path, capsys) -> None:
    from main import main

    data = str(tmp_path / "data")
    assert main(["models", "--data-dir", data, "--endpoint", hub.url, "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["Lyra-Mini-3B", "Lyra-Base-9B"]
    assert rows[1]["nf4_gb"] <= 6.5 and not rows[0]["installed"] and rows[0]["folder"] is None
    assert main(["models", "--data-dir", data, "verify", NAME]) == 1
    assert "not installed" in capsys.readouterr().err
    assert main(["doctor", "--data-dir", data, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"python", "gpu", "bitsandbytes", "audio", "cameras", "models"} <= set(report)


def test_download_json_prints_progress_lines_then_the_folder(hub: HubStandIn, tmp_path: Path, capsys) -> None:
    from main import main

    data = str(tmp_path / "data")
    assert main(["models", "--data-dir", data, "--endpoint", hub.url, "--vocoder-url", f"{hub.url}/vocoder",
                 "download", NAME, "--json"]) == 0
    *progress, installed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["event"] for line in progress} == {"progress"} and progress[-1]["done"] == progress[-1]["total"]
    assert installed == {"event": "installed", "name": NAME, "folder": str(tmp_path / "data" / "models" / NAME),
                         "vocoder": str(tmp_path / "data" / "models" / NAME / "vocoder")}
    assert main(["models", "--data-dir", data, "list", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["installed"] and row["folder"] == installed["folder"] and row["partial_bytes"] == 0
