"""EngineClient against the real engine process on the test checkpoint, through Qt's event loop."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from app.engine_client import MAX_RESTARTS, EngineClient  # noqa: E402
from engine.protocol import PROTOCOL_VERSION, TOKEN_ENV, encode_frame, read_frame  # noqa: E402
from tests.signals import tone  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPEECH = tone(1.0).astype("<f4").tobytes()


@pytest.fixture(scope="module")
def client(qapp, test_model: Path) -> Iterator[EngineClient]:
    client = EngineClient()
    client.start()
    client.load_model(test_model, "fp32", "cpu")  # requests queue behind it, in the engine and before connecting
    yield client
    client.shutdown()


def test_importing_the_client_leaves_torch_out() -> None:
    code = "import sys, app.engine_client; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_engine_gets_the_data_folder_for_its_weight_cache(qapp, tmp_path: Path) -> None:
    # the engine keeps quantized weights there (tests/engine/test_server.py); without it no cache
    with_folder, without = EngineClient(data_dir=tmp_path), EngineClient()
    assert with_folder.process.arguments()[-2:] == ["--data-dir", str(tmp_path)]
    assert "--data-dir" not in without.process.arguments()


def test_full_turn_through_the_client(client: EngineClient, qtbot) -> None:
    deltas, chunks = [], []
    client.textDelta.connect(lambda turn, text: deltas.append((turn, text)))
    client.audioChunk.connect(lambda turn, pcm, rate: chunks.append((turn, pcm, rate)))
    with qtbot.waitSignal(client.turnDone, timeout=120_000) as done:
        turn = client.respond(SPEECH, 16000, None, "Please answer.", 16)
    turn_id, result = done.args
    assert turn_id == turn and not result["cancelled"] and result["adapter"] == "speech"
    assert "".join(text for t, text in deltas if t == turn) == result["text"]
    pcm = b"".join(chunk for t, chunk, _ in chunks if t == turn)
    assert pcm and {rate for *_, rate in chunks} == {16000}
    assert len(pcm) / 4 / 16000 == pytest.approx(result["audio_seconds"])


def test_a_transcription_through_the_client(client: EngineClient, qtbot) -> None:
    errors = []
    client.error.connect(lambda request, message: errors.append(message))
    with qtbot.waitSignal(client.transcribed, timeout=120_000) as answered:
        asked = client.transcribe(SPEECH, 16000, 6)
    request_id, result = answered.args
    assert request_id == asked and isinstance(result["text"], str) and not result["cancelled"]
    with qtbot.waitSignal(client.transcribed, timeout=10_000) as refused:
        asked = client.transcribe(b"", 16000, 6)  # the engine refuses it: its error goes to the asker
    assert refused.args == [asked, {"error": f"transcribe {asked}: no speech to transcribe"}]
    assert errors == [] and client.transcriptions == set()


def test_a_prefetch_is_acknowledged_by_its_own_event(client: EngineClient, qtbot) -> None:
    stages: list[str] = []
    client.progress.connect(lambda stage, _: stages.append(stage))
    picture = io.BytesIO()
    Image.new("RGB", (56, 56), (200, 0, 0)).save(picture, "PNG")
    with qtbot.waitSignal(client.prefetched, timeout=120_000) as acknowledged:
        asked = client.prefetch(picture.getvalue())
    assert acknowledged.args == [asked] and stages == []  # the model's progress line is left alone


def test_engine_killed_mid_reply_is_reported_then_restarted_with_the_model(client: EngineClient, qtbot) -> None:
    shown, finished = [], []  # what the app has shown of the conversation: it must survive the engine
    client.textDelta.connect(lambda turn, text: shown.append(text))
    client.turnDone.connect(lambda turn, result: finished.append(turn))
    with qtbot.waitSignal(client.textDelta, timeout=60_000):
        killed_turn = client.respond(None, 16000, None, "Tell me a long story.", 16)
    before, old_pid = "".join(shown), client.pid
    with qtbot.waitSignal(client.engineDied, timeout=1000) as died:
        killed = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
    assert time.monotonic() - killed < 1.0
    assert "killed (SIGKILL" in died.args[0]
    reloaded = []
    client.modelLoaded.connect(reloaded.append)
    with qtbot.waitSignals([client.modelLoaded, client.turnDone], order="strict", timeout=120_000):
        client.respond(None, 16000, None, "Are you back?", 4, speak=False)  # sent once the model is back
    assert reloaded[0]["precision"] == "fp32"
    assert client.pid not in (None, old_pid)
    assert killed_turn not in finished and "".join(shown).startswith(before)


def test_an_engine_that_cannot_start_is_reported(qapp, qtbot) -> None:
    client = EngineClient(python="/nonexistent/python3")
    with qtbot.waitSignal(client.engineDied, timeout=5000) as died:
        client.start()
    assert died.args[0].startswith("the engine could not start (/nonexistent/python3)")


def test_an_engine_that_keeps_failing_is_not_restarted_forever(qapp, qtbot) -> None:
    client = EngineClient(python="/bin/false")
    reasons = []
    client.engineDied.connect(reasons.append)
    client.start()
    qtbot.waitUntil(lambda: len(reasons) == MAX_RESTARTS + 1, timeout=10_000)
    qtbot.wait(300)
    assert reasons[0] == "the engine process exited with status 1"
    assert len(reasons) == MAX_RESTARTS + 1 and reasons[-1].endswith("so it was not restarted")


# ---- only this app talks to its engine -------------------------------------------------------

def engine_port(pid: int) -> int | None:
    """The port `pid` listens on, read from /proc as another local user reads /proc/net/tcp."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            sockets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if fields[3] == "0A" and f"socket:[{fields[9]}]" in sockets:  # 0A: listening
            return int(fields[1].split(":")[1], 16)
    return None


