"""What the engine's process boundary costs.

1. Time from starting the app's EngineClient to the engine process answering a ping (no model),
   through the handshake (hello with the start token, ready from the child's pid).
2. The handshake alone: connect to a listening engine, hello, ready.
3. Round trip of one frame through a loopback socket to an echo process, with the real framing
   both ways: a 30 s speech turn's PCM, a 1080p PNG, and the audio/text events a reply streams.
4. Time to first audio of a 30 s spoken turn on the test checkpoint: `Session.respond` in this
   process vs the same turn through `python -m engine.server` (goal: at most 5 ms added).

Usage: python benchmarks/engine_ipc.py [--json] [--runs N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.protocol import (  # noqa: E402
    PORT_ANNOUNCEMENT,
    TOKEN_ENV,
    RespondRequest,
    encode_frame,
    hello_frame,
    read_frame,
)

SPEECH_SAMPLES = 30 * 16000
GOAL_MS = 5.0
FIRST_CHUNK_SAMPLES = 6 * 320  # engine.speech_out: 6 units of 20 ms in the first chunk, 40 later
LATER_CHUNK_SAMPLES = 40 * 320


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def summary(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    return {"median_ms": round(statistics.median(ordered), 3), "min_ms": round(ordered[0], 3),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3), "runs": len(ordered)}


def speech_pcm() -> np.ndarray:
    t = np.arange(SPEECH_SAMPLES) / 16000
    return (0.3 * np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def screenshot_png() -> bytes:
    """1920×1080 of noise: the worst case for PNG size (a real screen compresses far better)."""
    pixels = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


# ---- 1. client start → engine alive ----------------------------------------------------------

def engine_alive(runs: int) -> dict:
    from PySide6.QtCore import QCoreApplication, QEventLoop, QTimer

    from app.engine_client import EngineClient

    app = QCoreApplication.instance() or QCoreApplication([])
    ready_ms, pong_ms = [], []
    for _ in range(runs):
        client, loop, marks = EngineClient(), QEventLoop(), {}
        client.ready.connect(lambda marks=marks: marks.setdefault("ready", time.perf_counter()))
        client.pong.connect(lambda _id, marks=marks, loop=loop: (marks.setdefault("pong", time.perf_counter()),
                                                                 loop.quit()))
        QTimer.singleShot(30_000, loop.quit)
        started = time.perf_counter()
        client.start()
        client.ping()  # waits in the client until the connection is up
        loop.exec()
        client.shutdown()
        ready_ms.append(ms(marks["ready"] - started))
        pong_ms.append(ms(marks["pong"] - started))
        app.processEvents()  # let the finished client's process and socket objects go
    return {"measurement": "client_start_to_engine_alive", **summary(pong_ms),
            "ready_median_ms": round(statistics.median(ready_ms), 3)}


# ---- 2. the start handshake: connect → ready -------------------------------------------------

def start_engine() -> tuple[subprocess.Popen, int, str]:
    """An engine process started as the app starts it; its port and start token."""
    token = secrets.token_hex(32)
    process = subprocess.Popen([sys.executable, "-m", "engine.server"], cwd=ROOT, stdout=subprocess.PIPE,
                               env={**os.environ, TOKEN_ENV: token})
    assert process.stdout is not None
    name, port = process.stdout.readline().decode().split()
    assert name == PORT_ANNOUNCEMENT
    return process, int(port), token


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def handshake(runs: int) -> dict:
    """What reaching the engine costs once it listens: connect, hello with the token, ready back."""
    times = []
    for _ in range(runs):
        process, port, token = start_engine()
        started = time.perf_counter()
        with connect(port) as sock, sock.makefile("rb") as stream:
            sock.sendall(hello_frame(token))
            assert read_frame(stream, sender="engine")[0]["type"] == "ready"
            times.append(ms(time.perf_counter() - started))
            sock.sendall(encode_frame({"type": "shutdown", "id": "s"}))
        process.wait(timeout=30)
    return {"measurement": "connect_to_ready_handshake", **summary(times)}


# ---- 3. frame round trips through an echo process --------------------------------------------

def echo_server() -> int:
    """Hidden mode: echo every frame back, parsing a respond as the engine would."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        print(server.getsockname()[1], flush=True)
        sock, _ = server.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = sock.makefile("rb")
    while True:
        try:
            header, payload = read_frame(stream)
        except EOFError:
            return 0
        if header["type"] == "respond":
            RespondRequest.decode(header, payload)
        sock.sendall(encode_frame({k: v for k, v in header.items() if k not in ("v", "payload_size")}, payload))


def round_trips(runs: int) -> list[dict]:
    pcm, png = speech_pcm(), screenshot_png()
    first_chunk, later_chunk = pcm[:FIRST_CHUNK_SAMPLES], pcm[:LATER_CHUNK_SAMPLES]
    cases: dict[str, tuple[Callable[[], bytes], int]] = {
        "respond_30s_speech_pcm": (lambda: RespondRequest("t", speech=pcm.astype("<f4").tobytes()).encode(),
                                   pcm.nbytes),
        "prefetch_1080p_png": (lambda: encode_frame({"type": "prefetch", "id": "p"}, png), len(png)),
        "audio_chunk_first": (lambda: audio_event(first_chunk), first_chunk.nbytes),
        "audio_chunk_later": (lambda: audio_event(later_chunk), later_chunk.nbytes),
        "text_delta": (lambda: encode_frame({"type": "text_delta", "id": "t", "text": " word"}), 0),
    }
    process = subprocess.Popen([sys.executable, __file__, "--echo-server"], stdout=subprocess.PIPE)
    assert process.stdout is not None
    sock = connect(int(process.stdout.readline()))
    stream = sock.makefile("rb")
    rows = []
    for name, (build, payload_bytes) in cases.items():
        times = []
        for _ in range(runs + 1):  # the first warms the socket buffers
            started = time.perf_counter()
            sock.sendall(build())
            header, payload = read_frame(stream)
            if header["type"] == "audio_chunk":
                np.frombuffer(payload, dtype="<f4")
            times.append(ms(time.perf_counter() - started))
        stats = summary(times[1:])
        rows.append({"measurement": "frame_round_trip", "frame": name, "payload_bytes": payload_bytes, **stats,
                     "one_way_estimate_ms": round(stats["median_ms"] / 2, 3)})
    stream.close()
    sock.close()  # the echo process ends at end of stream
    process.wait(timeout=10)
    return rows


