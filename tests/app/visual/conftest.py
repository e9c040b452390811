"""Shared by the visual tests: a generated camera video and a camera that is shut down after each test."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.visual.camera import Camera
from tests.app.video import write_test_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("video") / "camera.avi", frames=90, size=(800, 600))


@pytest.fixture
def camera(qapp):
    camera = Camera()
    yield camera
    camera.shutdown()
