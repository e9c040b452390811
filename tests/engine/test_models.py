"""The model manager against a loopback stand-in of the hub: download, resume, cancel, verify, remove."""

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.catalog import CATALOG
from engine.errors import OmnivoxError
from engine.models import DownloadCancelled, ModelStore, Progress, read_vocoder_source
from tests.engine.hub_standin import HubStandIn
from tests.probes import small_filesystem

NAME = "Lyra-Mini-3B"


@pytest.fixture
def hub(test_model: Path):
    repo = CATALOG[NAME].repo
    with HubStandIn(repo, test_model, test_model / "vocoder") as standin:
        yield standin


def store_for(hub: HubStandIn, tmp_path: Path) -> ModelStore:
    source = read_vocoder_source(hub.vocoder_source(tmp_path / "vocoder-source.json"))
    return ModelStore(tmp_path / "data", endpoint=hub.url, vocoder=source)


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
    store.download_vocoder(folder, store.vocoder_expectations(), lambda *a: None, threading.Event())
    assert (folder / "g_00500000").read_bytes() == original
    assert any(r.startswith("GET /vocoder/g_00500000 bytes=100000-") for r in hub.requests)


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


def test_no_network_is_a_clear_error(hub: HubStandIn, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "data", endpoint="http://127.0.0.1:9", vocoder=store_for(hub, tmp_path).vocoder)
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
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 300 KB filesystem, so writes fail with ENOSPC as on a full disk."""
    with small_filesystem(tmp_path / "tiny", "300k") as mount_point:
        yield mount_point


def test_a_full_disk_is_a_clear_error_and_nothing_is_installed(hub: HubStandIn, tiny_disk: Path) -> None:
    store = ModelStore(tiny_disk / "data", endpoint=hub.url, vocoder=store_for(hub, tiny_disk).vocoder)
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
    source = str(hub.vocoder_source(tmp_path / "vocoder.json"))
    assert main(["models", "--data-dir", data, "--endpoint", hub.url, "--vocoder-source", source,
                 "download", NAME, "--json"]) == 0
    *progress, installed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["event"] for line in progress} == {"progress"} and progress[-1]["done"] == progress[-1]["total"]
    assert installed == {"event": "installed", "name": NAME, "folder": str(tmp_path / "data" / "models" / NAME),
                         "vocoder": str(tmp_path / "data" / "models" / NAME / "vocoder")}
    assert main(["models", "--data-dir", data, "list", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["installed"] and row["folder"] == installed["folder"] and row["partial_bytes"] == 0


# ---- a hostile or broken hub (issue 15) ------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/omnivox-absolute", "speech_lora/../../../escaped",
                                  "vocoder/g_00500000"])
def test_a_listed_name_outside_the_model_folder_is_refused(hub: HubStandIn, tmp_path: Path, name: str) -> None:
    hub.extra_listed[name] = b"planted"
    store = store_for(hub, tmp_path)
    with pytest.raises(OmnivoxError, match="refusing the download"):
        store.download(NAME)
    assert not any("/resolve/" in request for request in hub.requests)  # refused before any byte
    planted = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == b"planted"]
    assert planted == [] and not Path("/tmp/omnivox-absolute").exists() and store.installed(NAME) is None


def test_a_file_of_the_right_size_with_other_bytes_is_not_installed(hub: HubStandIn, tmp_path: Path) -> None:
    shard = "model-00001-of-00002.safetensors"
    original = (hub.repo_folder / shard).read_bytes()
    hub.served_instead[shard] = bytes(len(original))
    store = store_for(hub, tmp_path)
    with pytest.raises(OmnivoxError, match=f"{shard}: checksum mismatch"):
        store.download(NAME)
    folder = store.model_folder(NAME)
    assert not (folder / shard).exists() and not (folder / f"{shard}.part").exists()
    assert store.installed(NAME) is None
    hub.served_instead.clear()  # the hub serves the right bytes again: the rerun fetches it afresh
    store.download(NAME)
    assert (folder / shard).read_bytes() == original and store.verify(NAME) == []


def test_a_small_file_is_checked_against_its_git_blob_id(hub: HubStandIn, tmp_path: Path) -> None:
    original = (hub.repo_folder / "config.json").read_bytes()
    hub.served_instead["config.json"] = original.replace(b"}", b" }", 1)[:len(original)]
    with pytest.raises(OmnivoxError, match="config.json: checksum mismatch"):
        store_for(hub, tmp_path).download(NAME)


def test_a_vocoder_cut_short_without_a_length_is_resumed_not_installed(hub: HubStandIn, tmp_path: Path) -> None:
    store = store_for(hub, tmp_path)
    hub.chunked = True  # no Content-Length anywhere
    original = (hub.vocoder_folder / "g_00500000").read_bytes()
    folder = store.model_folder(NAME) / "vocoder"
    folder.mkdir(parents=True)
    hub.drop_after_bytes = 32768
    with pytest.raises(OmnivoxError, match="interrupted.*resumes where it stopped"):
        store.download_vocoder(folder, store.vocoder_expectations(), lambda *a: None, threading.Event())
    assert not (folder / "g_00500000").exists() and (folder / "g_00500000.part").stat().st_size == 32768
    store.download_vocoder(folder, store.vocoder_expectations(), lambda *a: None, threading.Event())
    assert (folder / "g_00500000").read_bytes() == original


def test_a_half_vocoder_left_in_place_is_fetched_again(hub: HubStandIn, tmp_path: Path) -> None:
    store = store_for(hub, tmp_path)
    folder = store.model_folder(NAME) / "vocoder"
    folder.mkdir(parents=True)
    original = (hub.vocoder_folder / "g_00500000").read_bytes()
    (folder / "g_00500000").write_bytes(original[:1000])  # what an unverified download once renamed into place
    store.download(NAME)
    assert (folder / "g_00500000").read_bytes() == original


def test_a_vocoder_without_a_known_size_and_digest_is_never_installed(hub: HubStandIn, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "data", endpoint=hub.url)  # the catalogue's vocoder: digests not known here
    with pytest.raises(OmnivoxError, match="vocoder/g_00500000: no known size and checksum"):
        store.download(NAME)
    assert hub.requests == [] and store.installed(NAME) is None


def test_a_cut_chunked_download_is_one_resumable_error_line(hub: HubStandIn, tmp_path: Path, capsys) -> None:
    from main import main

    hub.chunked, hub.drop_after_bytes = True, 40000
    args = ["models", "--data-dir", str(tmp_path / "data"), "--endpoint", hub.url,
            "--vocoder-source", str(hub.vocoder_source(tmp_path / "vocoder.json")), "download", NAME]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "IncompleteRead" in err and "resumes where it stopped" in err
    assert list((tmp_path / "data").rglob("*.part"))  # kept for the rerun
    assert main(args) == 0 and ModelStore(tmp_path / "data").verify(NAME) == []


def test_a_server_sending_more_than_listed_is_cut_off(hub: HubStandIn, tmp_path: Path) -> None:
    hub.chunked, hub.trailing = True, os.urandom(100_000)
    paths = store_for(hub, tmp_path).download(NAME)
    for name, source in hub.repo_files().items():
        assert (paths.folder / name).read_bytes() == source.read_bytes()
    assert (paths.vocoder / "g_00500000").read_bytes() == (hub.vocoder_folder / "g_00500000").read_bytes()


def test_a_vocoder_source_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "source.json"
    path.write_text(json.dumps({"url": "http://127.0.0.1:9", "files": {"g_00500000": {"size": 1}}}))
    with pytest.raises(OmnivoxError, match="not a vocoder source"):
        read_vocoder_source(path)
