"""`main.py ask` and `make-test-model` as a user runs them: real processes, one-line errors."""

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile

from main import main
from tests.probes import small_filesystem

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


def test_undecodable_text_fails_before_the_model_loads(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable.encode(), str(ROOT / "main.py").encode(), b"ask", b"--model",
                             str(tmp_path / "no-model").encode(), b"--text", b"caf\xe9 \xff\xfe?"],
                            capture_output=True, timeout=300, cwd=ROOT, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert result.returncode == 1 and result.stderr.decode() == (
        "error: --text is not valid UTF-8 text; check the terminal's encoding.\n")


@pytest.mark.parametrize(("extra", "expected"), [
    (["--max-image-side", "0"], "--max-image-side must be 28…2880 pixels, got 0"),
    (["--max-image-side", "100000"], "--max-image-side must be 28…2880 pixels"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--max-audio-seconds", "-1"], "--max-audio-seconds must be positive"),
    (["--out", "{tmp}"], "not a regular file"),
    (["--out", "{tmp}/fifo"], "not a regular file"),
    (["--out", "{tmp}/missing/reply.wav"], "no such folder for --out"),
])
def test_argument_errors_fail_before_the_model_loads(tmp_path: Path, capsys, extra: list[str], expected: str) -> None:
    os.mkfifo(tmp_path / "fifo")
    args = ["ask", "--model", str(tmp_path / "no-model"), "--text", "hi", *[a.format(tmp=tmp_path) for a in extra]]
    assert main(args) == 1  # a model folder that does not exist would be the error after the arguments
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_a_device_is_never_replaced(test_model: Path, tmp_path: Path, capsys) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    device = tmp_path / "full"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    link = tmp_path / "reply.wav"
    link.symlink_to(device)
    for out in (device, link):
        assert main(["ask", "--model", str(test_model), "--text", "hi", "--out", str(out)]) == 1
        assert "not a regular file" in capsys.readouterr().err
    assert stat.S_ISCHR(device.stat().st_mode) and link.is_symlink()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, full 1 MB filesystem: writes fail with ENOSPC as on a full disk."""
    with small_filesystem(tmp_path / "full", "1m") as mount_point:
        with contextlib.suppress(OSError), (mount_point / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        yield mount_point


def test_a_full_disk_is_one_error_line_and_leaves_nothing(test_model: Path, full_disk: Path, capsys) -> None:
    out = full_disk / "reply.wav"
    assert main(["ask", "--model", str(test_model), "--text", "hi", "--max-new-tokens", "4", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: cannot write the reply to {out}: No space left on device."
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
