"""Device choice by stable name with fallback, and the digital-silence warning."""

from __future__ import annotations

import numpy as np

from app.audio.devices import SilenceWatch, choose_device, list_devices, negotiate, stable_name
from tests.app.audio.fake_sounddevice import FakeSoundDevice, device

DEVICES = [
    device("HDA Intel PCH: ALC257 Analog (hw:0,0)", inputs=2, outputs=2),
    device("USB Headset: Audio (hw:2,0)", inputs=1, outputs=2),
    device("HDMI 0 (hw:0,3)", outputs=8),
]


def test_lists_inputs_and_outputs_separately() -> None:
    sd = FakeSoundDevice(DEVICES)
    assert [d.index for d in list_devices(sd, "input")] == [0, 1]
    assert [d.index for d in list_devices(sd, "output")] == [0, 1, 2]


def test_the_remembered_device_is_found_again_after_the_card_number_changed() -> None:
    moved = [DEVICES[0], device("USB Headset: Audio (hw:3,0)", inputs=1, outputs=2)]
    chosen, warning = choose_device(FakeSoundDevice(moved), "input", "USB Headset: Audio (hw:2,0)")
    assert chosen is not None and chosen.index == 1 and warning is None
    assert stable_name("USB Headset: Audio (hw:3,0)") == "USB Headset: Audio"


def test_a_missing_device_falls_back_to_the_default_with_a_warning() -> None:
    chosen, warning = choose_device(FakeSoundDevice(DEVICES, default=(1, 2)), "input", "Blue Yeti (hw:4,0)")
    assert chosen is not None and chosen.index == 1
    assert warning is not None and "Blue Yeti" in warning and "USB Headset: Audio" in warning


def test_no_remembered_device_means_the_default_without_a_warning() -> None:
    assert choose_device(FakeSoundDevice(DEVICES, default=(0, 2)), "output") == (list_devices(
        FakeSoundDevice(DEVICES), "output")[2], None)


def test_no_device_at_all_is_a_notice_not_a_crash() -> None:
    chosen, notice = choose_device(FakeSoundDevice([DEVICES[2]], default=(-1, 0)), "input")
    assert chosen is None and "No microphone" in notice and "Typing still works" in notice
    chosen, notice = choose_device(FakeSoundDevice([]), "output")
    assert chosen is None and "text only" in notice


def test_negotiate_prefers_16k_mono_then_the_device_format() -> None:
    builtin = list_devices(FakeSoundDevice(DEVICES), "input")[0]
    assert negotiate(FakeSoundDevice(DEVICES), builtin, "input", "int16") == (16000, 1)
    assert negotiate(FakeSoundDevice(DEVICES, supported={(0, 48000, 1)}), builtin, "input", "int16") == (48000, 1)
    assert negotiate(FakeSoundDevice(DEVICES, supported={(0, 48000, 2)}), builtin, "input", "int16") == (48000, 2)


def test_digital_silence_for_several_seconds_warns_once() -> None:
    watch = SilenceWatch(seconds=2.0)
    frame = np.zeros(480, np.int16)
    warnings = [watch.push(frame) for _ in range(200)]  # 6 s
    assert warnings.count(True) == 1 and warnings.index(True) == 2000 // 30 and watch.silent
    assert not watch.push(np.full(480, 40, np.int16)) and not watch.silent  # sound again: reset


def test_a_real_microphones_own_noise_is_not_silence() -> None:
    watch = SilenceWatch(seconds=1.0)
    noise = np.random.default_rng(0).normal(0, 4, 480).astype(np.int16)
    assert not any(watch.push(noise) for _ in range(100))
