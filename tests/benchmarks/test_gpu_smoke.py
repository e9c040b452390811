"""benchmarks/gpu_smoke.py keeps working: its CPU dry run, as CI runs it, on the tiny shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_smoke.py"


def test_the_dry_run_checks_every_mode_the_vocoder_and_the_out_of_memory_recovery() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--json", "--shapes", "tiny"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["device"] == "cpu"
    tiny = report["shapes"]["tiny"]
    assert set(tiny["modes"]) == {"nf4", "int8", "fp32"}
    for row in tiny["modes"].values():
        assert row["vocoder_dtype"] == "float32" and row["vocoder_durations_equal_fp32"]
        assert row["decode_tokens_per_s"] > 0 and row["first_audio_ms"] > 0 and row["audio_seconds"] > 0
        assert row["media_kept_per_block"][0] == 300 > row["media_kept_per_block"][-1]  # extraction was on
    assert tiny["nf4_vs_fp32"]["first_step_logits_cosine"] > 0.98 and tiny["nf4_vs_fp32"]["greedy_tokens"] == 16
    oom = tiny["out_of_memory"]
    assert oom["recovered"] and oom["message"].startswith("out of GPU memory at ")


def test_it_lists_the_wheels_a_machine_with_torch_needs() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--requirements"], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, check=True)
    names = {line.split("==")[0].lower() for line in result.stdout.split()}
    assert {"transformers", "bitsandbytes", "peft", "soundfile"} <= names
    assert not names & {"torch", "sympy", "networkx", "omnivox"}
