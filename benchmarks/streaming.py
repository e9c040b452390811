"""Streaming speech: time to first audio, unit-generation cost, speech overhead, vocoder speed, seams.

Runs on the tiny test checkpoint and on `mini-proportions` (Lyra-Mini's 1536 : 4096 LLM to
generator width ratio, scaled down), fp32 on the CPU, greedy decoding with end-of-turn tokens
ignored so every reply has exactly the requested length.
Usage: python benchmarks/streaming.py [--json] [--sizes tiny mini-proportions] [--replies 32 128 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from speech_generator_cost import measure as unit_cost  # noqa: E402

from engine.loading import load_lyra  # noqa: E402
from engine.model.vocoder import load_vocoder, write_random_vocoder  # noqa: E402
from engine.quantize import Precision  # noqa: E402
from engine.session import Session, TurnRequest, collect  # noqa: E402
from engine.speech_out import SpeechOutput  # noqa: E402
from engine.testing import write_test_model  # noqa: E402


def timed_turn(session: Session, tokens: int, speak: bool) -> dict:
    session.reset()
    session.end_ids = set()  # fixed-length replies
    done, audio = collect(session.respond(TurnRequest(text="Tell me about the picture.", max_new_tokens=tokens,
                                                      speak=speak)))
    return {**done.timings_ms, "audio_seconds": len(audio) / 16000, "units": done.tokens["units"],
            "first_audio_step": done.tokens["first_audio_step"]}


def first_chunk_vocoding_ms(lyra) -> float:
    """One first-chunk vocoder call: the chunk's units plus the context the streamer adds."""
    units = torch.randint(0, 1000, (6 + 8,))
    with torch.inference_mode():
        lyra.vocoder(units)
        started = time.perf_counter()
        lyra.vocoder(units)
    return (time.perf_counter() - started) * 1000


def early_unit_step_ms(lyra, steps: int = 4) -> float:
    """The speech generator's share of one of the reply's first decode steps (25 frames per token)."""
    stream = lyra.model.speech_generator.new_stream()
    hidden = torch.randn(steps, lyra.config.text.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        started = time.perf_counter()
        for state in hidden:
            stream.push(state)
    return (time.perf_counter() - started) * 1000 / steps


def streamed_vs_one_shot(lyra, states: int = 200) -> float:
    out = SpeechOutput(lyra.model.speech_generator, lyra.vocoder, first_chunk=4, later_chunk=12)
    hidden = torch.randn(states, lyra.config.text.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        streamed = np.concatenate([out.push(h) for h in hidden] + [out.flush()])
        one_shot = lyra.vocoder(torch.tensor(out.units.units)).numpy()
    return float(np.abs(streamed - one_shot).max()) if len(one_shot) else 0.0


def vocoder_rtf(folder: Path, small: bool) -> float:
    write_random_vocoder(folder, small=small, seed=0)
    vocoder = load_vocoder(folder / "g_00500000", folder / "config.json", torch.device("cpu"), torch.float32)
    units = torch.randint(0, 1000, (250,))  # ≈ 10 s at ~2 frames per unit
    with torch.inference_mode():
        started = time.perf_counter()
        audio = vocoder(units)
    return (time.perf_counter() - started) / (len(audio) / 16000)


def measure_size(size: str, replies: list[int], folder: Path) -> list[dict]:
    lyra = load_lyra(write_test_model(folder / size, size), Precision.parse("fp32", "cpu"))
    session = Session(lyra, extraction=None)
    vocode_ms = first_chunk_vocoding_ms(lyra)
    unit_step_ms = early_unit_step_ms(lyra)
    rows = []
    for tokens in replies:
        speech = timed_turn(session, tokens, speak=True)
        text = timed_turn(session, tokens, speak=False)
        step_ms = (text["total"] - text["prefill"]) / tokens
        speech_step_ms = step_ms + unit_step_ms  # a decode step that also generates its 25 unit frames
        rows.append({
            "measure": "reply", "size": size, "reply_tokens": tokens,
            "first_audio_ms": speech.get("first_audio"), "full_reply_ms": speech["total"],
            "first_audio_step": speech["first_audio_step"],  # decode steps before the first audio chunk
            "prefill_ms": speech["prefill"], "decode_step_ms": round(step_ms, 2),
            "speech_decode_step_ms": round(speech_step_ms, 2),
            "first_audio_budget_ms": round(speech["prefill"] + 3 * speech_step_ms + vocode_ms, 1),
            "first_audio_budget_text_steps_ms": round(speech["prefill"] + 3 * step_ms + vocode_ms, 1),
            "speech_overhead": round(speech["total"] / text["total"], 3),
            "audio_seconds": round(speech["audio_seconds"], 2), "units": speech["units"],
        })
    rows.append({"measure": "seams", "size": size, "max_abs_diff": streamed_vs_one_shot(lyra)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mini-proportions"])
    parser.add_argument("--replies", type=int, nargs="+", default=[32, 128, 512])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            rows += measure_size(size, args.replies, Path(folder))
        rows.append({"measure": "unit_cost", **unit_cost(0)})
        rows.append({"measure": "vocoder_rtf", "small": round(vocoder_rtf(Path(folder) / "v1", True), 4),
                     "lj_size": round(vocoder_rtf(Path(folder) / "v2", False), 4)})
    for row in rows:
        print(json.dumps(row) if args.json else row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
