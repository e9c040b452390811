"""EngineClient against the real engine process on the test checkpoint, through Qt's event loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from app.engine_client import MAX_RESTARTS, EngineClient  # noqa: E402
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