class Intruder(threading.Thread):
    """Connects to the engine's port the moment it appears and asks for a model and a ping."""

    def __init__(self, engine_pid: int) -> None:
        super().__init__(daemon=True)
        self.engine_pid = engine_pid
        self.app_is_in = threading.Event()  # past this, a port not seen yet is closed for good
        self.saw_port = threading.Event()
        self.answers: list[dict] | None = None  # what the engine sent it before closing; None: never let in

    def run(self) -> None:
        while (port := engine_port(self.engine_pid)) is None:
            if self.app_is_in.is_set():
                return
        self.saw_port.set()
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        except ConnectionRefusedError:  # the app was in first: the engine listens no more
            return
        with sock, sock.makefile("rb") as stream:
            sock.sendall(encode_frame({"type": "load_model", "id": "evil", "model": "/tmp/evil"}) +
                         encode_frame({"type": "ping", "id": "evil-ping"}))
            self.answers = []
            with contextlib.suppress(EOFError, ConnectionResetError):
                while True:
                    self.answers.append(read_frame(stream, sender="engine")[0])


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc as a local attacker would")


@needs_proc
def test_a_local_user_racing_the_app_to_its_engine_is_refused(qapp, qtbot) -> None:
    """As probed in issue 15: the intruder connects as soon as the port shows, the app is 5 ms slower."""
    intruders = []
    for _ in range(4):
        client = EngineClient()
        pongs = []
        client.pong.connect(pongs.append)
        with qtbot.waitSignal(client.ready, timeout=30_000):
            client.start()
            assert client.process.waitForStarted(10_000)
            intruder = Intruder(client.pid)
            intruder.start()
            intruder.saw_port.wait(10)
            time.sleep(0.005)  # the app reads the port only now, from the event loop
        intruder.app_is_in.set()
        intruder.join(30)
        assert not intruder.is_alive()
        # Connected before the app got in: one refusal, or closed unanswered if the app's hello was read first.
        assert intruder.answers in (None, [], [{"type": "error", "id": "", "v": PROTOCOL_VERSION, "payload_size": 0,
                                                 "message": "the first frame must be hello; this engine serves only "
                                                            "the app that started it"}])
        with qtbot.waitSignal(client.pong, timeout=10_000):
            asked = client.ping()
        assert pongs == [asked]
        client.shutdown()
        intruders.append(intruder)
    assert any(intruder.answers for intruder in intruders), "the intruder never won the race to connect"


@needs_proc
def test_each_engine_start_gets_a_new_token_in_its_environment_never_its_command_line(qapp, qtbot) -> None:
    client = EngineClient()
    tokens = []
    for _ in range(2):
        with qtbot.waitSignal(client.ready, timeout=30_000):
            if client.pid is None:
                client.start()
            else:
                os.kill(client.pid, signal.SIGKILL)  # restarted as after a crash
        proc = Path(f"/proc/{client.pid}")
        assert client.token.encode() not in (proc / "cmdline").read_bytes()  # any local user can read argv
        assert f"{TOKEN_ENV}={client.token}".encode() in (proc / "environ").read_bytes().split(b"\0")
        assert (proc / "environ").stat().st_mode & 0o077 == 0  # only the user (and root) can read the environment
        tokens.append(client.token)
    client.shutdown()
    assert len(set(tokens)) == 2 and all(len(token) == 64 for token in tokens)


def impostor(tmp_path: Path, mode: str) -> EngineClient:
    """A client whose 'Python' starts tests/app/impostor_engine.py in `mode` instead of the engine."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tests.app.impostor_engine {mode} "{tmp_path}/heard"\n')
    wrapper.chmod(0o755)
    return EngineClient(python=str(wrapper))


def test_a_ready_from_another_pid_is_not_our_engine(qapp, qtbot, tmp_path: Path) -> None:
    client = impostor(tmp_path, "wrong-pid")
    readies = []
    client.ready.connect(lambda: readies.append(True))
    client.load_model("/models/private", "fp32", "cpu")
    with qtbot.waitSignal(client.engineDied, timeout=30_000) as died:
        client.start()
    pid = died.args[0].rsplit("the engine is pid ", 1)[1].rstrip(")")
    assert died.args[0] == ("the process on the engine's port is not the engine this app started (its first "
                            f"message was 'ready' from pid {int(pid) + 1}, the engine is pid {pid})")
    assert readies == [] and not client.verified
    assert (tmp_path / "heard").read_bytes() == b""  # the model path never went out before a ready
    client.shutdown()


def test_bad_frames_from_the_engine_are_reported_and_an_unframable_one_restarts_it(qapp, qtbot,
                                                                                     tmp_path: Path) -> None:
    client = impostor(tmp_path, "bad-frames")
    errors, pongs = [], []
    client.error.connect(lambda frame_id, message: errors.append(message))
    client.pong.connect(pongs.append)
    with qtbot.waitSignal(client.ready, timeout=30_000):
        client.start()
    with qtbot.waitSignal(client.pong, timeout=10_000):
        first = client.ping()
    assert errors == ["bad message from the engine: unknown message type ['pong']",
                      "bad message from the engine: progress l: stage must be a string, got 3"] and pongs == [first]
    with qtbot.waitSignal(client.engineDied, timeout=10_000) as died:
        client.ping()
    assert died.args[0] == (f"bad message from the engine: payload of {2**62} bytes is over the 268435456-byte "
                            "limit; closing the connection")
    assert pongs == [first]  # the pong behind the unframable frame was never read
    client.shutdown()
