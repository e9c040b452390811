"""A stand-in for the engine process that misbehaves on purpose, for EngineClient's tests.

Run as `python -m tests.app.impostor_engine MODE HEARD` by a wrapper the client starts instead
of Python. It speaks the real protocol up to the client's hello, writes to the file HEARD what
the client sends in the half second after it, then:
  wrong-pid    answers ready with a pid that is not its own (whatever holds the port, not our child);
  bad-frames   answers ready, then a frame with a list for its type and a pong for the first ping,
               then a payload of 2**62 bytes (a frame that cannot be framed) for the next ping.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from pathlib import Path

from engine.protocol import PORT_ANNOUNCEMENT, TOKEN_ENV, check_hello, encode_frame, header_length, read_frame


def raw_frame(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw


def accept_the_app(server: socket.socket) -> socket.socket:
    sock, _ = server.accept()
    prefix = sock.recv(4, socket.MSG_WAITALL)
    check_hello(sock.recv(header_length(prefix), socket.MSG_WAITALL), os.environ[TOKEN_ENV])
    return sock


def unasked(sock: socket.socket) -> bytes:
    """What the client sends before it has been answered: nothing, if it waits for ready."""
    sock.settimeout(0.5)
    try:
        return sock.recv(1 << 16)
    except TimeoutError:
        return b""
    finally:
        sock.settimeout(None)


def main(mode: str, heard: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        print(f"{PORT_ANNOUNCEMENT} {server.getsockname()[1]}", flush=True)
        sock = accept_the_app(server)
    heard.write_bytes(unasked(sock))
    pid = os.getpid() + 1 if mode == "wrong-pid" else os.getpid()
    sock.sendall(encode_frame({"type": "ready", "id": "", "pid": pid, "protocol": 3}))
    stream = sock.makefile("rb")
    if mode == "bad-frames":
        answers = [raw_frame({"v": 3, "type": ["pong"], "id": "", "payload_size": 0})
                   + raw_frame({"v": 4, "type": "progress", "id": "l", "payload_size": 0, "stage": 3, "fraction": 1}),
                   raw_frame({"v": 3, "type": "audio_chunk", "id": "", "payload_size": 2**62})]
        for answer in answers:
            header, _ = read_frame(stream)
            sock.sendall(answer + encode_frame({"type": "pong", "id": header["id"]}))
    stream.read()  # until the client hangs up


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
