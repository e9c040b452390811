"""Video turns: vision tokens, ViT encode time and prefill time per second of video, by token budget.

Bench shape (`make-test-model --size bench`: hidden 512, 16 layers, a small ViT), fp32 on the CPU: a 1280 × 720
clip of 2, 4 or 8 s sent as the app sends it (JPEG frames at 2 fps with their timestamps, through
`video_from_frames`) and asked about in one turn (`Session.respond`, one reply token, no speech out), with token
extraction off and at the default 4 × 0.7. Budgets: Lyra's own sampling (none), then smaller ones.

`--mini` adds the real Lyra-Mini shapes, random weights, one part per process to stay under 8 GB: its ViT
(Qwen2-VL-2B's, 675 M parameters) encoding the 4 s clip, and its LLM (1.5 B) prefilling that many video tokens.
Usage: python benchmarks/video_budget.py [--json] [--mini] [--seconds 2 4 8] [--budgets 0 1024 256] [--shape bench]
(`--shape tiny` is the quick run the tests make).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {"off": None, "4x0.7": (4, 0.7)}
QUESTION = "What did I just hold up to the camera?"
FRAME_SIZE = (1280, 720)
SENT_FPS = 2.0  # the app's ring of recent frames
REPEATS = 2


def clip(seconds: float) -> tuple[list[bytes], list[float]]:
    """A moving test pattern as the app sends it: JPEG frames at 2 fps and their times."""
    from PIL import Image

    width, height = FRAME_SIZE
    y, x = np.mgrid[0:height, 0:width]
    frames, times = [], []
    for index in range(round(seconds * SENT_FPS)):
        rgb = np.stack([(x // 4 + 12 * index) % 256, (y // 3) % 256, ((x + y) // 8 + 5 * index) % 256], axis=-1)
        out = io.BytesIO()
        Image.fromarray(rgb.astype(np.uint8)).save(out, format="JPEG", quality=90)
        frames.append(out.getvalue())
        times.append(index / SENT_FPS)
    return frames, times


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024**2, 2)
    raise RuntimeError("no VmHWM in /proc/self/status")


def bench_rows(shape: str, seconds: list[float], budgets: list[int | None]) -> list[dict]:
    from engine.extraction import ExtractionSettings
    from engine.loading import load_lyra
    from engine.media import video_from_frames
    from engine.quantize import Precision
    from engine.session import Session, TurnRequest, collect
    from engine.testing import write_test_model

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        lyra = load_lyra(write_test_model(Path(folder) / shape, shape), Precision.parse("fp32", "cpu"))
        collect(Session(lyra).respond(TurnRequest(text="warm up", max_new_tokens=1, speak=False)))
        for duration in seconds:
            frames, times = clip(duration)
            for budget in budgets:
                video = video_from_frames(frames, times, budget)
                for setting, values in SETTINGS.items():
                    runs = []
                    for _ in range(REPEATS):  # the fastest run: the machine is shared
                        session = Session(lyra, extraction=ExtractionSettings(*values) if values else None)
                        request = TurnRequest(video=video, text=QUESTION, max_new_tokens=1, speak=False)
                        done, _ = collect(session.respond(request))
                        runs.append((done.timings_ms["encode"], done.timings_ms["prefill"] - done.timings_ms["encode"]))
                    encode, prefill = min(run[0] for run in runs), min(run[1] for run in runs)
                    rows.append({
                        "shape": shape, "seconds": duration, "budget": budget, "extraction": setting,
                        "frames": len(video.frames), "frame_size": list(video.frames.shape[1:3]),
                        "vision_tokens": done.tokens["video"], "kv_cache_tokens": done.tokens["kv_cache_tokens"],
                        "encode_ms": encode, "prefill_ms": round(prefill, 1),
                        "tokens_per_s": round(done.tokens["video"] / duration, 1),
                        "encode_ms_per_s": round(encode / duration, 1),
                        "prefill_ms_per_s": round(prefill / duration, 1),
                    })
    return rows


def mini_vit_point(seconds: float, budget: int | None) -> dict:
    """Lyra-Mini's ViT (random weights) encoding the clip: one pass over its frame pairs."""
    import torch
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    from engine.catalog import CATALOG
    from engine.media import prepare_video, video_from_frames
    from engine.model.lyra import vision_config

    torch.manual_seed(0)
    vit = Qwen2VisionTransformerPretrainedModel(vision_config(CATALOG["Lyra-Mini-3B"].config(), "sdpa")).eval()
    video = video_from_frames(*clip(seconds), budget)
    prepared = prepare_video(video)
    with torch.inference_mode():
        started = time.perf_counter()
        vit(prepared.pixel_values, grid_thw=prepared.grid_thw)
        encode = (time.perf_counter() - started) * 1000
    return {"shape": "mini", "part": "vit", "seconds": seconds, "budget": budget, "frames": len(video.frames),
            "frame_size": list(video.frames.shape[1:3]), "vision_tokens": video.tokens, "encode_ms": round(encode),
            "encode_ms_per_s": round(encode / seconds), "peak_rss_gb": peak_rss_gb()}


