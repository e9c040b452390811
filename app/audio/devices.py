"""Audio devices: listing them, finding the remembered one again, and noticing a dead microphone.

Devices are remembered by name, not index: PortAudio renumbers devices whenever one is plugged
in, and ALSA puts the card number into the name ("USB Mic: Audio (hw:2,0)"), which changes with
the order cards were found. `stable_name` drops that part. The sounddevice module is passed in
so tests can replace it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np

from engine.protocol import SAMPLE_RATE

Kind = Literal["input", "output"]

_ALSA_CARD = re.compile(r"\s*\(hw:\d+(,\d+)?\)$")


@dataclass(frozen=True)
class Device:
    index: int  # PortAudio's index: valid until devices change
    name: str
    hostapi: str
    inputs: int  # channels
    outputs: int
    default_rate: float

    @property
    def stable_name(self) -> str:
        return stable_name(self.name)


def load_sounddevice() -> ModuleType | None:
    """The sounddevice module, or None when the PortAudio library is missing (the app then runs without audio)."""
    try:
        import sounddevice
    except OSError:  # sounddevice raises OSError when it cannot load libportaudio
        return None
    return sounddevice


def stable_name(name: str) -> str:
    """The device name without ALSA's card numbers, which change between boots and plug-ins."""
    return _ALSA_CARD.sub("", name).strip()


def list_devices(sd: ModuleType | None, kind: Kind) -> list[Device]:
    """The devices that can record (input) or play (output); empty when there are none or no PortAudio."""
    if sd is None:
        return []
    try:
        infos = sd.query_devices()
        hostapis = sd.query_hostapis()
    except Exception:  # PortAudio failing to start is the same, to the user, as having no devices
        return []
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    return [
        Device(
            index=info.get("index", i),
            name=info["name"],
            hostapi=hostapis[info["hostapi"]]["name"] if info["hostapi"] < len(hostapis) else "",
            inputs=info["max_input_channels"],
            outputs=info["max_output_channels"],
            default_rate=info["default_samplerate"],
        )
        for i, info in enumerate(infos)
        if info[channels] > 0
    ]


def default_index(sd: ModuleType, kind: Kind) -> int:
    """PortAudio's default device for kind, or -1 when it has none."""
    index = sd.default.device[0 if kind == "input" else 1]
    return -1 if index is None else int(index)


def choose_device(sd: ModuleType | None, kind: Kind, remembered: str | None = None) -> tuple[Device | None, str | None]:
    """The remembered device if it is still there, else the default; with a warning for the user.

    Returns (None, notice) when there is no device of this kind at all.
    """
    devices = list_devices(sd, kind)
    noun = "microphone" if kind == "input" else "speaker"
    if not devices:
        return None, f"No {noun} found." + (" Typing still works." if kind == "input" else " Replies are text only.")
    if remembered:
        wanted = stable_name(remembered)
        for device in devices:
            if device.name == remembered or device.stable_name == wanted:
                return device, None
    default = default_index(sd, kind)
    chosen = next((d for d in devices if d.index == default), devices[0])
    if remembered:
        return chosen, f"The {noun} “{stable_name(remembered)}” is not connected; using “{chosen.stable_name}”."
    return chosen, None


def negotiate(sd: ModuleType, device: Device, kind: Kind, dtype: str, rate: int = SAMPLE_RATE) -> tuple[int, int]:
    """(sample rate, channels) to open device with: rate mono if it can, else its own rate and channels.

    Devices that only run at 44.1/48 kHz, or only in stereo, are resampled and mixed down by us.
    """
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    native_rate = int(device.default_rate)
    channels = device.inputs if kind == "input" else device.outputs
    candidates = [(rate, 1), (native_rate, 1), (native_rate, min(channels, 2)), (native_rate, channels)]
    for candidate_rate, candidate_channels in candidates:
        try:
            check(device=device.index, channels=candidate_channels, dtype=dtype, samplerate=candidate_rate)
        except Exception:  # PortAudioError or ValueError: this combination is not supported
            continue
        return candidate_rate, candidate_channels
    return native_rate, channels  # nothing checked out: let opening the stream report why


class SilenceWatch:
    """Notices input that is digital silence for several seconds: a muted or wrong device.

    A real microphone always hears something (at least its own noise, a few LSBs); exact zeros,
    or nearly, for seconds mean nothing is connected behind the device.
    """

    def __init__(self, seconds: float = 4.0, rate: int = SAMPLE_RATE, threshold: int = 2) -> None:
        self.limit = int(seconds * rate)
        self.threshold = threshold  # in int16 steps
        self.silent_samples = 0
        self.warned = False

    def push(self, samples: np.ndarray) -> bool:
        """Feed int16 samples; True once, when the silence has lasted long enough to warn."""
        if len(samples) and int(np.abs(samples.astype(np.int32)).max()) > self.threshold:
            self.silent_samples, self.warned = 0, False
            return False
        self.silent_samples += len(samples)
        if self.silent_samples >= self.limit and not self.warned:
            self.warned = True
            return True
        return False

    @property
    def silent(self) -> bool:
        return self.warned
