"""Shared fixtures: a random-weight Lyra checkpoint in the released layout, and models loaded from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from tests.signals import tone


@pytest.fixture(scope="session")
def test_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.testing import write_test_model

    return write_test_model(tmp_path_factory.mktemp("lyra") / "Lyra_Test")


@pytest.fixture
def model_copy(test_model: Path, tmp_path: Path) -> Path:
    """A private copy of the test checkpoint that a test may damage."""
    return Path(shutil.copytree(test_model, tmp_path / "model"))


@pytest.fixture(scope="session")
def lyra_fp32(test_model: Path):
    from engine.loading import load_lyra
    from engine.quantize import Precision

    return load_lyra(test_model, Precision.parse("fp32", "cpu"))


@pytest.fixture(scope="session")
def lyra_nf4(test_model: Path):
    from engine.loading import load_lyra
    from engine.quantize import Precision

    return load_lyra(test_model, Precision.parse("nf4", "cpu"))


@pytest.fixture
def speech_wav(tmp_path: Path) -> Path:
    path = tmp_path / "question.wav"
    soundfile.write(path, tone(2.0, 44100, channels=2), 44100)
    return path


@pytest.fixture
def image_png(tmp_path: Path) -> Path:
    path = tmp_path / "picture.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 180, 3), dtype=np.uint8)).save(path)
    return path
