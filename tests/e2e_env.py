"""Real-environment helpers for end-to-end tests: required tools, a PulseAudio daemon with virtual devices.

With OMNIVOX_E2E=require (CI), a missing tool fails the test instead of skipping it, so a
broken setup cannot pass as "skipped".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

# The virtual devices: "spk" is the speaker (its monitor is what the app played), "micsrc" is
# where a test plays audio, and "mic" is the microphone the app records from (micsrc's monitor).
PULSE_MODULES = [
    "--load=module-native-protocol-unix",
    "--load=module-null-sink sink_name=spk",
    "--load=module-null-sink sink_name=micsrc",
    "--load=module-remap-source master=micsrc.monitor source_name=mic",
]


def require_tools(*tools: str) -> None:
    """Skip (or fail, under OMNIVOX_E2E=require) unless every tool is on PATH."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    reason = (f"needs {', '.join(missing)} (Debian: pulseaudio pulseaudio-utils espeak-ng libasound2-plugins; "
              "for the window tests xvfb x11-apps xdotool xclip tesseract-ocr)")
    if os.environ.get("OMNIVOX_E2E") == "require":
        pytest.fail(reason)
    pytest.skip(reason)


def unavailable(reason: str) -> None:
    """The environment cannot run this test: fail under OMNIVOX_E2E=require, else skip."""
    if os.environ.get("OMNIVOX_E2E") == "require":
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def pulseaudio() -> Iterator[dict[str, str]]:
    """A private PulseAudio user daemon with the virtual devices, this process routed to them.

    Yields the environment for subprocesses (paplay, parecord). PortAudio is re-initialised so
    sounddevice lists the ALSA "pulse"/"default" devices that now reach the daemon.
    """
    require_tools("pulseaudio", "pactl", "paplay", "parecord")
    runtime = tempfile.mkdtemp(prefix="omnivox-pulse-")
    os.chmod(runtime, 0o700)
    overrides = {"XDG_RUNTIME_DIR": runtime, "PULSE_SOURCE": "mic", "PULSE_SINK": "spk"}
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    env = dict(os.environ)
    try:
        started = subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", *PULSE_MODULES],
                                 env=env, capture_output=True, text=True, timeout=20)
        if started.returncode != 0:
            unavailable(f"pulseaudio did not start: {started.stderr.strip()[-300:]}")
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                unavailable("pulseaudio started but does not answer")
            time.sleep(0.1)
        try:
            import sounddevice
        except OSError:
            unavailable("sounddevice cannot load PortAudio (Debian: libportaudio2)")
        sounddevice._terminate()  # PortAudio lists devices once, when it starts: start it again
        sounddevice._initialize()
        yield env
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=20)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(runtime, ignore_errors=True)


@contextmanager
def x_display() -> Iterator[str]:
    """The X display to open windows on: $DISPLAY when set (xvfb-run), else a private Xvfb for the block."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    require_tools("Xvfb")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        with os.fdopen(read) as announcement:  # Xvfb writes its display number once it accepts clients
            number = announcement.readline().strip()
        if not number:
            unavailable("Xvfb did not start")
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=20)


def spoken_question(folder: Path, text: str = "Could you tell me what is on the screen right now",
                    name: str = "question.wav") -> tuple[Path, float]:
    """An espeak-ng question as a wav file, and how long its speech lasts (leading/trailing silence excluded)."""
    require_tools("espeak-ng")
    path = folder / name
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    with wave.open(str(path)) as f:
        rate = f.getframerate()
        audio = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float64)
    energy = np.square(audio[: len(audio) // 110 * 110]).reshape(-1, 110).mean(axis=1)  # 5 ms blocks
    loud = np.flatnonzero(energy > energy.max() * 10 ** (-40 / 10))
    return path, (loud[-1] + 1 - loud[0]) * 110 / rate


class Recorder:
    """parecord from the virtual speaker's monitor, 16 kHz mono int16, on a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["parecord", "--raw", "--device=spk.monitor", "--rate=16000", "--channels=1", "--format=s16le",
             "--latency-msec=10"], env=env, stdout=subprocess.PIPE)
        self.data = bytearray()
        self.thread = threading.Thread(target=self.pump, daemon=True)
        self.thread.start()

    def pump(self) -> None:
        while chunk := self.process.stdout.read1(4096):
            self.data += chunk

    def stop(self) -> np.ndarray:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.thread.join(timeout=5)
        return np.frombuffer(bytes(self.data[: len(self.data) // 2 * 2]), np.int16)
