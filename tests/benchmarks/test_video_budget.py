"""benchmarks/video_budget.py keeps working: a quick run on the tiny shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "video_budget.py"


def test_a_budget_bounds_the_tokens_and_lyras_sampling_is_the_default() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny", "--seconds", "2", "--budgets", "0", "64",
                             "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {(row["budget"], row["extraction"]): row for row in map(json.loads, result.stdout.strip().splitlines())}
    assert set(rows) == {(None, "off"), (None, "4x0.7"), (64, "off"), (64, "4x0.7")}
    lyra = rows[None, "off"]  # 4 frames of 1280 × 720 as Lyra's CLI sizes them: 2 pairs of 20 × 36 tokens
    assert (lyra["frames"], lyra["frame_size"], lyra["vision_tokens"]) == (4, [560, 1008], 1440)
    assert lyra["tokens_per_s"] == 720 and lyra["encode_ms"] > 0 and lyra["prefill_ms"] > 0
    assert rows[64, "off"]["frames"] == 2 and 0 < rows[64, "off"]["vision_tokens"] <= 64
    assert rows[None, "4x0.7"]["kv_cache_tokens"] < lyra["kv_cache_tokens"]  # extraction thinned the video
