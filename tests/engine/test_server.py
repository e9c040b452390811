"""The engine process for real: `python -m engine.server` on the test checkpoint, driven over its socket."""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.protocol import (
    MAX_HEADER,
    MAX_PAYLOAD,
    PORT_ANNOUNCEMENT,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    Frame,
    RespondRequest,
    TranscribeRequest,
    encode_frame,
    hello_frame,
    read_frame,
)
from engine.server import BACKGROUND_NICENESS, HELLO_TIMEOUT_S, MAX_GREETINGS
from tests.signals import tone

ROOT = Path(__file__).resolve().parents[2]
REFUSED = "this engine serves only the app that started it"


def start_engine(token: str, *options: str) -> tuple[subprocess.Popen, int]:
    """An engine process started as the app starts it (the token in its environment); and its port."""
    process = subprocess.Popen([sys.executable, "-m", "engine.server", "--listen", "127.0.0.1:0", *options], cwd=ROOT,
                               stdout=subprocess.PIPE, env={**os.environ, TOKEN_ENV: token})
    assert process.stdout is not None
    name, port = process.stdout.readline().decode().split()
    assert name == PORT_ANNOUNCEMENT
    return process, int(port)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def frames_until_closed(sock: socket.socket) -> list[dict]:
    """Every frame's header the engine sends on this connection until it closes it."""
    headers, stream = [], sock.makefile("rb")
    while True:
        try:
            headers.append(read_frame(stream, sender="engine")[0])
        except (EOFError, ConnectionResetError):
            return headers


class EngineProcess:
    """A running engine process and the test's connection to it, as the app's (after its hello)."""

    def __init__(self, *options: str) -> None:
        token = secrets.token_hex(32)
        self.process, port = start_engine(token, *options)
        self.sock = connect(port)
        self.stream = self.sock.makefile("rb")
        self.send(hello_frame(token))
        self.ready = self.next()

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def request(self, kind: str, frame_id: str, payload: bytes = b"", **fields: object) -> None:
        self.send(encode_frame({"type": kind, "id": frame_id, **fields}, payload))

    def next(self) -> Frame:
        return read_frame(self.stream, sender="engine")

    def until(self, frame_id: str, *kinds: str) -> list[Frame]:
        """Every frame up to and including the first of `kinds` for `frame_id`."""
        frames = [self.next()]
        while not (frames[-1][0]["id"] == frame_id and frames[-1][0]["type"] in kinds):
            frames.append(self.next())
        return frames

    def load(self, folder: Path, precision: str = "fp32") -> dict:
        self.request("load_model", "load", model=str(folder), precision=precision, device="cpu")
        loaded = self.until("load", "model_loaded", "error")[-1][0]
        assert loaded["type"] == "model_loaded", loaded
        return loaded

    def turn(self, request: RespondRequest) -> list[Frame]:
        self.request("reset", "r")  # every test turn starts a fresh conversation
        self.send(request.encode())
        return self.until(request.turn_id, "turn_done", "error")

    def close(self) -> None:
        self.request("shutdown", "bye")
        assert self.process.wait(timeout=20) == 0
        self.sock.close()


@pytest.fixture(scope="module")
def bare_engine() -> Iterator[EngineProcess]:
    engine = EngineProcess()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def engine(test_model: Path) -> Iterator[EngineProcess]:
    engine = EngineProcess()
    engine.load(test_model)
    yield engine
    engine.close()


