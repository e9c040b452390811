"""installers.download against a real HTTP server on the loopback interface."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from installers.download import CHUNK, DownloadCancelled, DownloadError, download
from tests.installers.http_server import Behaviour, LoopbackServer

BODY = os.urandom(3 * CHUNK + 12345)
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour(files={"runtime.whl": BODY})


def test_downloads_checks_and_reports_progress(behaviour: Behaviour, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    with LoopbackServer(behaviour) as server:
        path = download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY),
                        lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == BODY
    assert seen[-1] == (len(BODY), len(BODY))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert not (tmp_path / "runtime.whl.part").exists()


def test_an_interrupted_download_resumes_where_it_stopped(behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.drop_after = CHUNK + 100
    dest = tmp_path / "runtime.whl"
    with LoopbackServer(behaviour) as server:
        with pytest.raises(DownloadError, match="resumes where it stopped"):
            download(server.url("runtime.whl"), dest, SHA, len(BODY), attempts=1)
        assert (tmp_path / "runtime.whl.part").stat().st_size == CHUNK + 100
        download(server.url("runtime.whl"), dest, SHA, len(BODY))  # the next start of the app
    assert dest.read_bytes() == BODY
    assert behaviour.requests[-1] == ("/runtime.whl", f"bytes={CHUNK + 100}-")


def test_a_dropped_connection_is_retried_within_one_run(behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.drop_after = 5000
    with LoopbackServer(behaviour) as server:
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY))
    assert (tmp_path / "runtime.whl").read_bytes() == BODY
    assert [ranged for _, ranged in behaviour.requests] == [None, "bytes=5000-"]


def test_a_server_without_range_support_sends_it_all_again(behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.ignore_range = True
    (tmp_path / "runtime.whl.part").write_bytes(BODY[:777])
    with LoopbackServer(behaviour) as server:
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY))
    assert (tmp_path / "runtime.whl").read_bytes() == BODY


def test_a_wrong_checksum_discards_the_file(behaviour: Behaviour, tmp_path: Path) -> None:
    with LoopbackServer(behaviour) as server, pytest.raises(DownloadError, match="checksum mismatch"):
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", "0" * 64, len(BODY))
    assert list(tmp_path.iterdir()) == []  # nothing left that a later run could trust


def test_a_partial_file_that_does_not_fit_starts_over(behaviour: Behaviour, tmp_path: Path) -> None:
    (tmp_path / "runtime.whl.part").write_bytes(b"x" * 100)  # e.g. left by an older manifest
    with LoopbackServer(behaviour) as server, pytest.raises(DownloadError, match="checksum mismatch"):
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY))
    with LoopbackServer(behaviour) as server:  # the bad part was removed: the next try is clean
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY))
    assert (tmp_path / "runtime.whl").read_bytes() == BODY


def test_cancel_stops_and_keeps_the_partial_file(behaviour: Behaviour, tmp_path: Path) -> None:
    cancel = threading.Event()

    def progress(done: int, _total: int) -> None:
        if done >= CHUNK:
            cancel.set()

    with LoopbackServer(behaviour) as server:
        with pytest.raises(DownloadCancelled):
            download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY), progress, cancel)
        kept = (tmp_path / "runtime.whl.part").stat().st_size
        assert 0 < kept < len(BODY)
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY))
    assert behaviour.requests[-1][1] == f"bytes={kept}-"


def test_a_missing_file_fails_at_once(behaviour: Behaviour, tmp_path: Path) -> None:
    with LoopbackServer(behaviour) as server, pytest.raises(DownloadError, match="404"):
        download(server.url("gone.whl"), tmp_path / "gone.whl", SHA, len(BODY))
    assert len(behaviour.requests) == 1  # not retried: it will not appear by asking again


def test_nothing_listening_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="resumes where it stopped"):
        download("http://127.0.0.1:9/runtime.whl", tmp_path / "runtime.whl", SHA, len(BODY), attempts=2)


def test_a_cut_chunked_transfer_is_a_resumable_error(behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.chunked, behaviour.drop_after = True, CHUNK + 100  # no Content-Length: the cut is IncompleteRead
    dest = tmp_path / "runtime.whl"
    with LoopbackServer(behaviour) as server:
        with pytest.raises(DownloadError, match="IncompleteRead.*resumes where it stopped"):
            download(server.url("runtime.whl"), dest, SHA, len(BODY), attempts=1)
        assert not dest.exists() and (tmp_path / "runtime.whl.part").stat().st_size == CHUNK + 100  # all that came
        download(server.url("runtime.whl"), dest, SHA, len(BODY))
    assert dest.read_bytes() == BODY and behaviour.requests[-1] == ("/runtime.whl", f"bytes={CHUNK + 100}-")


def test_a_server_sending_more_than_expected_is_cut_off(behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.chunked, behaviour.trailing = True, os.urandom(5 * CHUNK)
    seen: list[int] = []
    with LoopbackServer(behaviour) as server:
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY),
                 lambda done, _total: seen.append(done))
    assert (tmp_path / "runtime.whl").read_bytes() == BODY and max(seen) == len(BODY)


def test_a_damaged_file_in_place_is_fetched_again(behaviour: Behaviour, tmp_path: Path) -> None:
    dest = tmp_path / "runtime.whl"
    dest.write_bytes(bytes(len(BODY)))  # the right size, other bytes
    with LoopbackServer(behaviour) as server:
        download(server.url("runtime.whl"), dest, SHA, len(BODY))
    assert dest.read_bytes() == BODY and len(behaviour.requests) == 1


def test_no_known_size_or_checksum_is_never_complete(behaviour: Behaviour, tmp_path: Path) -> None:
    with LoopbackServer(behaviour) as server, pytest.raises(DownloadError, match="cannot be verified"):
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", "", len(BODY))
    assert behaviour.requests == [] and list(tmp_path.iterdir()) == []


def test_a_cut_chunked_transfer_is_retried_within_one_run(behaviour: Behaviour, tmp_path: Path) -> None:
    """What the first-run GPU runtime sees: the retry resumes, where IncompleteRead used to end the install."""
    behaviour.chunked, behaviour.drop_after = True, 3 * 65536 + 5000  # mid-chunk
    with LoopbackServer(behaviour) as server:
        download(server.url("runtime.whl"), tmp_path / "runtime.whl", SHA, len(BODY))
    assert (tmp_path / "runtime.whl").read_bytes() == BODY
    assert [ranged for _, ranged in behaviour.requests] == [None, f"bytes={3 * 65536 + 5000}-"]
