"""One file over HTTP(S) for the first-run GPU runtime: resumable, checksummed, cancellable, retried.

The transfer itself is `engine.fetch` (torch-free): `<dest>.part` continued with Range requests,
never read past the manifest's size, renamed into place only once its SHA-256 matches. Here a
broken connection is retried a few times within one run before it becomes a `DownloadError`
whose message says the next run resumes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine.fetch import CHUNK, DownloadCancelled, DownloadError, DownloadInterrupted, Expected, fetch, is_verified

__all__ = ["CHUNK", "DownloadCancelled", "DownloadError", "Progress", "download"]

Progress = Callable[[int, int], None]  # bytes done, bytes expected


def download(url: str, dest: Path, sha256: str, size: int, progress: Progress | None = None,
             cancel: threading.Event | None = None, attempts: int = 4, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest` unless it is already there and whole; resume a `.part` left by an earlier attempt."""
    expected = Expected.known(dest.name, size, sha256)
    if is_verified(dest, expected):
        return dest
    on_bytes = (lambda done: progress(done, size)) if progress is not None else None
    attempt = 1
    while True:
        try:
            fetch(url, dest, expected, dest.name, on_bytes, cancel, timeout)
            return dest
        except DownloadInterrupted:
            if attempt == attempts:
                raise
            time.sleep(min(2.0**attempt, 10.0) * 0.1)  # brief back-off: most drops are momentary
            attempt += 1
