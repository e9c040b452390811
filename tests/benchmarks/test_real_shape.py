"""benchmarks/real_shape.py keeps working: its small-shape mode, as CI runs it (the real shapes are too slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "real_shape.py"


def test_the_small_shape_mode_reports_every_stage_both_starts_and_memory_apart(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--json", "--size", "tiny", "--device", "cpu",
                             "--precisions", "nf4", "fp32", "--work", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu" and set(report["precisions"]) == {"nf4", "fp32"}
    nf4 = report["precisions"]["nf4"]
    assert nf4["first_start"]["weight_cache"] == "written" and nf4["second_start"]["weight_cache"] == "loaded"
    assert nf4["second_to_first_start"] > 0 and set(nf4["goals"]) == {
        "second_start_at_most_25_percent", "load_peak_anon_at_most_weights_plus_1_5_gb"}
    assert report["precisions"]["fp32"]["first_start"]["weight_cache"] is None
    for row in (nf4["second_start"], report["precisions"]["fp32"]["first_start"]):
        memory = row["load_memory"]
        assert memory["peak_anon_bytes"] > row["weight_bytes"] and memory["peak_file_bytes"] > 0
        assert memory["vm_hwm_bytes"] >= memory["peak_anon_bytes"]
        turn = row["turn"]
        for stage in ("image_encode_s", "speech_encode_s", "prefill_s", "decode_step_text_ms",
                      "decode_step_with_speech_ms", "vocoder_ms_per_call", "first_audio_s"):
            assert turn[stage] > 0, stage
        assert turn["speech_tokens"] == 300 and turn["image_tokens"] > 0
    assert list(tmp_path.iterdir()) == []  # the written checkpoint and the caches are gone
