"""Per-token cost of the CTC speech generator: KV-cached `UnitStream.push` vs the release's full re-run.

At generation step N the release re-runs the generator over all N states (25·N frames); the stream
only runs the 25 new frames against its cache. The model is a scaled-down Lyra generator (LLM width
384, generator width 1024, 8 heads, FFN 2752, 2 layers) with random weights, so that the whole
benchmark fits in about a minute on 2 CPU cores.

    .venv/bin/python benchmarks/speech_generator_cost.py [--json]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.model.speech_generator import CTCSpeechGenerator  # noqa: E402

LLM_HIDDEN = 384
STEPS = (64, 256, 512)
WINDOW = 8  # incremental cost at step N = median of pushes N − WINDOW + 1 … N (robust to a busy machine)


def measure(seed: int) -> dict[str, object]:
    torch.manual_seed(seed)
    generator = CTCSpeechGenerator(LLM_HIDDEN, layers=2, width=1024, heads=8, ffn=2752).eval()
    states = torch.randn(max(STEPS), LLM_HIDDEN)
    generator.units_from_hidden(states[:8])  # warm-up

    stream = generator.new_stream()
    push_seconds = []
    for state in states:
        start = time.perf_counter()
        stream.push(state)
        push_seconds.append(time.perf_counter() - start)
    incremental = {n: 1000 * statistics.median(push_seconds[n - WINDOW : n]) for n in STEPS}

    rerun, reference = {}, []
    for n in STEPS:
        start = time.perf_counter()
        reference = generator.units_from_hidden(states[:n])
        rerun[n] = 1000 * (time.perf_counter() - start)

    last = max(STEPS)
    return {
        "model": {"llm_hidden": LLM_HIDDEN, "layers": 2, "width": 1024, "heads": 8, "ffn": 2752},
        "threads": torch.get_num_threads(),
        "incremental_ms_per_token": {n: round(ms, 2) for n, ms in incremental.items()},
        "rerun_ms_per_token": {n: round(ms, 1) for n, ms in rerun.items()},
        "unit_cost_growth": round(incremental[last] / incremental[min(STEPS)], 2),
        "speedup_vs_rerun_512": round(rerun[last] / incremental[last], 1),
        "units_identical": stream.units == reference,
        "units": len(reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    result = measure(args.seed)
    if args.json:
        print(json.dumps(result))
        return
    for n in STEPS:
        print(
            f"N={n:4d}  incremental {result['incremental_ms_per_token'][n]:8.2f} ms/token"
            f"  re-run {result['rerun_ms_per_token'][n]:9.1f} ms/token"
        )
    print(f"incremental growth 64 → 512: ×{result['unit_cost_growth']}")
    print(f"speed-up over the re-run at N=512: ×{result['speedup_vs_rerun_512']}")
    print(f"units identical: {result['units_identical']} ({result['units']} units)")


if __name__ == "__main__":
    main()
