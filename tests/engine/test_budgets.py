"""No input expands past a budget (issue 15): the probes that once took gigabytes, generated on the fly.

Each probe runs `main.py ask` (typed text: a session, as the engine server drives it) in its own
process, and its peak memory is compared with the same process answering an ordinary question."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import OmnivoxError
from engine.loading import load_tokenizer
from engine.media import check_text_budget, open_image, read_speech
from tests.probes import PNG_RGBA, blank_png, silent_flac

ROOT = Path(__file__).resolve().parents[2]
GB = 1 << 30
ASK = """
import json, resource, sys
from main import main
code = main(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
open(sys.argv[1], "w").write(json.dumps({"code": code, "peak": peak}))
"""
SESSION_TEXT = """
import json, resource, sys
from pathlib import Path
from engine.errors import OmnivoxError
from engine.loading import load_lyra
from engine.quantize import Precision
from engine.session import Session, TurnRequest
lyra = load_lyra(Path(sys.argv[2]), Precision.parse("fp32", "cpu"))
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
text = "word " * int(sys.argv[3])
try:
    list(Session(lyra).respond(TurnRequest(text=text, max_new_tokens=2, speak=False)))
    outcome = "answered"
except OmnivoxError as err:
    outcome = str(err)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
open(sys.argv[1], "w").write(json.dumps({"loaded": loaded, "peak": peak, "outcome": outcome}))
"""


def run_probe(script: str, tmp_path: Path, *args: str) -> dict:
    result_file = tmp_path / f"result-{time.monotonic_ns()}.json"
    done = subprocess.run([sys.executable, "-c", script, str(result_file), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMNIVOX_DEBUG": ""})
    assert result_file.exists(), done.stderr[-3000:]
    return {**json.loads(result_file.read_text()), "stderr": done.stderr}


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("probes")
    return {
        "png_399_mpx": blank_png(folder / "399.png", 20_000, 19_950),  # 48 KB
        "png_780_mpx": blank_png(folder / "780.png", 27_930, 27_930),  # 95 KB
        "png_100_mpx_rgba": blank_png(folder / "100.png", 12_500, 8_000, PNG_RGBA),  # the largest accepted
        "flac_8ch_192k_8min": silent_flac(folder / "8min.flac", 8 * 60, 192_000, 8),
        "flac_8ch_192k_4min": silent_flac(folder / "4min.flac", 4 * 60, 192_000, 8),  # accepted, read in blocks
    }


@pytest.fixture(scope="module")
def ordinary_peak(test_model: Path, tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak memory of `ask` answering a typed question with the test model."""
    result = run_probe(ASK, tmp_path_factory.mktemp("ordinary"), "ask", "--model", str(test_model), "--text",
                       "What is it?", "--max-new-tokens", "2")
    assert result["code"] == 0, result["stderr"]
    return result["peak"]


PROBES = [  # probe, extra arguments, exit status, what stderr says
    ("png_399_mpx", ["--image", "{path}", "--text", "What is it?"], 1,
     "(399 megapixels); at most 100 megapixels are decoded"),
    ("png_780_mpx", ["--image", "{path}", "--text", "What is it?"], 1, "too large to decode"),
    ("png_100_mpx_rgba", ["--image", "{path}", "--text", "What is it?"], 0, ""),
    ("flac_8ch_192k_8min", ["--audio", "{path}"], 1, "convert it to mono or a lower rate"),
    ("flac_8ch_192k_4min", ["--audio", "{path}"], 0, ""),
]


@pytest.mark.slow
@pytest.mark.parametrize(("probe", "extra", "code", "message"), PROBES, ids=[probe[0] for probe in PROBES])
def test_ask_stays_within_a_gigabyte_of_an_ordinary_turn(test_model: Path, probes: dict[str, Path], tmp_path: Path,
                                                         ordinary_peak: int, probe: str, extra: list[str], code: int,
                                                         message: str) -> None:
    args = [a.format(path=probes[probe]) for a in extra]
    result = run_probe(ASK, tmp_path, "ask", "--model", str(test_model), "--max-new-tokens", "2", *args)
    print(f"{probe}: peak {result['peak'] / GB:.2f} GB, ordinary turn {ordinary_peak / GB:.2f} GB")
    assert result["code"] == code and message in result["stderr"] and "Traceback" not in result["stderr"]
    assert result["peak"] < ordinary_peak + GB


@pytest.mark.slow
def test_twenty_million_characters_through_a_session_stop_at_the_prompt_budget(test_model: Path,
                                                                              tmp_path: Path) -> None:
    started = time.perf_counter()
    result = run_probe(SESSION_TEXT, tmp_path, str(test_model), str(4_000_000))  # "word " × 4 M
    print(f"20 M characters: peak {result['peak'] / GB:.2f} GB, model loaded {result['loaded'] / GB:.2f} GB")
    assert result["outcome"].startswith("the text is 20,000,000 characters, more than the model's 16,384-token")
    assert result["peak"] < result["loaded"] + GB and time.perf_counter() - started < 60


def test_images_are_refused_from_their_header(probes: dict[str, Path]) -> None:
    for probe in ("png_399_mpx", "png_780_mpx"):
        started = time.perf_counter()
        with pytest.raises(OmnivoxError) as refused:
            open_image(probes[probe])
        assert time.perf_counter() - started < 1 and "\n" not in str(refused.value)  # nothing was decoded
    data = probes["png_780_mpx"].read_bytes()  # as the engine server gets it
    with pytest.raises(OmnivoxError, match="too large to decode"):
        open_image(data)


def test_audio_is_refused_from_its_header(probes: dict[str, Path]) -> None:
    started = time.perf_counter()
    with pytest.raises(OmnivoxError, match="8 channels at 192000 Hz for 8.0 min \\(737 M samples"):
        read_speech(probes["flac_8ch_192k_8min"])
    assert time.perf_counter() - started < 1


def test_block_reading_gives_what_reading_whole_gives(tmp_path: Path) -> None:
    import numpy as np
    import soundfile

    from engine.media import speech_from_pcm
    from tests.signals import tone

    path = tmp_path / "stereo.flac"
    soundfile.write(path, tone(7.3, 44100, channels=2), 44100)  # several blocks, a ragged last one
    whole, _ = soundfile.read(path, dtype="float32", always_2d=True)
    expected = speech_from_pcm(whole, 44100).samples
    actual = read_speech(path).samples
    assert abs(len(actual) - len(expected)) <= 1
    n = min(len(actual), len(expected))
    assert np.max(np.abs(actual[:n] - expected[:n])) < 1e-3


def test_text_is_counted_against_the_budget_piece_by_piece(test_model: Path) -> None:
    tokenizer = load_tokenizer(test_model)
    calls: list[int] = []
    encode = tokenizer.encode
    tokenizer.encode = lambda text, **kw: calls.append(len(text)) or encode(text, **kw)  # type: ignore[method-assign]
    check_text_budget("What is on my screen? " * 100, tokenizer, 16384)  # fits: no error
    calls.clear()
    started = time.perf_counter()
    with pytest.raises(OmnivoxError, match="more than the model's 100-token prompt can hold; shorten it"):
        check_text_budget("word " * 4_000_000, tokenizer, 100)
    assert time.perf_counter() - started < 2 and sum(calls) <= 8192  # stopped after the first piece
