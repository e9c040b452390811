"""Every stage of a spoken turn about a screenshot at Lyra-Mini's or Lyra-Base's true shapes, and its memory.

Writes the real architecture with random weights in the released layout (`make-test-model --size
mini-real`; or takes `--model DIR`), then for each precision: a first start (quantizing, and writing the
weight cache in nf4 / int8) and a second start (from that cache), each in a fresh process, and on the
second one a turn — image encode (a 1240×800 screenshot), speech encode (7.9 s of speech, one padded 30 s
clip), prefill (token extraction 4 × 0.7), decode steps with speech out and then text-only, the vocoder,
and when the first audio came. Memory is read from /proc/self/status: resident anonymous memory (what
the process allocated) and file-mapped memory (pages of the memory-mapped weight files, which the kernel
can drop) are sampled apart every 10 ms, and VmHWM is the kernel's own peak of both; on CUDA the peak GPU
memory too. Ratios (second start / first) come from the same run.

Usage: python benchmarks/real_shape.py [--json] [--size mini-real|base-real|tiny|bench] [--model DIR]
       [--precisions nf4 int8 …] [--device cpu|cuda] [--work DIR]
The tiny and bench sizes are the small-shape mode CI runs (tests/benchmarks/test_real_shape.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEECH_SECONDS = 7.9
SCREENSHOT = (1240, 800)
DECODE_STEPS = 24
LOAD_HEADROOM_BYTES = 1_500_000_000  # goal: peak anonymous memory of an nf4 load ≤ weights + 1.5 GB
SECOND_START_GOAL = 0.25  # goal: an nf4 second start takes ≤ 25 % of the first


def proc_status() -> dict[str, int]:
    """RssAnon, RssFile and VmHWM of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            values[key] = int(value.split()[0]) * 1024
    return values


