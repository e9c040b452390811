"""A loopback stand-in for the Hugging Face hub API and the vocoder's file server.

It serves a folder as a model repository (the JSON model-info route with each file's size, git
blob id and — for weight files, as the hub keeps them in LFS — SHA-256; HEAD/GET on resolve URLs
with ETag and X-Repo-Commit headers, Range requests) plus plain files under /vocoder/. Tests can
slow it down, make it drop a connection after some bytes (to exercise cancel and resume), send
bodies chunked without a length, send more than the file, serve other bytes than it lists, and list
names of its choosing — what a hostile or broken hub might do.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

from engine.catalog import RemoteFile, VocoderSource
from tests.loopback import LoopbackHTTP

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # noqa: S324 - git's object id


def sibling(name: str, data: bytes) -> dict:
    """One file of the model-info listing, as the hub writes it with files_metadata."""
    listed = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
    if name.endswith(LFS_SUFFIXES):
        listed["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
    return listed


class HubStandIn(LoopbackHTTP):
    def __init__(self, repo_id: str, repo_folder: Path, vocoder_folder: Path) -> None:
        self.repo_id, self.repo_folder, self.vocoder_folder = repo_id, repo_folder, vocoder_folder
        self.delay_per_chunk = 0.0
        self.drop_after_bytes: int | None = None  # close the connection mid-file once, then serve normally
        self.chunked = False  # bodies as HTTP/1.1 chunks, without Content-Length
        self.trailing = b""  # sent after each file's bytes, beyond what it lists and announces
        self.served_instead: dict[str, bytes] = {}  # file ("vocoder/…" for the vocoder's) → other bytes than listed
        self.extra_listed: dict[str, bytes] = {}  # more names in the listing (served too), e.g. "../../x"
        self.requests: list[str] = []
        super().__init__(self.handler())

    @property
    def url(self) -> str:
        return self.base_url

    def repo_files(self) -> dict[str, Path]:
        """The repository's files: the model folder without the vocoder, which the hub does not hold."""
        files = sorted(p for p in self.repo_folder.rglob("*") if p.is_file())
        names = {p.relative_to(self.repo_folder).as_posix(): p for p in files}
        return {name: path for name, path in names.items() if not name.startswith("vocoder/")}

    def listing(self) -> list[dict]:
        files = {name: path.read_bytes() for name, path in self.repo_files().items()} | self.extra_listed
        return [sibling(name, data) for name, data in files.items()]

    def vocoder_source(self, path: Path) -> Path:
        """A `--vocoder-source` file for the vocoder this stand-in serves, with its true sizes and digests."""
        files = tuple(RemoteFile(p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
                      for p in sorted(self.vocoder_folder.iterdir()) if p.is_file())
        source = VocoderSource(f"{self.url}/vocoder", files)
        path.write_text(json.dumps({"url": source.url, "files": {f.name: asdict(f) for f in source.files}}))
        return path

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
                self.serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                try:
                    self.serve(body=True)
                except (ConnectionResetError, BrokenPipeError):  # the client stopped reading: what cut-off tests do
                    self.close_connection = True

            def serve(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}".strip())
                path = self.path.split("?")[0]
                info_route = f"/api/models/{hub.repo_id}"
                if path.startswith(info_route):
                    self.send_json({"id": hub.repo_id, "sha": COMMIT, "siblings": hub.listing()})
                elif path.startswith(f"/{hub.repo_id}/resolve/"):
                    name = unquote(path.split("/resolve/", 1)[1].split("/", 1)[1])
                    instead = hub.served_instead.get(name, hub.extra_listed.get(name))
                    self.send_file(hub.repo_files().get(name), body, instead)
                elif path.startswith("/vocoder/"):
                    name = path.removeprefix("/")
                    self.send_file(hub.vocoder_folder / name.removeprefix("vocoder/"), body,
                                   hub.served_instead.get(name))
                else:
                    self.send_error(404)

            def send_json(self, data: dict) -> None:
                encoded = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            def send_file(self, path: Path | None, body: bool, extra: bytes | None = None) -> None:
                if extra is not None:
                    self.send_data(extra, body)
                elif path is None or not path.is_file():
                    self.send_error(404)
                else:
                    self.send_data(path.read_bytes(), body)

            def send_data(self, data: bytes, body: bool) -> None:
                start = 0
                if (ranged := self.headers.get("Range")) and ranged.startswith("bytes="):
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                if start >= len(data) and data:
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if hub.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                sent, payload = 0, data[start:] + hub.trailing
                for offset in range(0, len(payload), 16384):
                    if hub.drop_after_bytes is not None and sent >= hub.drop_after_bytes:
                        hub.drop_after_bytes = None
                        self.close_connection = True
                        return
                    chunk = payload[offset:offset + 16384]
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if hub.chunked else chunk)
                    sent += len(chunk)
                    time.sleep(hub.delay_per_chunk)
                if hub.chunked:
                    self.wfile.write(b"0\r\n\r\n")

        return Handler