def audio_event(chunk: np.ndarray) -> bytes:
    pcm = np.ascontiguousarray(chunk, dtype="<f4")
    return encode_frame({"type": "audio_chunk", "id": "t", "sample_rate": 16000, "samples": int(pcm.size)},
                        pcm.tobytes())


# ---- 4. time to first audio: in-process vs through the engine process ------------------------

def in_process_turns(folder: Path, pcm: bytes, runs: int) -> list[tuple[float, float]]:
    """(time to first audio, the session's own first_audio mark) per turn, in ms."""
    from engine.events import AudioChunk, TurnDone
    from engine.loading import load_lyra
    from engine.media import speech_from_pcm
    from engine.quantize import Precision
    from engine.session import Session, TurnRequest

    session = Session(load_lyra(folder, Precision.parse("fp32", "cpu")))
    results = []
    for _ in range(runs + 1):  # the first turn warms up kernels for every shape
        session.reset()
        started, first = time.perf_counter(), None
        speech = speech_from_pcm(np.frombuffer(pcm, dtype="<f4"), 16000)
        for event in session.respond(TurnRequest(speech=speech, max_new_tokens=16), threading.Event()):
            if first is None and isinstance(event, AudioChunk):
                first = time.perf_counter() - started
            if isinstance(event, TurnDone):
                results.append((ms(first), event.timings_ms["first_audio"]))
    return results[1:]


def engine_turns(folder: Path, pcm: bytes, runs: int) -> list[tuple[float, float]]:
    process, port, token = start_engine()
    sock = connect(port)
    sock.sendall(hello_frame(token))
    stream = sock.makefile("rb")

    def until(frame_id: str, *kinds: str) -> dict:
        while True:
            header, _ = read_frame(stream, sender="engine")
            if header["id"] == frame_id and header["type"] in kinds:
                return header

    sock.sendall(encode_frame({"type": "load_model", "id": "m", "model": str(folder), "precision": "fp32",
                               "device": "cpu"}))
    assert until("m", "model_loaded", "error")["type"] == "model_loaded"
    results = []
    for index in range(runs + 1):
        sock.sendall(encode_frame({"type": "reset", "id": "r"}) + encode_frame({"type": "ping", "id": "sync"}))
        until("sync", "pong")
        started = time.perf_counter()
        turn = f"t{index}"
        sock.sendall(RespondRequest(turn, speech=pcm, max_new_tokens=16).encode())
        first = until(turn, "audio_chunk", "turn_done")
        first_ms = ms(time.perf_counter() - started)
        done = first if first["type"] == "turn_done" else until(turn, "turn_done")
        results.append((first_ms, done["timings_ms"]["first_audio"]))
    sock.sendall(encode_frame({"type": "shutdown", "id": "s"}))
    process.wait(timeout=30)
    return results[1:]


def time_to_first_audio(runs: int) -> dict:
    from engine.testing import write_test_model

    pcm = speech_pcm().astype("<f4").tobytes()
    with tempfile.TemporaryDirectory() as temporary:
        folder = write_test_model(Path(temporary) / "Lyra_Test")
        local = in_process_turns(folder, pcm, runs)
        remote = engine_turns(folder, pcm, runs)
    # Compute time varies turn to turn by far more than the boundary costs; what happens outside
    # the session (request transport, PCM decoding, event transport) is the wall time minus the
    # session's own first_audio mark, and that is what the boundary adds. On a busy machine the
    # median also catches scheduling delays of the second process; the minimum is the floor.
    local_outside = [first - mark for first, mark in local]
    remote_outside = [first - mark for first, mark in remote]
    added = round(statistics.median(remote_outside) - statistics.median(local_outside), 3)
    return {"measurement": "time_to_first_audio_30s_turn", "runs": runs,
            "in_process_median_ms": round(statistics.median(first for first, _ in local), 3),
            "engine_process_median_ms": round(statistics.median(first for first, _ in remote), 3),
            "session_first_audio_in_process_median_ms": round(statistics.median(mark for _, mark in local), 3),
            "session_first_audio_engine_process_median_ms": round(statistics.median(mark for _, mark in remote), 3),
            "outside_session_in_process_ms": summary(local_outside),
            "outside_session_engine_process_ms": summary(remote_outside),
            "added_ms": added, "added_min_ms": round(min(remote_outside) - min(local_outside), 3),
            "goal_ms": GOAL_MS, "meets_goal": added <= GOAL_MS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per measurement")
    parser.add_argument("--runs", type=int, default=8, help="measured turns (frame round trips: 4x as many)")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        return echo_server()
    steps = [lambda: [engine_alive(args.runs)], lambda: [handshake(4 * args.runs)], lambda: round_trips(4 * args.runs),
             lambda: [time_to_first_audio(args.runs)]]
    for step in steps:
        for row in step():
            print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