class MemoryPeaks:
    """Peaks of anonymous and file-mapped resident memory, sampled every 10 ms from a thread."""

    def __init__(self) -> None:
        self.anon = self.file = 0
        self.running = True
        threading.Thread(target=self.sample, daemon=True).start()

    def sample(self) -> None:
        while self.running:
            status = proc_status()
            self.anon, self.file = max(self.anon, status["RssAnon"]), max(self.file, status["RssFile"])
            time.sleep(0.01)

    def report(self, device: str) -> dict[str, int]:
        import torch

        status = proc_status()
        peaks = {"peak_anon_bytes": max(self.anon, status["RssAnon"]),
                 "peak_file_bytes": max(self.file, status["RssFile"]), "vm_hwm_bytes": status["VmHWM"]}
        if device == "cuda":
            peaks["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        return peaks

    def restart(self, device: str) -> None:
        import torch

        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current RSS
        status = proc_status()
        self.anon, self.file = status["RssAnon"], status["RssFile"]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()


def screenshot():  # noqa: ANN201 - a PIL image
    """Something like a screen: flat panels, text-like stripes and some noise (random pixels would be unlike one)."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", SCREENSHOT, (236, 238, 241))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(0)
    draw.rectangle((0, 0, SCREENSHOT[0], 40), fill=(40, 44, 52))
    for row in range(60, SCREENSHOT[1] - 20, 18):
        x = 30
        while x < SCREENSHOT[0] - 80:
            width = int(rng.integers(20, 90))
            draw.rectangle((x, row, x + width, row + 9), fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
            x += width + int(rng.integers(6, 14))
    return image


def speech_clip():  # noqa: ANN201 - engine.media.Speech
    """7.9 s of voiced-sounding signal: harmonics with a syllable-rate envelope."""
    import numpy as np

    from engine.media import SAMPLE_RATE, Speech

    t = np.arange(int(SPEECH_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return Speech((0.2 * voiced * envelope).astype(np.float32))


def run_point(model_dir: Path, mode: str, device: str, cache_dir: Path | None, turn: bool) -> dict:
    """One start in this process: the load, then (with `turn`) every stage of a spoken turn about a screenshot."""
    import torch

    from engine.loading import load_lyra, select_adapter
    from engine.media import speech_features
    from engine.prompt import mrope_positions, split_prompt, user_content
    from engine.quantize import Precision, weight_bytes
    from engine.session import Session
    from engine.speech_out import SpeechOutput

    def now() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    precision = Precision.parse(mode, device)
    peaks = MemoryPeaks()
    peaks.restart(device)
    started = now()
    lyra = load_lyra(model_dir, precision, cache_dir=cache_dir)
    row: dict = {"load_s": round(now() - started, 2), "weight_cache": lyra.report.weight_cache,
                 "weight_bytes": weight_bytes(lyra.model), "load_memory": peaks.report(device)}
    if not turn:
        return row

    image, speech = screenshot(), speech_clip()
    session, model = Session(lyra), lyra.model
    features = speech_features(speech, model.speech_tower.config.num_mel_bins)
    peaks.restart(device)
    with torch.inference_mode():
        started = now()
        image_embeds, grid = session.encode_image(image)
        image_s = now() - started
        select_adapter(model, "speech")
        speech_embeds = model.encode_speech(features, "speech")
        speech_s = now() - started - image_s

        content = user_content(True, True, None)
        pieces = split_prompt(lyra.tokenizer, session.turn_prompt(content), grid, speech_embeds.shape[0])
        embeds = session.embed_pieces(pieces, {"image": image_embeds, "speech": speech_embeds})
        positions, next_position = mrope_positions(pieces, 0)
        media_mask = torch.tensor([piece.is_media for piece in pieces for _ in range(piece.length)])
        mark = now()
        hidden, kept = session.forward(embeds, positions, media_mask, session.extraction)
        prefill_s = now() - mark

        speech_out = SpeechOutput(model.speech_generator, lyra.vocoder)
        step_s, vocoder_s, vocoder_calls, audio_samples, first_audio_s = [], 0.0, 0, 0, None
        for step in range(2 * DECODE_STEPS):  # with speech out first (as a spoken reply), then text only
            mark = now()
            token = model.logits(hidden).reshape(-1).argmax().view(1)
            frames = speech_out.frames(hidden[0]).tolist() if step < DECODE_STEPS else None
            position = torch.full((3, 1), next_position + step, dtype=torch.long, device=model.device)
            hidden, _ = session.forward(model.embed_tokens(token), position)
            step_s.append(now() - mark)
            if frames is not None:
                mark = now()
                audio = speech_out.push_frames(frames)
                if audio.size:
                    vocoder_s += now() - mark
                    vocoder_calls += 1
                    audio_samples += audio.size
                    first_audio_s = first_audio_s or now() - started
    speech_steps, text_steps = step_s[:DECODE_STEPS], step_s[DECODE_STEPS:]
    row["turn"] = {
        "image_encode_s": round(image_s, 2), "image_tokens": sum(p.length for p in pieces if p.kind == "image"),
        "speech_encode_s": round(speech_s, 2), "speech_tokens": int(speech_embeds.shape[0]),
        "prefill_s": round(prefill_s, 2), "prompt_tokens": len(media_mask),
        "media_kept_per_block": kept.media_kept_per_block,
        "decode_step_text_ms": round(1000 * sorted(text_steps)[len(text_steps) // 2], 1),
        "decode_step_with_speech_ms": round(1000 * sorted(speech_steps)[len(speech_steps) // 2], 1),
        "vocoder_ms_per_call": round(1000 * vocoder_s / vocoder_calls, 1) if vocoder_calls else None,
        "vocoder_real_time_factor": round(vocoder_s / (audio_samples / 16000), 3) if audio_samples else None,
        "first_audio_s": round(first_audio_s, 2) if first_audio_s else None,
        "memory": peaks.report(device),
    }
    return row


def point_in_subprocess(model_dir: Path, mode: str, device: str, cache_dir: Path | None, turn: bool) -> dict:
    command = [sys.executable, __file__, "--point", str(model_dir), "--precisions", mode, "--device", device]
    command += ["--cache", str(cache_dir)] if cache_dir else []
    command += ["--turn"] if turn else []
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{mode} point failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def default_precisions(device: str) -> list[str]:
    """What the machine runs: on the CPU the quantized modes and fp32 (its half-precision matmuls are slow);
    on a GPU the quantized modes and its native half precision."""
    if device == "cpu":
        return ["nf4", "int8", "fp32"]
    import torch

    from engine.quantize import native_bf16

    return ["nf4", "int8", "bf16" if native_bf16(torch.device("cuda")) else "fp16"]


def measure(model_dir: Path, precisions: list[str], device: str, work: Path) -> dict:
    rows = {}
    for mode in precisions:
        quantized = mode in ("nf4", "int8")
        cache = work / f"cache-{mode}" if quantized else None
        first = point_in_subprocess(model_dir, mode, device, cache, turn=not quantized)
        row = {"first_start": first}
        if quantized:  # the second start reads the cache the first wrote, and runs the turn
            second = point_in_subprocess(model_dir, mode, device, cache, turn=True)
            row["second_start"] = second
            row["second_to_first_start"] = round(second["load_s"] / first["load_s"], 3)
            shutil.rmtree(cache, ignore_errors=True)
        load_peak = first["load_memory"]["peak_anon_bytes"]
        row["load_peak_anon_over_weights_bytes"] = load_peak - first["weight_bytes"]
        if mode == "nf4":
            row["goals"] = {
                "second_start_at_most_25_percent": row["second_to_first_start"] <= SECOND_START_GOAL,
                "load_peak_anon_at_most_weights_plus_1_5_gb":
                    load_peak <= first["weight_bytes"] + LOAD_HEADROOM_BYTES,
            }
        rows[mode] = row
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--size", default="mini-real", help="mini-real, base-real, or tiny / bench (small-shape mode)")
    parser.add_argument("--model", type=Path, help="an existing checkpoint to measure (default: write one of --size)")
    parser.add_argument("--precisions", nargs="+", help="default: every precision this device runs")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--work", type=Path, help="folder for the written checkpoint and caches (default: a "
                                                  "temporary one); both are deleted at the end")
    parser.add_argument("--point", type=Path, help=argparse.SUPPRESS)  # one start, run in a child process
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--turn", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.point:
        print(json.dumps(run_point(args.point, args.precisions[0], device, args.cache, args.turn)))
        return 0

    from engine.testing import write_test_model

    precisions = args.precisions or default_precisions(device)
    work = Path(tempfile.mkdtemp(prefix="omnivox-real-shape-", dir=args.work))
    try:
        model_dir = args.model
        if model_dir is None:
            started = time.perf_counter()
            model_dir = write_test_model(work / args.size, args.size)
            written_s = round(time.perf_counter() - started, 1)
        else:
            written_s = None
        on_disk = sum(path.stat().st_size for path in model_dir.rglob("*.safetensors"))
        report = {"size": args.model.name if args.model else args.size, "device": device,
                  "cpus": len(os.sched_getaffinity(0)), "weights_on_disk_bytes": on_disk,
                  "checkpoint_written_s": written_s, "decode_steps": DECODE_STEPS,
                  "precisions": measure(model_dir, precisions, device, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
