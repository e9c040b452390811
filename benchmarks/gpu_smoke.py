"""One command that checks Omnivox's CUDA path on a GPU machine (and the same path on the CPU, dry).

    python benchmarks/gpu_smoke.py --json                   # on the GPU: tiny and bench shapes
    python benchmarks/gpu_smoke.py --json --device cpu      # the dry run CI keeps working (tiny shape)
    python benchmarks/gpu_smoke.py --json --wheels DIR      # a bare machine: DIR holds what its Python lacks

It writes random-weight test checkpoints in the released layout (engine/testing.py), loads each in
NF4, int8 and bf16 (fp16 on a GPU without native bf16; fp32 in the CPU dry run), and runs a spoken
turn with speech out and token extraction on. It prints the device, compute capability, the dtypes
each mode chose, load time, prefill and decode speed, time to first audio, peak GPU memory, how far
NF4's first-step logits and greedy tokens agree with the unquantized model's, whether the vocoder's
durations equal a CPU fp32 vocoder's, and whether an out-of-memory error in a middle layer (a real
one on the GPU: an allocation larger than the card) left the conversation as it was.

No network is needed. `--wheels DIR` installs every wheel in DIR (pip, --no-index --no-deps) into a
folder of its own and imports from there first; `--requirements` prints, pinned to this checkout's
environment, the distributions the engine imports besides torch, from which to fetch that folder
(README "GPU smoke test").
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

TURN_TOKENS = {"cuda": 48, "cpu": 8}  # decoded tokens per timed turn (end-of-turn ignored: fixed length)
AGREEMENT_TOKENS = 16
# NF4's first-step logits against the unquantized model's. A broken 4-bit kernel gives ~0; random weights
# drift with depth (CPU, against fp32: 0.982 for tiny's 4 layers, 0.937 for bench's 16).
COSINE_GOAL = 0.9


def install_wheels(folder: Path) -> None:
    """Make the wheels in `folder` importable ahead of the machine's own packages."""
    site = Path(tempfile.mkdtemp(prefix="omnivox-smoke-site-"))
    wheels = sorted(str(path) for path in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"{folder}: no .whl files")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *wheels], check=True)
    sys.path.insert(0, str(site))


def requirements() -> list[str]:
    """`name==version` of every distribution the engine imports, except torch and what torch needs."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires, version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    import engine.loading  # noqa: F401  (the imports are what is measured)
    import engine.session  # noqa: F401
    import engine.testing  # noqa: F401

    torch_side, pending = set(), ["torch"]  # torch's own dependency closure: a GPU machine has it with torch
    while pending:
        name = canonicalize_name(pending.pop())
        if name in torch_side:
            continue
        torch_side.add(name)
        try:
            needs = [Requirement(line) for line in requires(name) or []]
        except PackageNotFoundError:
            continue
        pending += [need.name for need in needs if need.marker is None or "extra" not in str(need.marker)]
    owners = packages_distributions()
    names = {dist for module in list(sys.modules) for dist in owners.get(module.split(".")[0], [])}
    return sorted(f"{name}=={version(name)}" for name in names
                  if canonicalize_name(name) not in torch_side | {"omnivox"})


def machine(device: str) -> dict:
    import torch

    from engine.doctor import bitsandbytes_report, driver_report
    from engine.quantize import native_bf16

    info = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "bitsandbytes_cuda": bitsandbytes_report().get("cuda_library")}
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        info |= {"device": torch.cuda.get_device_name(), "capability": f"{major}.{minor}",
                 "native_bf16": native_bf16(torch.device("cuda")), **driver_report()}
    else:
        info |= {"device": "cpu", "capability": None, "native_bf16": None}
    return info


def modes_for(device: str) -> tuple[tuple[str, ...], str]:
    """(precision modes to run, the unquantized one NF4 is compared with)."""
    if device == "cpu":
        return ("nf4", "int8", "fp32"), "fp32"
    import torch

    from engine.quantize import native_bf16

    half = "bf16" if native_bf16(torch.device("cuda")) else "fp16"
    return ("nf4", "int8", half), half


def spoken_turn(tokens: int):  # noqa: ANN201
    from engine.media import SAMPLE_RATE, speech_from_pcm
    from engine.session import TurnRequest
    from tests.signals import tone

    return TurnRequest(speech=speech_from_pcm(tone(3.0), SAMPLE_RATE), text="What did I say?", max_new_tokens=tokens)


def greedy_logits(lyra, tokens: int) -> list:  # noqa: ANN001
    """Every decode step's logits of a fixed-length text turn, on the CPU in fp32."""
    from engine.session import Session, TurnRequest, collect

    steps = []
    hook = lyra.model.lm_head.register_forward_hook(lambda module, args, out: steps.append(out.float().cpu()))
    try:
        session = Session(lyra)
        session.end_ids = set()
        collect(session.respond(TurnRequest(text="Describe the picture in detail.", max_new_tokens=tokens,
                                            speak=False)))
    finally:
        hook.remove()
    return [step.reshape(-1) for step in steps]


