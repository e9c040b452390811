"""A loopback stand-in for the Hugging Face hub API and the vocoder's file server.

It serves a folder as a model repository (the JSON model-info route, HEAD/GET on resolve URLs
with ETag and X-Repo-Commit headers, Range requests) plus plain files under /vocoder/. Tests can
slow it down and make it drop a connection after some bytes, to exercise cancel and resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.loopback import LoopbackHTTP

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn(LoopbackHTTP):
    def __init__(self, repo_id: str, repo_folder: Path, vocoder_folder: Path) -> None:
        self.repo_id, self.repo_folder, self.vocoder_folder = repo_id, repo_folder, vocoder_folder
        self.delay_per_chunk = 0.0
        self.drop_after_bytes: int | None = None  # close the connection mid-file once, then serve normally
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

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
                self.serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self.serve(body=True)

            def serve(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}".strip())
                path = self.path.split("?")[0]
                info_route = f"/api/models/{hub.repo_id}"
                if path.startswith(info_route):
                    siblings = [{"rfilename": name, "size": p.stat().st_size} for name, p in hub.repo_files().items()]
                    self.send_json({"id": hub.repo_id, "sha": COMMIT, "siblings": siblings})
                elif path.startswith(f"/{hub.repo_id}/resolve/"):
                    name = path.split("/resolve/", 1)[1].split("/", 1)[1]
                    self.send_file(hub.repo_files().get(name), body)
                elif path.startswith("/vocoder/"):
                    self.send_file(hub.vocoder_folder / path.removeprefix("/vocoder/"), body)
                else:
                    self.send_error(404)

            def send_json(self, data: dict) -> None:
                encoded = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            def send_file(self, path: Path | None, body: bool) -> None:
                if path is None or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                if (ranged := self.headers.get("Range")) and ranged.startswith("bytes="):
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                if start >= len(data) and data:
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                sent = 0
                for offset in range(start, len(data), 16384):
                    if hub.drop_after_bytes is not None and sent >= hub.drop_after_bytes:
                        hub.drop_after_bytes = None
                        self.close_connection = True
                        return
                    chunk = data[offset:offset + 16384]
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    time.sleep(hub.delay_per_chunk)

        return Handler
