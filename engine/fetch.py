"""One file over HTTP(S): resumed, bounded and verified before it is trusted. Torch- and Qt-free.

Bytes go to `<file>.part`; an interrupted transfer (a closed laptop, a cut connection, Ctrl+C)
leaves that file and the next attempt asks for the rest with a Range request. Nothing is ever
read past the size the listing or catalogue gives, whatever the server sends, and the file is
renamed into place only once its size and checksum match — so a file in place is a verified
file. The model manager (`engine.models`) and the first-run GPU runtime (`installers.download`)
both fetch through here.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import OmnivoxError

CHUNK = 1 << 20
OnBytes = Callable[[int], None]  # bytes of the file on disk so far


class DownloadError(OmnivoxError):
    """A file that cannot be finished now; the message is one line for the user."""


class DownloadInterrupted(DownloadError):
    """The transfer broke off; what arrived stays in the `.part` file and the next attempt resumes."""


class DownloadCancelled(DownloadError):
    """The user cancelled; the partial file stays for the next attempt."""


@dataclass(frozen=True)
class Expected:
    """What a file must be: its size and one checksum (SHA-256, or the git blob id the hub gives small files)."""

    size: int
    sha256: str | None = None
    git_blob_sha1: str | None = None

    @classmethod
    def known(cls, name: str, size: int | None, sha256: str | None = None,
              git_blob_sha1: str | None = None) -> Expected:
        """The expectation, or a DownloadError when the size or every checksum is unknown: such a file
        could never be told apart from a truncated or altered one, so it is never marked complete."""
        if size is None or size < 0 or not (sha256 or git_blob_sha1):
            raise DownloadError(f"{name}: no known size and checksum for this file, so a download of it "
                                "cannot be verified; it is not installed.")
        return cls(size, sha256.lower() if sha256 else None, git_blob_sha1.lower() if git_blob_sha1 else None)

    def hasher(self) -> hashlib._Hash:
        if self.sha256:
            return hashlib.sha256()
        digest = hashlib.sha1()  # noqa: S324 - git's blob id is SHA-1 of a header and the content
        digest.update(f"blob {self.size}\0".encode())
        return digest

    @property
    def digest(self) -> str:
        return self.sha256 or self.git_blob_sha1 or ""


def inside(folder: Path, name: str) -> Path:
    """`folder / name` for a relative name from a listing; DownloadError if it would land anywhere else."""
    parts = name.split("/")
    if (not name or "\\" in name or "\0" in name or name.startswith("/") or ":" in parts[0]
            or any(part in ("", ".", "..") for part in parts)):
        raise DownloadError(f"the listing names a file {name!r} outside the model folder; refusing the download.")
    target = folder.joinpath(*parts)
    if not target.resolve().is_relative_to(folder.resolve()):  # a symbolic link inside the folder
        raise DownloadError(f"the listing's file {name!r} resolves outside the model folder; refusing the download.")
    return target


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch(url: str, dest: Path, expected: Expected, label: str, on_bytes: OnBytes | None = None,
          cancel: threading.Event | None = None, timeout: float = 30.0) -> None:
    """Continue `dest.part` from `url` up to the expected size, verify it, rename it to `dest`."""
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > expected.size:  # not the file we expect (a changed listing): start over
        part.unlink()
        have = 0
    if have < expected.size:
        receive(url, part, have, expected.size, label, on_bytes, cancel, timeout)
    place(part, dest, expected, label)


def receive(url: str, part: Path, have: int, size: int, label: str, on_bytes: OnBytes | None,
            cancel: threading.Event | None, timeout: float) -> None:
    """Append bytes `have`…`size` of `url` to `part`; never more, however much the server sends."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server ignored the Range: it sends the whole file
                have = 0
            announced = response.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) + have < size:
                raise DownloadError(f"{label}: the server has {int(announced) + have} bytes where {size} are "
                                    "expected; the file changed on the server, try again later.")
            with part.open("ab" if have else "wb") as out:
                while have < size:
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled(f"{label}: download cancelled; run it again to resume.")
                    block, cut = read_block(response, min(CHUNK, size - have))
                    out.write(block)
                    have += len(block)
                    if block and on_bytes is not None:
                        on_bytes(have)
                    if cut is not None:
                        raise cut
                    if not block:
                        break
    except urllib.error.HTTPError as err:
        raise http_failure(label, part, err) from None
    except http.client.HTTPException as err:  # IncompleteRead of a cut chunked body, a garbled reply
        raise interrupted(label, f"{type(err).__name__}: {err}") from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DownloadError(f"{label}: the disk is full; free some space and run the download again "
                                "(it resumes).") from None
        raise interrupted(label, str(getattr(err, "reason", None) or err)) from None
    if have < size:
        raise interrupted(label, f"the connection closed after {have} of {size} bytes")


def read_block(response: http.client.HTTPResponse, amount: int) -> tuple[bytes, http.client.IncompleteRead | None]:
    """Up to `amount` bytes (b"" at the end), and the error that cut a chunked body short: the bytes that
    arrived before the cut come with it, so the resume starts after them."""
    try:
        return response.read(amount), None
    except http.client.IncompleteRead as cut:
        return cut.partial, cut


def interrupted(label: str, why: str) -> DownloadInterrupted:
    return DownloadInterrupted(f"{label}: download interrupted ({why}); check the network and run it again "
                               "— it resumes where it stopped.")


def http_failure(label: str, part: Path, err: urllib.error.HTTPError) -> DownloadError:
    if err.code == 416:  # asked for bytes past the server's end: its file is shorter than expected
        part.unlink(missing_ok=True)
        return DownloadError(f"{label}: the server's file is shorter than expected; the file changed on the "
                             "server, try again later.")
    if err.code >= 500 or err.code == 429:  # the server's trouble, usually passing
        return interrupted(label, f"the server answered {err.code} {err.reason}")
    return DownloadError(f"{label}: the server answered {err.code} {err.reason}.")


def place(part: Path, dest: Path, expected: Expected, label: str) -> None:
    """Rename `part` to `dest` if its size and checksum are right; otherwise delete it and say so."""
    actual = checksum(part, expected)
    if part.stat().st_size != expected.size or actual != expected.digest:
        part.unlink()  # a resumed file that is wrong is wrong from the start: begin again next time
        raise DownloadError(f"{label}: checksum mismatch (expected {expected.digest[:12]}…, got {actual[:12]}…); "
                            "the download was discarded, run it again to fetch it afresh.")
    os.replace(part, dest)


def checksum(path: Path, expected: Expected) -> str:
    digest = expected.hasher()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def is_verified(path: Path, expected: Expected) -> bool:
    """A file already in place from an earlier run, of the right size and checksum."""
    return path.is_file() and path.stat().st_size == expected.size and checksum(path, expected) == expected.digest
