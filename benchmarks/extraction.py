"""Token extraction: prefill time, peak memory, KV cache and decode speed, off vs on.

Every (setting, media length) point runs in a fresh process on a random-weight checkpoint of
realistic CPU shape (hidden 512, 16 layers: `make-test-model --size bench`); ratios to "off"
come from the same run. Media are synthetic embeddings spliced into a ChatML prompt exactly as
speech features would be. Usage: python benchmarks/extraction.py [--json] [--lengths 1024 4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {"off": None, "4x0.7": (4, 0.7), "4x0.5": (4, 0.5)}
DECODE_STEPS = 16


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: restart VmHWM from the current RSS


def run_point(model_dir: Path, setting: str, media: int) -> dict:
    import torch

    from engine import extraction
    from engine.extraction import ExtractionSettings
    from engine.loading import load_lyra
    from engine.prompt import chat_text, mrope_positions, split_prompt
    from engine.quantize import Precision
    from engine.session import Session

    torch.manual_seed(0)
    lyra = load_lyra(model_dir, Precision.parse("fp32", "cpu"))
    session = Session(lyra, extraction=None)
    model = lyra.model
    text = chat_text("<speech>\nWhat is the speaker asking for, and what did they decide?", first_turn=True)
    pieces = split_prompt(lyra.tokenizer, text, speech_tokens=media)
    embeds = torch.cat([model.embed_tokens(torch.tensor(p.token_ids)) if not p.is_media
                        else torch.randn(media, model.config.text.hidden_size) for p in pieces])
    positions, next_position = mrope_positions(pieces, 0)
    mask = torch.tensor([p.is_media for p in pieces for _ in range(p.length)])
    settings = ExtractionSettings(*SETTINGS[setting]) if SETTINGS[setting] else None

    reset_peak_rss()
    baseline = peak_rss_bytes()
    with torch.inference_mode():
        started = time.perf_counter()
        hidden, stats = session.forward(embeds, positions, mask, settings)
        prefill_s = time.perf_counter() - started
        peak = peak_rss_bytes() - baseline
        kv_bytes = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in session.cache.layers)
        token = int(model.logits(hidden).argmax())
        started = time.perf_counter()
        for step in range(DECODE_STEPS):
            position = torch.full((3, 1), next_position + step, dtype=torch.long)
            hidden, _ = session.forward(model.embed_tokens(torch.tensor([token])), position)
            token = int(model.logits(hidden).argmax())
        decode_s = time.perf_counter() - started
    return {"setting": setting, "media_tokens": media, "prefill_s": round(prefill_s, 3),
            "peak_memory_bytes": peak, "kv_cache_bytes": kv_bytes,
            "kv_cache_tokens": extraction.kv_cache_tokens(session.cache),
            "decode_tokens_per_s": round(DECODE_STEPS / decode_s, 2),
            "media_kept_per_block": stats.media_kept_per_block}


def two_hour_voice_note() -> dict:
    """KV bytes of 72k speech tokens in Lyra-Base (bf16 cache), with and without (4, 0.7)."""
    from engine.catalog import CATALOG
    from engine.extraction import ExtractionSettings, kept_count

    text = CATALOG["Lyra-Base-9B"].config().text
    per_token_layer = 2 * text.num_kv_heads * (text.hidden_size // text.num_heads) * 2
    tokens = 72_000
    settings = ExtractionSettings(4, 0.7)
    boundaries = settings.scoring_layers(text.num_layers)
    seen, total = tokens, 0
    for layer in range(text.num_layers):
        total += seen
        if layer in boundaries:
            seen = kept_count(seen, settings.keep_rate)
    return {"measure": "kv_cache_2h_voice_note_lyra_base", "speech_tokens": tokens,
            "off_bytes": tokens * text.num_layers * per_token_layer, "extract_4x0.7_bytes": total * per_token_layer}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--point", nargs=3, metavar=("MODEL", "SETTING", "MEDIA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(run_point(Path(args.point[0]), args.point[1], int(args.point[2]))))
        return 0

    from engine.testing import write_test_model

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model_dir = write_test_model(Path(folder) / "bench", "bench")
        for media in args.lengths:
            points = {}
            for setting in SETTINGS:
                result = subprocess.run([sys.executable, __file__, "--point", str(model_dir), setting, str(media)],
                                        capture_output=True, text=True, check=True, cwd=ROOT)
                points[setting] = json.loads(result.stdout.strip().splitlines()[-1])
            off = points["off"]
            for setting, point in points.items():
                point |= {
                    "prefill_ratio": round(point["prefill_s"] / off["prefill_s"], 3),
                    "peak_memory_ratio": round(point["peak_memory_bytes"] / max(1, off["peak_memory_bytes"]), 3),
                    "kv_cache_ratio": round(point["kv_cache_bytes"] / off["kv_cache_bytes"], 3),
                    "decode_speedup": round(point["decode_tokens_per_s"] / off["decode_tokens_per_s"], 3),
                }
                rows.append(point)
                print(json.dumps(point) if args.json else
                      f"{media:6} {setting:6} prefill {point['prefill_s']:7.2f}s ×{point['prefill_ratio']:.2f}  "
                      f"peak ×{point['peak_memory_ratio']:.2f}  kv ×{point['kv_cache_ratio']:.2f}  "
                      f"decode ×{point['decode_speedup']:.2f}", flush=True)
    note = two_hour_voice_note()
    print(json.dumps(note) if args.json else note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
