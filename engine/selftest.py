"""`omnivox --self-test`: does this installation answer a spoken question? Used on every built artifact.

It writes a random-weight checkpoint in the released layout to a temporary folder, speaks a voiced
test signal to it through the same path as `ask` (WAV file → resampling → Whisper features →
NF4 model through bitsandbytes → streamed text and speech), and checks that text and audio came
back. Before that it loads the native libraries the window needs outside the engine (PortAudio,
webrtcvad, OpenCV, LiveKit's echo canceller), because a frozen build most often breaks by losing one.

First of all it imports every module of the app and the engine, one by one, so that a frozen build
missing a package's files names the import that broke.

Prints one line either way: `self-test passed: …` (exit 0) or `self-test failed: <step>: <why>` (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np

QUESTION_SECONDS = 2.0
QUESTION_RATE = 44100  # not 16 kHz, so resampling runs as it does for a real microphone or file
REPLY_TOKENS = 8
NATIVE_MODULES = ("sounddevice", "webrtcvad", "cv2", "soundfile", "soxr")
APP_PACKAGES = ("engine", "app")


class StepFailed(Exception):
    def __init__(self, step: str, error: BaseException, where: str = "") -> None:
        detail = f": {error}" if str(error) else ""
        super().__init__(f"{step}: {where}{': ' if where else ''}{type(error).__name__}{detail}")


def voiced_signal(seconds: float, rate: int) -> np.ndarray:
    """Harmonics of 150 Hz with a syllable-rate wobble: passes as voice for the encoder and VAD."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def step(name: str):  # noqa: ANN201 - a decorator
    def wrap(function):  # noqa: ANN001, ANN202
        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            try:
                return function(*args, **kwargs)
            except Exception as err:  # every failure becomes the one line the user sees
                raise StepFailed(name, err) from err
        return run
    return wrap


def raising_module(error: BaseException) -> str:
    """The module whose code raised `error`: the deepest frame outside Python's import machinery."""
    names = [frame.f_globals.get("__name__", "?") for frame, _ in traceback.walk_tb(error.__traceback__)]
    outside_importlib = [name for name in names if not name.startswith("importlib")]
    return outside_importlib[-1] if outside_importlib else "?"


def module_names(package: str) -> Iterator[str]:
    """`package` and every module below it. Lazy: each package is imported by the caller before
    pkgutil looks inside it, so a failure is the caller's to report."""
    yield package
    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
        yield module.name


def import_app_modules() -> None:
    for package in APP_PACKAGES:
        for name in module_names(package):
            try:
                importlib.import_module(name)
            except Exception as err:  # named here, before a later step fails on it without saying where
                raised_in = raising_module(err)
                where = name if raised_in in (name, "?") else f"{name} (raised in {raised_in})"
                raise StepFailed("imports", err, where) from err


@step("native libraries")
def load_native_modules() -> None:
    for name in NATIVE_MODULES:
        importlib.import_module(name)


@step("echo canceller")
def load_echo_canceller() -> None:
    # The window's echo canceller loads a native library on first use (and falls back to the echo
    # gate without it), so only building one shows that a frozen app still has it.
    from livekit import rtc

    rtc.AudioProcessingModule(echo_cancellation=True)


@step("test checkpoint")
def make_checkpoint(folder: Path) -> Path:
    from engine.testing import write_test_model

    return write_test_model(folder / "Lyra_Test")


@step("spoken question")
def spoken_question(folder: Path):  # noqa: ANN201 - engine.media.Speech
    import soundfile

    from engine.media import read_speech

    path = folder / "question.wav"
    soundfile.write(path, voiced_signal(QUESTION_SECONDS, QUESTION_RATE), QUESTION_RATE)
    return read_speech(path)


@step("model load (nf4)")
def load_model(checkpoint: Path):  # noqa: ANN201 - engine.loading.Lyra
    from engine.loading import load_lyra
    from engine.quantize import Precision

    # NF4 on the CPU too: it is the only way the self-test reaches bitsandbytes' native library
    return load_lyra(checkpoint, Precision.parse("nf4"))


@step("spoken turn")
def answer(lyra, speech) -> tuple[object, float]:  # noqa: ANN001 - engine types, imported late (torch)
    from engine.events import AudioChunk, TurnDone
    from engine.media import SAMPLE_RATE
    from engine.session import Session, TurnRequest

    audio: list[np.ndarray] = []
    done: TurnDone | None = None
    for event in Session(lyra).respond(TurnRequest(speech=speech, max_new_tokens=REPLY_TOKENS, speak=True)):
        if isinstance(event, AudioChunk):
            audio.append(event.pcm)
        elif isinstance(event, TurnDone):
            done = event
    if done is None or done.cancelled:
        raise RuntimeError("the turn ended without its turn-done event")
    samples = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    if samples.size == 0 or not np.isfinite(samples).all():
        raise RuntimeError(f"no usable reply audio ({samples.size} samples)")
    return done.tokens.get("generated"), samples.size / SAMPLE_RATE


def run(_args: argparse.Namespace | None = None) -> int:
    started = time.perf_counter()
    try:
        import_app_modules()
        load_native_modules()
        load_echo_canceller()
        with tempfile.TemporaryDirectory(prefix="omnivox-self-test-") as temporary:
            folder = Path(temporary)
            speech = spoken_question(folder)
            lyra = load_model(make_checkpoint(folder))
            tokens, seconds = answer(lyra, speech)
    except StepFailed as failure:
        print(f"self-test failed: {failure}", file=sys.stderr)
        return 1
    import torch  # loaded by now; named so a GPU runtime (or its absence) shows in the line

    print(f"self-test passed: one spoken turn on {lyra.precision.device} (nf4, torch {torch.__version__} from "
          f"{Path(torch.__file__).parent}): {tokens} tokens, {seconds:.2f} s of speech, "
          f"{time.perf_counter() - started:.1f} s")
    return 0