def mini_prefill_point(seconds: float, tokens: int, setting: str) -> dict:
    """Lyra-Mini's LLM (random weights) prefilling `tokens` video tokens after the ChatML system prompt."""
    import torch

    from engine import extraction
    from engine.catalog import CATALOG
    from engine.loading import parameters_on_meta
    from engine.model.kv_cache import GrowingCache
    from engine.model.lyra import LyraModel, SpeechEncoderDims

    torch.manual_seed(0)
    config = CATALOG["Lyra-Mini-3B"].config()
    with parameters_on_meta():  # the towers stay on the meta device: only the LLM is built for real
        model = LyraModel(config, SpeechEncoderDims(128, 64, 1, 64, 1500, 64))
    model.llm = type(model.llm)(model.llm.config).eval()
    hidden_size = config.text.hidden_size
    text_tokens = 40
    embeds = torch.randn(1, text_tokens + tokens, hidden_size) * 0.02
    positions = torch.arange(text_tokens + tokens).expand(3, -1)
    media = torch.zeros(text_tokens + tokens, dtype=torch.bool)
    media[20:20 + tokens] = True
    settings = extraction.ExtractionSettings(*SETTINGS[setting]) if SETTINGS[setting] else None
    with torch.inference_mode():
        started = time.perf_counter()
        extraction.prefill(model, embeds, positions, media, GrowingCache(), settings)
        prefill = (time.perf_counter() - started) * 1000
    return {"shape": "mini", "part": "llm", "seconds": seconds, "vision_tokens": tokens, "extraction": setting,
            "prefill_ms": round(prefill), "prefill_ms_per_s": round(prefill / seconds), "peak_rss_gb": peak_rss_gb()}


def in_process(*args: str) -> dict:
    """One Mini point in a fresh process, so each part's memory is its own."""
    result = subprocess.run([sys.executable, __file__, "--point", *args], capture_output=True, text=True, check=True,
                            cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--shape", default="bench", choices=("bench", "tiny"), help="test-model shape")
    parser.add_argument("--mini", action="store_true", help="also the real Lyra-Mini ViT and LLM (a few minutes)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 1024, 256], help="0: Lyra's sampling")
    parser.add_argument("--mini-budgets", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--point", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        kind, seconds, value, *rest = args.point
        point = (mini_vit_point(float(seconds), int(value) or None) if kind == "vit"
                 else mini_prefill_point(float(seconds), int(value), rest[0]))
        print(json.dumps(point))
        return 0

    rows = bench_rows(args.shape, args.seconds, [budget or None for budget in args.budgets])
    if args.mini:
        for budget in args.mini_budgets:
            vit = in_process("vit", "4", str(budget))
            rows.append(vit)
            rows += [in_process("llm", "4", str(vit["vision_tokens"]), setting) for setting in SETTINGS]
    for row in rows:
        print(json.dumps(row) if args.json else
              "  ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
