"""Weight memory of the real Lyra-Mini-3B and Lyra-Base-9B in every precision.

Builds each architecture on the meta device from its real configuration (no download) and
prices every tensor as the loader stores it. Usage: python benchmarks/memory.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.catalog import CATALOG  # noqa: E402
from engine.memory import build_on_meta, lora_bytes, weight_bytes_by_part  # noqa: E402
from engine.quantize import PRECISIONS  # noqa: E402

GOALS_GB = {"Lyra-Mini-3B": 3.0, "Lyra-Base-9B": 6.5}


def measure() -> list[dict]:
    rows = []
    for entry in CATALOG.values():
        config = entry.config()
        model = build_on_meta(config, entry.size)
        parameters = sum(p.numel() for p in model.parameters())
        for mode in PRECISIONS:
            parts = weight_bytes_by_part(model, mode)
            total = sum(parts.values())
            ranks = {"speech": entry.size.lora_rank, "long_speech": entry.size.long_lora_rank}
            adapters = {name: lora_bytes(config, rank, 4 if mode == "fp32" else 2) for name, rank in ranks.items()}
            rows.append({
                "model": entry.name, "precision": mode, "parameters": parameters,
                "weight_bytes": total, "weight_gb": round(total / 1e9, 3),
                "parts_gb": {k: round(v / 1e9, 3) for k, v in parts.items()},
                "adapter_gb": {k: round(v / 1e9, 3) for k, v in adapters.items()},
                "goal_gb": GOALS_GB[entry.name] if mode == "nf4" else None,
                "meets_goal": total / 1e9 <= GOALS_GB[entry.name] if mode == "nf4" else None,
            })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    rows = measure()
    if parser.parse_args().json:
        for row in rows:
            print(json.dumps(row))
    else:
        for row in rows:
            print(f"{row['model']:14} {row['precision']:5} {row['weight_gb']:7.2f} GB  adapters "
                  f"{row['adapter_gb']['speech']:.2f}/{row['adapter_gb']['long_speech']:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
