"""Headless commands: `ask` (one turn from files) and `make-test-model`.

Every user-fixable problem ends as one `error: …` line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import OmnivoxError
from engine.media import (
    DEFAULT_MAX_IMAGE_SIDE,
    DEFAULT_MAX_SPEECH_SECONDS,
    MAX_IMAGE_SIDE,
    MIN_IMAGE_SIDE,
    SAMPLE_RATE,
    check_token_budget,
    open_image,
    read_speech,
    read_video,
)
from engine.quantize import PRECISIONS

if TYPE_CHECKING:
    from PIL import Image

    from engine.extraction import ExtractionSettings
    from engine.media import Speech, Video


def add_commands(commands: argparse._SubParsersAction) -> None:
    ask = commands.add_parser("ask", help="answer one question from files, headless")
    ask.add_argument("--model", type=Path, required=True, help="Lyra model folder")
    ask.add_argument("--vocoder", type=Path, help="vocoder folder (default: MODEL/vocoder)")
    ask.add_argument("--audio", type=Path, help="spoken question (WAV, FLAC or OGG; any rate)")
    ask.add_argument("--image", type=Path, help="image to talk about (PNG, JPEG, WebP, BMP, GIF)")
    ask.add_argument("--video", type=Path,
                     help="video to talk about (any clip OpenCV reads: MP4, MKV, WebM, AVI, MOV …), sampled as "
                          "Lyra's CLI samples one: 2 frames a second, at most 16")
    ask.add_argument("--video-tokens", type=int, metavar="N",
                     help="vision token budget of the video: fewer frames and a smaller size so its tokens stay "
                          "within N (default: Lyra's, at most 768 per frame pair, 6144 in all)")
    ask.add_argument("--text", help="typed question or text after the spoken one")
    ask.add_argument("--out", type=Path, help="write the spoken reply here (WAV)")
    ask.add_argument("--quant", choices=PRECISIONS, help="precision (default: nf4 on CUDA, fp32 on CPU)")
    ask.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--max-image-side", type=int, default=DEFAULT_MAX_IMAGE_SIDE)
    ask.add_argument("--max-audio-seconds", type=float, default=DEFAULT_MAX_SPEECH_SECONDS)
    ask.add_argument("--extract-blocks", default="4",
                     help="token extraction: number of layer blocks (default 4), or 'off'")
    ask.add_argument("--keep-rate", type=float, default=0.7,
                     help="share of media tokens kept at each block boundary, in (0, 1] (default 0.7)")
    ask.add_argument("--attention", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                     help="attention kernel (flash_attention_2 needs CUDA and the flash-attn package)")
    ask.add_argument("--json", action="store_true", help="print one JSON summary (text streams to stderr)")
    ask.set_defaults(run=run_ask)

    models = commands.add_parser("models", help="list, download, verify or remove Lyra models")
    models.add_argument("--data-dir", type=Path, help="Omnivox data folder (default: the user data folder)")
    models.add_argument("--endpoint", help="hub address (default: huggingface.co or $HF_ENDPOINT)")
    models.add_argument("--vocoder-source", type=Path, metavar="FILE",
                        help='JSON naming where the unit vocoder is fetched from and its files\' sizes and SHA-256: '
                             '{"url": …, "files": {"g_00500000": {"size": …, "sha256": …}, "config.json": …}} '
                             "(default: the catalogue's)")
    action = models.add_subparsers(dest="action", required=True)
    action.add_parser("list", help="the catalogue, what is installed and what fits this GPU").add_argument(
        "--json", action="store_true")
    for name, text in (("download", "download a model (resumes an interrupted download)"),
                       ("verify", "check an installed model's files"),
                       ("remove", "delete an installed model or an unfinished download")):
        action.add_parser(name, help=text).add_argument("name", help="e.g. Lyra-Mini-3B")
    action.choices["download"].add_argument(
        "--json", action="store_true", help="progress as JSON lines on stdout (for the window's model manager)")
    models.set_defaults(run=run_models)

    doctor = commands.add_parser("doctor", help="report Python, GPU, audio devices, cameras and models")
    doctor.add_argument("--data-dir", type=Path)
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(run=run_doctor)

    make = commands.add_parser("make-test-model", help="write a random-weight checkpoint in the released layout")
    make.add_argument("folder", type=Path)
    make.add_argument("--size", default="tiny",
                      help="tiny, bench, mini-proportions, or the real mini-real / base-real (~7 / ~19 GB)")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(run=run_make_test_model)


def check_ask_arguments(args: argparse.Namespace) -> None:
    if args.audio is None and args.image is None and args.video is None and not args.text:
        raise OmnivoxError("nothing to ask: pass --audio, --image or --video with --text, or --text.")
    if args.image is not None and args.video is not None:
        raise OmnivoxError("pass --image or --video, not both.")
    if args.video is not None and args.audio is None and not args.text:
        raise OmnivoxError("--video needs a question: add --audio or --text.")
    check_token_budget(args.video_tokens)
    if args.text is not None:
        try:
            args.text.encode("utf-8")
        except UnicodeEncodeError:  # bytes the locale could not decode reach us as lone surrogates
            raise OmnivoxError("--text is not valid UTF-8 text; check the terminal's encoding.") from None
    if not MIN_IMAGE_SIDE <= args.max_image_side <= MAX_IMAGE_SIDE:
        raise OmnivoxError(f"--max-image-side must be {MIN_IMAGE_SIDE}…{MAX_IMAGE_SIDE} pixels, "
                           f"got {args.max_image_side}.")
    if args.max_new_tokens < 1:
        raise OmnivoxError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if not args.max_audio_seconds > 0:
        raise OmnivoxError(f"--max-audio-seconds must be positive, got {args.max_audio_seconds}.")


def reply_target(out: Path) -> Path:
    """Where --out really writes (a symbolic link is followed): an existing regular file or a new name."""
    target = out.resolve()
    if target.exists() and not target.is_file():
        raise OmnivoxError(f"--out {out}: not a regular file (a folder or a device); name a file to write.")
    if not target.parent.is_dir():
        raise OmnivoxError(f"{out.parent}: no such folder for --out.")
    return target


class ReplyFile:
    """The spoken reply's WAV: a temporary file beside the target, made at once (so an unwritable folder
    fails before the model loads), renamed over the target only when whole — never over a non-file."""

    def __init__(self, target: Path) -> None:
        self.target = target
        try:
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as err:
            raise OmnivoxError(f"--out {target}: cannot write in {target.parent} ({err.strerror}).") from None
        os.close(handle)
        self.temporary = Path(name)

    def write(self, audio: np.ndarray) -> None:
        import soundfile

        encoded = io.BytesIO()
        soundfile.write(encoded, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        try:
            self.temporary.write_bytes(encoded.getvalue())
            reply_target(self.target)  # still not a folder or device: it may have changed while the model ran
            os.replace(self.temporary, self.target)
        except OSError as err:
            raise OmnivoxError(f"cannot write the reply to {self.target}: {err.strerror or err}.") from None

    def discard(self) -> None:
        self.temporary.unlink(missing_ok=True)


def run_ask(args: argparse.Namespace) -> int:
    # Arguments and inputs are checked before the (slow) model load so a mistake fails at once.
    check_ask_arguments(args)
    target = reply_target(args.out) if args.out is not None else None
    speech = read_speech(args.audio, args.max_audio_seconds) if args.audio else None
    image = open_image(args.image) if args.image else None
    video = read_video(args.video, args.video_tokens) if args.video else None
    settings = extraction_settings(args.extract_blocks, args.keep_rate)
    reply = ReplyFile(target) if target is not None else None  # proves the folder writable, before the model
    try:
        return answer(args, speech, image, video, settings, reply)
    finally:
        if reply is not None:
            reply.discard()


def answer(args: argparse.Namespace, speech: Speech | None, image: Image.Image | None, video: Video | None,
           settings: ExtractionSettings | None, reply: ReplyFile | None) -> int:
    """Load the model, run the turn, stream its text, write its audio and (with --json) the summary."""
    from engine.events import AudioChunk, TextDelta, TurnDone
    from engine.loading import load_lyra  # torch and transformers load here, not at start-up
    from engine.quantize import Precision, count_quantized, weight_bytes
    from engine.session import Session, TurnRequest

    precision = Precision.parse(args.quant, args.device)
    started = time.perf_counter()
    lyra = load_lyra(args.model, precision, args.vocoder, attn_implementation=args.attention)
    load_ms = round((time.perf_counter() - started) * 1000, 1)
    session = Session(lyra, max_image_side=args.max_image_side, extraction=settings)
    request = TurnRequest(speech=speech, image=image, text=args.text, max_new_tokens=args.max_new_tokens,
                          speak=args.out is not None or args.json, video=video)
    stream = sys.stderr if args.json else sys.stdout
    chunks: list[np.ndarray] = []
    done: TurnDone | None = None
    for event in session.respond(request):
        if isinstance(event, TextDelta):
            stream.write(event.text)
            stream.flush()
        elif isinstance(event, AudioChunk):
            chunks.append(event.pcm)
        else:
            done = event
    stream.write("\n")
    assert done is not None
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if reply is not None:
        reply.write(audio)
    if args.json:
        summary = {
            "text": done.text,
            "audio_seconds": round(done.audio_seconds, 3),
            "sample_rate": SAMPLE_RATE,
            "timings_ms": {"load": load_ms, **done.timings_ms},
            "tokens": done.tokens,
            "quantization": {
                "mode": precision.mode,
                "device": str(precision.device),
                **count_quantized(lyra.model),
                "weight_bytes": weight_bytes(lyra.model),
            },
            "adapter": done.adapter,
            "unexpected_keys": lyra.report.unexpected,
        }
        print(json.dumps(summary))
    return 0


def extraction_settings(blocks: str, keep_rate: float):  # noqa: ANN201 - ExtractionSettings | None
    from engine.extraction import ExtractionSettings

    if blocks == "off":
        return None
    try:
        count = int(blocks)
    except ValueError:
        raise OmnivoxError(f"--extract-blocks takes a whole number or 'off', got {blocks!r}.") from None
    settings = ExtractionSettings(blocks=count, keep_rate=keep_rate)
    settings.validate(10**6)  # the model's own layer count is checked when the session starts
    return settings


def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("Omnivox", appauthor=False))


def run_models(args: argparse.Namespace) -> int:
    from engine.catalog import VOCODER
    from engine.models import ModelStore, Progress, model_listing, read_vocoder_source

    vocoder = read_vocoder_source(args.vocoder_source) if args.vocoder_source else VOCODER
    store = ModelStore(args.data_dir or default_data_dir(), endpoint=args.endpoint, vocoder=vocoder)
    if args.action == "list":
        rows = model_listing(store)
        if args.json:
            print(json.dumps(rows))
        for row in rows if not args.json else []:
            state = "installed" if row["installed"] else "not installed"
            fits = {True: "fits this GPU", False: "too big for this GPU", None: "no CUDA GPU"}[row["fits_gpu"]]
            print(f"{row['name']:14} {row['parameters']:>8}  download {row['download_gb']:5.1f} GB  "
                  f"NF4 {row['nf4_gb']:4.1f} GB  {fits}  {state}")
    elif args.action == "download":
        def show(progress: Progress) -> None:
            if args.json:
                print(json.dumps({"event": "progress", "file": progress.file, "done": progress.done,
                                  "total": progress.total}), flush=True)
                return
            done, total = progress.file_done, progress.file_total
            share = f"{100 * done / total:5.1f}%" if total else f"{done / 1e6:8.1f} MB"
            print(f"\r{progress.file}: {share}", end="", file=sys.stderr, flush=True)

        try:
            paths = store.download(args.name, progress=show)
        except OmnivoxError:
            if not args.json:
                print(file=sys.stderr)  # end the progress line: the error gets a line of its own
            raise
        if args.json:
            print(json.dumps({"event": "installed", "name": args.name, "folder": str(paths.folder),
                              "vocoder": str(paths.vocoder)}), flush=True)
        else:
            print(f"\n{args.name} is ready in {paths.folder}", file=sys.stderr)
    elif args.action == "verify":
        problems = store.verify(args.name)
        for problem in problems:
            print(problem)
        if problems:
            raise OmnivoxError(f"{args.name} is damaged ({len(problems)} problem(s)); download it again.")
        print(f"{args.name}: all files present and readable")
    else:
        store.remove(args.name)
        print(f"removed {args.name}")
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from engine.doctor import doctor

    report = doctor(args.data_dir or default_data_dir())
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:14} {value}")
    return 0


def run_make_test_model(args: argparse.Namespace) -> int:
    from engine.testing import SIZE_NAMES, write_test_model

    if args.size not in SIZE_NAMES:
        raise OmnivoxError(f"unknown size {args.size!r}; choose one of {', '.join(SIZE_NAMES)}.")
    folder = write_test_model(args.folder, args.size, args.seed)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    print(f"wrote a random-weight Lyra checkpoint ({args.size}, {size_mb:.1f} MB) to {folder}")
    return 0
