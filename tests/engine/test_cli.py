"""`main.py ask` and `make-test-model` as a user runs them: real processes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from main import main

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.mark.parametrize("inputs", [("audio",), ("audio", "image"), ("text", "image")])
def test_ask_json_in_nf4(test_model: Path, speech_wav: Path, image_png: Path, tmp_path: Path,
                         inputs: tuple[str, ...]) -> None:
    args = ["ask", "--model", str(test_model), "--quant", "nf4", "--device", "cpu", "--max-new-tokens", "8",
            "--out", str(tmp_path / "reply.wav"), "--json"]
    if "audio" in inputs:
        args += ["--audio", str(speech_wav)]
    if "image" in inputs:
        args += ["--image", str(image_png)]
    if "text" in inputs:
        args += ["--text", "What is in the picture?"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["quantization"]["mode"] == "nf4" and summary["quantization"]["linear4bit_modules"] == 62
    assert summary["quantization"]["linear8bit_modules"] == 1  # lm_head
    assert summary["tokens"]["generated"] == 8 and (summary["tokens"]["image"] == 24) == ("image" in inputs)
    assert summary["adapter"] == ("speech" if "audio" in inputs else None)
    assert set(summary["timings_ms"]) >= {"encode", "prefill", "first_text", "total"}
    audio, rate = soundfile.read(tmp_path / "reply.wav")
    assert rate == summary["sample_rate"] == 16000
    assert len(audio) / rate == pytest.approx(summary["audio_seconds"], abs=1e-3)
    assert "Traceback" not in result.stderr


def test_text_streams_to_stdout_without_json(test_model: Path) -> None:
    result = run_cli("ask", "--model", str(test_model), "--text", "Hello", "--max-new-tokens", "3")
    assert result.returncode == 0 and result.stdout.strip()


def test_bad_inputs_give_one_line_and_no_file(test_model: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    out = tmp_path / "reply.wav"
    cases = [
        (["--audio", str(empty)], "empty"),
        (["--audio", str(tmp_path / "none.wav")], "no such audio file"),
        (["--image", str(empty), "--text", "hi"], "empty"),
        ([], "nothing to ask"),
    ]
    for extra, expected in cases:
        code = main(["ask", "--model", str(test_model), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: ") and expected in err
        assert err.count("\n") == 1
        assert not out.exists() and not list(tmp_path.glob(".reply.wav.*"))


def test_broken_model_folder_exits_1_with_one_line(tmp_path: Path, speech_wav: Path) -> None:
    result = run_cli("ask", "--model", str(tmp_path), "--audio", str(speech_wav))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_make_test_model_writes_a_loadable_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["make-test-model", str(tmp_path / "m")]) == 0
    assert "MB" in capsys.readouterr().out
    assert (tmp_path / "m" / "speech_lora" / "non_lora_trainables.bin").is_file()
