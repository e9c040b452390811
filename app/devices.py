"""Where the settings dialog's device lists come from. Injected, so tests need no hardware.

The defaults ask PortAudio (through sounddevice) for audio devices and the OS for cameras;
either may be missing (no PortAudio library, no /dev/video*), which gives an empty list and the
"system default" entry the dialog always offers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DeviceList = Callable[[], list[str]]


def audio_devices(direction: str) -> list[str]:
    """Names of the input or output devices PortAudio knows; [] when it is unavailable."""
    try:
        import sounddevice
    except (ImportError, OSError):  # OSError: the PortAudio library itself is missing
        return []
    channels = "max_input_channels" if direction == "input" else "max_output_channels"
    try:
        return [device["name"] for device in sounddevice.query_devices() if device[channels] > 0]
    except sounddevice.PortAudioError:
        return []


def microphones() -> list[str]:
    return audio_devices("input")


def speakers() -> list[str]:
    return audio_devices("output")


def camera_indices() -> list[str]:
    """Video device numbers. Probing with OpenCV would open every camera (and light its LED), so on
    Linux the device nodes are listed; elsewhere the first device is offered and others typed."""
    if sys.platform.startswith("linux"):
        return sorted((path.name.removeprefix("video") for path in Path("/dev").glob("video[0-9]*")), key=int)
    return ["0"]


@dataclass(frozen=True)
class DeviceProviders:
    microphones: DeviceList = microphones
    speakers: DeviceList = speakers
    cameras: DeviceList = camera_indices
