"""One file over HTTP(S): resumable, checksummed, cancellable, with progress. Qt-free.

A download writes `<dest>.part`; an interrupted one (network error, Ctrl+C, a killed app) leaves
that file, and the next attempt asks the server for the rest with a Range request. The SHA-256
covers the whole file, so a resumed download is checked exactly like a fresh one.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20
Progress = Callable[[int, int], None]  # bytes done, bytes expected


class DownloadError(Exception):
    """A download that cannot finish now; the message is one line for the user."""


class DownloadCancelled(DownloadError):
    """The user cancelled; the partial file stays for the next attempt."""


def sha256_of(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest


def download(url: str, dest: Path, sha256: str, size: int, progress: Progress | None = None,
             cancel: threading.Event | None = None, attempts: int = 4, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest` unless it is already there; resume a `.part` left by an earlier attempt."""
    if dest.is_file() and dest.stat().st_size == size:
        return dest  # verified when it was renamed into place
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            fetch_rest(url, part, size, progress, cancel, timeout)
            break
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if isinstance(err, urllib.error.HTTPError):
                if err.code == 416:  # the partial file does not fit what the server has: start over
                    part.unlink(missing_ok=True)
                elif err.code < 500:
                    raise DownloadError(f"{url}: the server answered {err.code} {err.reason}") from err
            if attempt == attempts:
                raise DownloadError(f"{url}: {err}; run again to resume") from err
            time.sleep(min(2.0**attempt, 10.0) * 0.1)  # brief back-off: most drops are momentary
    actual = sha256_of(part).hexdigest()
    if actual != sha256:
        part.unlink()  # a resumed file that is wrong is wrong from the start: begin again next time
        raise DownloadError(f"{dest.name}: checksum mismatch (expected {sha256[:12]}…, got {actual[:12]}…)")
    part.replace(dest)
    return dest


def fetch_rest(url: str, part: Path, size: int, progress: Progress | None, cancel: threading.Event | None,
               timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not the file we expect (a changed manifest): start over
        part.unlink()
        have = 0
    if have == size:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status != 206:  # the server ignored the range: it sends the whole file
            have = 0
        with part.open("ab" if have else "wb") as out:
            while True:
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled("download cancelled; run again to resume")
                block = response.read(CHUNK)
                if not block:
                    break
                out.write(block)
                have += len(block)
                if progress is not None:
                    progress(have, size)
    if have != size:  # the connection closed early without an error
        raise ConnectionError(f"connection closed after {have} of {size} bytes")