def run_mode(folder: Path, mode: str, device: str, reference_vocoder) -> tuple[dict, object]:  # noqa: ANN001
    import torch

    from engine.loading import load_lyra
    from engine.quantize import Precision
    from engine.session import Session, collect

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    lyra = load_lyra(folder, Precision.parse(mode, device))
    if device == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    session = Session(lyra)  # extraction on, as the app runs it
    session.end_ids = set()
    collect(session.respond(spoken_turn(4)))  # warm-up: kernels, cuBLAS handles, allocator pools
    session.reset()
    done, audio = collect(session.respond(spoken_turn(TURN_TOKENS[device])))
    timings = done.timings_ms
    prefill_ms = timings["prefill"] - timings["encode"]
    decode_ms = timings["total"] - timings["prefill"]
    units = torch.randint(0, lyra.vocoder.config.num_embeddings, (200,), generator=torch.Generator().manual_seed(3))
    differing = int((lyra.vocoder.durations(units).cpu() != reference_vocoder.durations(units)).sum())
    row = {
        "dtype": str(lyra.precision.dtype).removeprefix("torch."),
        "vocoder_dtype": str(next(lyra.vocoder.parameters()).dtype).removeprefix("torch."),
        "load_s": round(load_s, 2),
        "prompt_tokens": done.tokens["prompt"],
        "prefill_tokens_per_s": round(done.tokens["prompt"] / prefill_ms * 1000, 1),
        "decode_tokens_per_s": round(done.tokens["generated"] / decode_ms * 1000, 1),
        "first_audio_ms": timings.get("first_audio"),
        "audio_seconds": round(audio.size / 16000, 2),
        "media_kept_per_block": done.tokens["media_kept_per_block"],
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if device == "cuda" else None,
        "vocoder_durations_differing": differing,
        "vocoder_durations_equal_fp32": differing == 0,
    }
    return row, lyra


def agreement(quantized: list, reference: list) -> dict:
    import torch

    cosine = float(torch.nn.functional.cosine_similarity(quantized[0], reference[0], dim=0))
    same = [int(a.argmax()) == int(b.argmax()) for a, b in zip(quantized, reference, strict=True)]
    leading = next((index for index, equal in enumerate(same) if not equal), len(same))
    return {"first_step_logits_cosine": round(cosine, 5), "first_step_token_equal": same[0],
            "greedy_tokens_equal": sum(same), "greedy_tokens_equal_leading": leading, "greedy_tokens": len(same),
            "ok": cosine >= COSINE_GOAL}  # random weights give flat logits: the tokens are reported, not judged


def out_of_memory_check(lyra, device: str) -> dict:  # noqa: ANN001
    """A turn failing in a middle layer leaves the conversation as it was: the retried turn answers as a
    fresh conversation's does. On the GPU the failure is real: an allocation larger than the card."""
    import numpy as np
    import torch

    from engine.errors import OmnivoxError
    from engine.session import Session, TurnRequest, collect

    first = TurnRequest(text="My name is Ada.", max_new_tokens=4, speak=False)
    layer = lyra.model.llm.layers[len(lyra.model.llm.layers) // 2]
    original = layer.forward

    def failing(hidden: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if device == "cuda":
            torch.empty(2 * torch.cuda.get_device_properties(hidden.device).total_memory, dtype=torch.uint8,
                        device=hidden.device)
        raise torch.OutOfMemoryError("simulated on the CPU")

    session = Session(lyra)
    collect(session.respond(first))
    before = (session.cache.lengths(), session.next_position, session.turns)
    layer.forward = failing
    try:
        collect(session.respond(spoken_turn(6)))
        message = None
    except OmnivoxError as err:
        message = str(err)
    finally:
        layer.forward = original
    state_kept = (session.cache.lengths(), session.next_position, session.turns) == before
    retried, retried_audio = collect(session.respond(spoken_turn(6)))
    fresh = Session(lyra)
    collect(fresh.respond(first))
    expected, expected_audio = collect(fresh.respond(spoken_turn(6)))
    same = (retried.text == expected.text and retried.tokens == expected.tokens
            and retried_audio.size == expected_audio.size and np.allclose(retried_audio, expected_audio, atol=1e-4))
    return {"real": device == "cuda", "message": message, "state_kept": state_kept, "next_turn_as_fresh": same,
            "recovered": message is not None and message.startswith("out of GPU memory") and state_kept and same}


def run_shape(shape: str, device: str, work: Path) -> dict:
    from engine.model.vocoder import load_vocoder
    from engine.testing import write_test_model

    folder = write_test_model(work / shape, shape)
    reference_vocoder = load_vocoder(folder / "vocoder" / "g_00500000", folder / "vocoder" / "config.json")
    modes, reference = modes_for(device)
    rows, logits = {}, {}
    for mode in modes:
        rows[mode], lyra = run_mode(folder, mode, device, reference_vocoder)
        logits[mode] = greedy_logits(lyra, AGREEMENT_TOKENS)
        if mode == "nf4":
            oom = out_of_memory_check(lyra, device)
        del lyra
    return {"modes": rows, "nf4_vs_" + reference: agreement(logits["nf4"], logits[reference]), "out_of_memory": oom}


def shape_ok(shape: dict) -> bool:
    vocoder = all(row["vocoder_durations_equal_fp32"] and row["vocoder_dtype"] == "float32"
                  for row in shape["modes"].values())
    agreement = next(value for key, value in shape.items() if key.startswith("nf4_vs_"))
    return vocoder and agreement["ok"] and shape["out_of_memory"]["recovered"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default prints it indented)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--shapes", nargs="+", choices=("tiny", "bench"), help="default: both on cuda, tiny on cpu")
    parser.add_argument("--wheels", type=Path, help="a folder of wheels for what this Python lacks")
    parser.add_argument("--requirements", action="store_true", help="print the engine's distributions and stop")
    args = parser.parse_args()
    if args.wheels is not None:
        install_wheels(args.wheels)
    if args.requirements:
        print("\n".join(requirements()))
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible to torch; run with --device cpu for the dry run")
    started = time.perf_counter()
    report = machine(args.device)
    with tempfile.TemporaryDirectory(prefix="omnivox-smoke-") as work:
        shapes = args.shapes or (["tiny", "bench"] if args.device == "cuda" else ["tiny"])
        report["shapes"] = {shape: run_shape(shape, args.device, Path(work)) for shape in shapes}
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = all(shape_ok(shape) for shape in report["shapes"].values())
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
