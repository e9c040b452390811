"""A loopback HTTP server for download tests: serves files with Range support and can misbehave on
purpose (drop the connection part-way, ignore Range), recording every request it gets."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.loopback import LoopbackHTTP


@dataclass
class Behaviour:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: int | None = None  # close the connection after this many body bytes, once
    ignore_range: bool = False
    chunked: bool = False  # no Content-Length: the body goes as HTTP/1.1 chunks (a cut then is IncompleteRead)
    trailing: bytes = b""  # sent after the file, beyond the length it announces
    stall_after: int | None = None  # send this many body bytes, then hold the connection until `release`, once
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            self.serve(self.server.behaviour)  # type: ignore[attr-defined]
        except (ConnectionResetError, BrokenPipeError):  # the client went away: what some tests do on purpose
            self.close_connection = True

    def serve(self, behaviour: Behaviour) -> None:
        behaviour.requests.append((self.path, self.headers.get("Range")))
        body = behaviour.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and not behaviour.ignore_range:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if behaviour.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:] + behaviour.trailing
        if behaviour.stall_after is not None:  # a connection that hangs, as when the network goes away
            sent, behaviour.stall_after = payload[:behaviour.stall_after], None
            self.wfile.write(sent)
            self.wfile.flush()
            behaviour.release.wait(timeout=120)
            self.close_connection = True
            return
        if behaviour.drop_after is not None:
            payload, behaviour.drop_after = payload[:behaviour.drop_after], None
            self.send_body(payload, behaviour.chunked, finished=False)
            self.close_connection = True
            return
        self.send_body(payload, behaviour.chunked, finished=True)

    def send_body(self, payload: bytes, chunked: bool, finished: bool) -> None:
        """The payload as is, or as 64 KB chunks; an unfinished chunked body lacks its closing empty chunk."""
        if not chunked:
            self.wfile.write(payload)
            return
        for offset in range(0, len(payload), 65536):
            piece = payload[offset:offset + 65536]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        if finished:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *_args: object) -> None:  # keep test output clean
        pass


class LoopbackServer(LoopbackHTTP):
    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(Handler)
        self.server.behaviour = behaviour  # type: ignore[attr-defined]

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"