def raw_frame(header: dict | bytes, payload: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + payload


def png(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_engine_is_alive_at_once_and_imports_no_torch_until_a_model(bare_engine: EngineProcess) -> None:
    assert bare_engine.ready[0]["type"] == "ready" and bare_engine.ready[0]["protocol"] == PROTOCOL_VERSION
    assert bare_engine.ready[0]["pid"] == bare_engine.process.pid
    # Below the app's priority, so the model's compute cannot starve the app's audio.
    assert os.getpriority(os.PRIO_PROCESS, bare_engine.process.pid) == min(19, os.nice(0) + BACKGROUND_NICENESS)
    bare_engine.request("ping", "p1")
    assert bare_engine.next()[0] == {"type": "pong", "id": "p1", "v": PROTOCOL_VERSION, "payload_size": 0}
    code = "import sys, engine.server; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_clients_racing_the_app_are_refused_while_the_app_gets_its_engine() -> None:
    """Another local user who finds the port first (in /proc/net/tcp) gets nothing out of the engine."""
    token = secrets.token_hex(32)
    process, port = start_engine(token)
    try:
        silent = [connect(port) for _ in range(MAX_GREETINGS + 8)]  # more than the engine keeps waiting
        attempts = {
            "ping": encode_frame({"type": "ping", "id": "p"}),
            "load_model": encode_frame({"type": "load_model", "id": "l", "model": "/tmp/evil", "precision": None}),
            "a guessed token": hello_frame(secrets.token_hex(32)),
            "the token's prefix": hello_frame(token[:-1]),
            "no frame at all": b"\x00\x00",
        }
        noisy = {name: connect(port) for name in attempts}
        for name, frame in attempts.items():
            noisy[name].sendall(frame)
        started = time.monotonic()
        app = connect(port)
        app.sendall(hello_frame(token) + encode_frame({"type": "ping", "id": "after-hello"}))
        stream = app.makefile("rb")
        ready, pong = read_frame(stream, sender="engine")[0], read_frame(stream, sender="engine")[0]
        assert (ready["type"], ready["pid"], pong["id"]) == ("ready", process.pid, "after-hello")
        assert time.monotonic() - started < HELLO_TIMEOUT_S / 2  # no waiting for the silent ones to time out
        for name, sock in noisy.items():
            answers = frames_until_closed(sock)
            if name != "no frame at all":  # the half frame was still being read when the app came
                assert [(h["type"], REFUSED in h["message"]) for h in answers] == [("error", True)], name
        assert all(frames_until_closed(sock) == [] for sock in silent)  # closed, unanswered
        with pytest.raises(ConnectionRefusedError):  # once the app is in, nobody else can connect
            socket.create_connection(("127.0.0.1", port), timeout=5)
        app.sendall(encode_frame({"type": "shutdown", "id": "bye"}))
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()


@pytest.mark.parametrize("token", [None, "", "short"])
def test_the_engine_does_not_start_without_a_start_token(token: str | None) -> None:
    environment = {name: value for name, value in os.environ.items() if name != TOKEN_ENV}
    if token is not None:
        environment[TOKEN_ENV] = token
    done = subprocess.run([sys.executable, "-m", "engine.server"], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""  # never listened
    assert done.stderr.strip() == (f"error: {TOKEN_ENV} must hold the start token (at least 32 characters) of the "
                                   "app that runs this engine; the Omnivox app sets it")


def test_respond_and_prefetch_without_a_model_are_refused(bare_engine: EngineProcess) -> None:
    bare_engine.send(RespondRequest("t1", text="hello", max_new_tokens=4).encode())
    bare_engine.request("prefetch", "f1", png(32, 0))
    for frame_id in ("t1", "f1"):
        error = bare_engine.next()[0]
        assert (error["type"], error["id"], error["message"]) == ("error", frame_id, "no model loaded; load one first")


BAD_MESSAGES = [
    (raw_frame({"v": 1, "type": "dance", "id": "u1", "payload_size": 2}, b"!!"), "u1", "unknown message type 'dance'"),
    (raw_frame({"v": 1, "type": ["ping"], "id": "l1", "payload_size": 0}), "l1", "unknown message type ['ping']"),
    (raw_frame({"v": 1, "type": {"a": 1}, "id": "d1", "payload_size": 1}, b"!"), "d1", "unknown message type {'a': 1}"),
    (raw_frame({"v": 1, "type": "ping", "id": "x" * 200, "payload_size": 0}), "", "field id must be a string of at"),
    (raw_frame(b'{"v":1,"type":"ping","id":"s1","payload_size":0,"x":"\\udc00"}'), "s1", "unpaired UTF-16 surrogate"),
    (raw_frame({"v": PROTOCOL_VERSION + 1, "type": "respond", "id": "n1", "payload_size": 3}, b"abc"), "n1",
     f"app speaks protocol {PROTOCOL_VERSION + 1}, engine speaks {PROTOCOL_VERSION}; update Omnivox"),
    (encode_frame({"type": "pong", "id": "e1"}), "e1", "'pong' is not a request"),
    (hello_frame("0" * 64), "", "hello is only the first frame"),
    (raw_frame({"v": 1, "type": "respond", "id": "r1", "payload_size": 3, "parts": {"text": 2}}, b"abc"), "r1",
     "respond r1: parts add up to 2 bytes but the payload has 3"),
    (encode_frame({"type": "load_model", "id": "l1"}), "l1", "load_model needs a model folder"),
]


def test_bad_messages_are_answered_and_the_connection_stays_up(bare_engine: EngineProcess) -> None:
    for frame, frame_id, message in BAD_MESSAGES:
        bare_engine.send(frame)
        error = bare_engine.next()[0]
        assert error["type"] == "error" and error["id"] == frame_id and message in error["message"], error
    bare_engine.request("cancel", "no-such-turn")  # a cancel that crossed its turn's end is not an error
    bare_engine.request("ping", "still-there")
    assert bare_engine.next()[0]["id"] == "still-there"


def test_the_process_ends_when_the_app_leaves_after_a_bad_message() -> None:
    engine = EngineProcess()
    engine.send(raw_frame({"v": 1, "type": ["ping"], "id": "l1", "payload_size": 0}))  # killed the reader before
    engine.request("ping", "p")
    assert [h["type"] for h, _ in (engine.next(), engine.next())] == ["error", "pong"]
    engine.stream.close()  # the socket's file keeps the connection open until it is closed too
    engine.sock.close()
    assert engine.process.wait(timeout=10) == 0


@pytest.mark.parametrize(("frame", "message"), [
    (raw_frame(b"[" * 60_000), "frame header nests deeper than 32 levels"),
    (raw_frame({"v": 1, "type": "prefetch", "id": "huge", "payload_size": 2**62}),
     f"payload of {2**62} bytes is over the {MAX_PAYLOAD}-byte limit"),
    (raw_frame({"v": 1, "type": "prefetch", "id": "big", "payload_size": MAX_PAYLOAD + 1}),
     f"payload of {MAX_PAYLOAD + 1} bytes is over"),
    (struct.pack(">I", MAX_HEADER + 5), f"frame header of {MAX_HEADER + 5} bytes is over"),
    (raw_frame(b"{oops"), "malformed frame header: Expecting property name"),
    (raw_frame({"v": 1, "type": "respond", "id": "m1"}), "frame header lacks payload_size"),
])
def test_a_frame_that_cannot_be_framed_is_one_error_then_a_clean_end(frame: bytes, message: str) -> None:
    engine = EngineProcess()
    engine.send(frame)
    (error,) = frames_until_closed(engine.sock)  # not a silently dead connection
    assert error["type"] == "error" and message in error["message"], error
    assert error["message"].endswith("; closing the connection")
    assert engine.process.wait(timeout=10) == 0  # and no process lingering with a dead reader


def test_loading_a_missing_model_is_one_error_line(bare_engine: EngineProcess, tmp_path: Path) -> None:
    bare_engine.request("load_model", "bad", model=str(tmp_path / "nowhere"), precision="fp32", device="cpu")
    frames = bare_engine.until("bad", "model_loaded", "error")
    assert [h["type"] for h, _ in frames[:-1]] == ["progress", "progress"]
    message = f"{tmp_path / 'nowhere'}: no such model folder; download a model or pass --model DIR."
    assert frames[-1][0]["message"] == message


def test_the_app_s_data_folder_keeps_quantized_weights_between_starts(test_model: Path, tmp_path: Path) -> None:
    replies, caches = [], []
    for _ in range(2):
        engine = EngineProcess("--data-dir", str(tmp_path))
        engine.load(test_model, "nf4")
        replies.append(engine.turn(RespondRequest("q", text="hi", max_new_tokens=4, speak=False))[-1][0]["text"])
        engine.close()
        caches.append({(path, path.stat().st_ino, path.stat().st_mtime_ns)
                       for path in (tmp_path / "cache" / "weights").rglob("nf4-*.safetensors")})
    assert len(caches[0]) == 1  # written by the first start
    assert caches[1] == caches[0]  # and taken as it is by the second, not written again
    assert replies[0] == replies[1]


def test_full_spoken_turn(engine: EngineProcess) -> None:
    speech = tone(2.0, 44100).astype("<f4").tobytes()
    frames = engine.turn(RespondRequest("s1", speech=speech, sample_rate=44100, max_new_tokens=16))
    done = frames[-1][0]
    assert done["type"] == "turn_done" and not done["cancelled"] and done["adapter"] == "speech"
    assert done["tokens"]["speech"] == 300 and 1 <= done["tokens"]["generated"] <= 16
    assert "".join(h["text"] for h, _ in frames if h["type"] == "text_delta") == done["text"]
    chunks = [(h, p) for h, p in frames if h["type"] == "audio_chunk"]
    assert chunks and all(h["sample_rate"] == 16000 and len(p) == 4 * h["samples"] for h, p in chunks)
    audio = np.frombuffer(b"".join(p for _, p in chunks), dtype="<f4")
    assert np.isfinite(audio).all() and len(audio) / 16000 == pytest.approx(done["audio_seconds"])
    assert set(done["timings_ms"]) >= {"encode", "prefill", "first_text", "first_audio", "total"}


def test_cancel_mid_reply(engine: EngineProcess) -> None:
    engine.request("reset", "r")
    engine.send(RespondRequest("c1", text="Tell me a long story.", max_new_tokens=16).encode())
    engine.until("c1", "text_delta")
    engine.request("cancel", "c1")
    done = engine.until("c1", "turn_done")[-1][0]
    assert done["cancelled"] and done["tokens"]["generated"] < 16


def test_second_respond_is_refused_while_one_runs(engine: EngineProcess) -> None:
    engine.request("reset", "r")
    first = RespondRequest("a1", text="First question?", max_new_tokens=8, speak=False)
    second = RespondRequest("b1", text="Second question?", max_new_tokens=4, speak=False)
    engine.send(first.encode() + second.encode())
    frames = engine.until("a1", "turn_done")
    about_second = [h for h, _ in frames if h["id"] == "b1"]
    assert [h["type"] for h in about_second] == ["error"]
    assert "turn a1 is still running" in about_second[0]["message"]
    engine.send(second.encode())  # sent the moment turn_done arrived: the engine is free by then
    assert engine.until("b1", "turn_done", "error")[-1][0]["type"] == "turn_done"


def prefetch(engine: EngineProcess, image: bytes) -> None:
    engine.request("prefetch", "f", image)
    assert engine.until("f", "prefetched", "error")[-1][0]["type"] == "prefetched"


def wall_ms_to_reply(engine: EngineProcess, request: RespondRequest) -> tuple[float, dict]:
    engine.request("ping", "synced")
    engine.until("synced", "pong")
    started = time.perf_counter()
    engine.send(request.encode())
    done = engine.until(request.turn_id, "turn_done", "error")[-1][0]
    assert done["type"] == "turn_done", done
    return (time.perf_counter() - started) * 1000, done


def test_prefetch_spares_the_vision_tower_and_prefill_and_changes_nothing(engine: EngineProcess) -> None:
    engine.request("prefetch", "bad", b"not an image")
    assert "not a readable image" in engine.until("bad", "error")[-1][0]["message"]

    picture, small = png(896, 1), png(56, 2)
    question = RespondRequest("q", image=picture, text="What is this?", max_new_tokens=1, speak=False)
    warm, cold = [], []
    for _ in range(3):  # best of three: other work on the machine adds noise to single turns
        engine.request("reset", "r")  # each reply starts a fresh conversation
        prefetch(engine, picture)
        warm.append(wall_ms_to_reply(engine, question))
        engine.request("reset", "r")
        prefetch(engine, small)  # another picture: rolled back when the turn is about this one
        cold.append(wall_ms_to_reply(engine, question))
    assert len({done["text"] for _, done in warm + cold}) == 1
    assert all(done["tokens"]["prefetched"] for _, done in warm)
    assert not any(done["tokens"]["prefetched"] for _, done in cold)
    assert {done["tokens"]["image"] for _, done in warm + cold} == {1024}
    ratio = min(ms for ms, _ in warm) / min(ms for ms, _ in cold)
    assert ratio < 0.85, (warm, cold)


def test_transcribe_without_a_model_or_speech_is_refused(bare_engine: EngineProcess) -> None:
    bare_engine.send(TranscribeRequest("x1", tone(0.5).astype("<f4").tobytes()).encode())
    assert bare_engine.next()[0]["message"] == "no model loaded; load one first"
    bare_engine.request("transcribe", "x2")
    assert bare_engine.next()[0]["message"] == "transcribe x2: no speech to transcribe"


def test_a_transcription_is_answered_with_text_only_and_leaves_the_conversation_alone(engine: EngineProcess) -> None:
    question = RespondRequest("t1", text="Remember the word apple.", max_new_tokens=4, speak=False)
    follow_up = RespondRequest("t2", text="Which word?", max_new_tokens=6, speak=False)
    engine.turn(question)
    engine.send(follow_up.encode())
    plain = engine.until("t2", "turn_done")[-1][0]

    engine.turn(RespondRequest("t3", text="Remember the word apple.", max_new_tokens=4, speak=False))
    engine.send(TranscribeRequest("x1", tone(2.0, 44100).astype("<f4").tobytes(), 44100, max_new_tokens=5).encode())
    frames = engine.until("x1", "transcript", "error")
    assert [h["type"] for h, _ in frames] == ["transcript"]  # no text_delta, no audio, no turn_done
    transcript = frames[0][0]
    assert isinstance(transcript["text"], str) and transcript["text"] and not transcript["cancelled"]
    engine.send(RespondRequest("t4", text="Which word?", max_new_tokens=6, speak=False).encode())
    after = engine.until("t4", "turn_done")[-1][0]
    assert after["text"] == plain["text"] and after["tokens"]["prompt"] == plain["tokens"]["prompt"]


@pytest.mark.parametrize("preempt", ["respond", "prefetch"])
def test_a_turn_preempts_transcriptions(engine: EngineProcess, preempt: str) -> None:
    engine.request("reset", "r")
    speech = tone(2.0).astype("<f4").tobytes()
    running, queued = (TranscribeRequest(name, speech, max_new_tokens=400) for name in ("x1", "x2"))
    turn = RespondRequest("t1", text="Hello?", max_new_tokens=3, speak=False)
    engine.send(running.encode() + queued.encode())
    time.sleep(0.3)  # x1 is decoding by now
    engine.send(turn.encode() if preempt == "respond" else encode_frame({"type": "prefetch", "id": "f"}, png(56, 3)))
    frames = engine.until("x2", "transcript", "error")
    answers = [h for h, _ in frames if h["id"] in ("x1", "x2")]
    assert [(h["type"], h["cancelled"], h["text"]) for h in answers[1:]] == [("transcript", True, "")]
    assert answers[0]["type"] == "transcript" and answers[0]["cancelled"]
    if preempt == "respond":  # accepted, not refused, and answered right after
        assert engine.until("t1", "turn_done", "error")[-1][0]["type"] == "turn_done"
    else:
        assert engine.until("f", "prefetched", "error")[-1][0]["type"] == "prefetched"


def test_a_video_turn_crosses_the_wire_and_a_bad_frame_is_one_error(engine: EngineProcess) -> None:
    engine.request("reset", "r")
    frames = tuple(png(56, seed) for seed in range(5))  # 2.5 s at 2 fps: Lyra's sampling keeps 4, two pairs
    request = RespondRequest("v1", text="What changed?", max_new_tokens=2, speak=False, video=frames,
                             video_times=tuple(i * 0.5 for i in range(5)))
    done = engine.turn(request)[-1][0]
    assert done["type"] == "turn_done" and done["tokens"]["video"] == 2 * 2 * 2 and done["tokens"]["image"] == 0
    bad = RespondRequest("v2", text="And now?", video=(b"not an image",), video_times=(0.0,), max_new_tokens=1)
    error = engine.turn(bad)[-1][0]
    assert error["type"] == "error" and "not a readable image" in error["message"]
    assert engine.turn(request)[-1][0]["type"] == "turn_done"  # the engine serves on
