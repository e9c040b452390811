"""Fixtures for the end-to-end tests: an X display, PulseAudio with a virtual microphone and speaker,
a random-weight model, and a launcher for the real app as a subprocess.

Skipped when a tool is missing, failed instead under OMNIVOX_E2E=require (as .ci/run sets).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.omnivox import ROOT, Omnivox
from tests.e2e_env import pulseaudio, require_tools, spoken_question, x_display

TOOLS = ("xdotool", "xclip", "xwd", "tesseract", "espeak-ng")


@pytest.fixture(scope="package")
def desktop() -> Iterator[dict[str, str]]:
    """The environment of a desktop session: a display, and the virtual devices as the defaults."""
    require_tools(*TOOLS)
    with x_display() as display, pulseaudio() as env:
        env = {**env, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}  # other test modules choose offscreen
        yield env


@pytest.fixture(scope="package")
def lyra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight checkpoint in the released layout, made the way a user would."""
    folder = tmp_path_factory.mktemp("model") / "Lyra_Test"
    subprocess.run([sys.executable, "main.py", "make-test-model", str(folder)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    return folder


@pytest.fixture(scope="package")
def question(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """An espeak-ng question and the length of its speech."""
    return spoken_question(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="package")
def follow_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A longer one: long enough to hear the reply stop while it is being said."""
    return spoken_question(tmp_path_factory.mktemp("speech"), "And what about the picture on the left of the "
                           "window, is that a cat or a dog", "follow_up.wav")


@pytest.fixture
def launch(desktop: dict[str, str], lyra: Path, tmp_path: Path) -> Iterator[Callable[..., Omnivox]]:
    """Start the app (hands-free, the test model) and wait until it is listening with the model loaded.

    At the end every app still running is closed as a user would, and must exit cleanly; a
    screenshot of the last moment is kept in the test's tmp_path for a failure's post-mortem.
    """
    apps: list[Omnivox] = []

    def start(data_dir: Path | None = None, max_new_tokens: int = 24) -> Omnivox:
        app = Omnivox(desktop, lyra, data_dir or tmp_path / "data", max_new_tokens=max_new_tokens,
                      log=tmp_path / f"app-{len(apps) + 1}.log")
        apps.append(app)
        app.wait_ready()
        return app

    yield start
    if apps and apps[-1].process.poll() is None:
        Image.fromarray(apps[-1].screen.grab()).save(tmp_path / "last-screen.png")
    statuses = [app.close() for app in apps]
    assert statuses == [0] * len(apps), f"exit statuses {statuses}\n{apps[-1].log_tail()}"
