"""App tests run headless (Qt's offscreen platform) unless a real display is there (xvfb-run).

`pulse` and `question` serve the real-device tests: a private PulseAudio daemon whose null sinks are
the microphone and speaker (skipped without it, failed under OMNIVOX_E2E=require), and an espeak-ng
question with its length in seconds.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_env import pulseaudio, spoken_question

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="module")
def pulse() -> Iterator[dict[str, str]]:
    with pulseaudio() as env:
        yield env


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    return spoken_question(tmp_path_factory.mktemp("speech"))
