from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from engine.errors import OmnivoxError
from engine.media import (
    CLIP_SAMPLES,
    SAMPLE_RATE,
    open_image,
    prepare_image,
    read_speech,
    speech_features,
    speech_from_pcm,
)
from tests.signals import tone


@pytest.mark.parametrize(("seconds", "clips"), [(1.0, 1), (30.0, 1), (30.01, 2), (60.0, 2), (60.5, 3)])
def test_clip_count_follows_30_second_windows(seconds: float, clips: int) -> None:
    speech = speech_from_pcm(np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32), SAMPLE_RATE)
    assert speech.clips == clips


def test_exactly_30_seconds_is_one_clip_of_features_and_30_01_is_two() -> None:
    exact = speech_from_pcm(tone(30.0), SAMPLE_RATE)
    over = speech_from_pcm(tone(30.01), SAMPLE_RATE)
    assert len(exact.samples) == CLIP_SAMPLES
    assert speech_features(exact).shape == (1, 128, 3000)
    assert speech_features(over).shape == (2, 128, 3000)


def test_any_rate_and_channel_count_becomes_16k_mono(tmp_path: Path) -> None:
    path = tmp_path / "stereo.flac"
    soundfile.write(path, tone(2.0, 44100, channels=2), 44100)
    speech = read_speech(path)
    assert speech.samples.ndim == 1
    assert abs(len(speech.samples) - 2 * SAMPLE_RATE) <= 2


def test_ogg_is_read(tmp_path: Path) -> None:
    path = tmp_path / "voice.ogg"
    soundfile.write(path, tone(1.0, 48000), 48000, format="OGG", subtype="VORBIS")
    assert read_speech(path).seconds == pytest.approx(1.0, abs=0.01)


def test_silent_and_clipped_audio_are_accepted() -> None:
    silent = speech_from_pcm(np.zeros(8000, dtype=np.float32), SAMPLE_RATE)
    clipped = speech_from_pcm(np.full(8000, 4.0, dtype=np.float32), SAMPLE_RATE)
    assert np.all(silent.samples == 0)
    assert clipped.samples.max() == 1.0
    assert np.isfinite(speech_features(clipped)).all()


def one_line_error(call, *args) -> str:  # noqa: ANN001 - any callable
    with pytest.raises(OmnivoxError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_audio_files_get_one_line_errors(tmp_path: Path, image_png: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" * 3)
    assert "empty" in one_line_error(read_speech, empty)
    assert "not a readable audio file" in one_line_error(read_speech, corrupt)
    assert "not a readable audio file" in one_line_error(read_speech, image_png)
    assert "no such audio file" in one_line_error(read_speech, tmp_path / "missing.wav")


def test_audio_longer_than_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    soundfile.write(path, np.zeros(16000 * 12, dtype=np.float32), 16000)
    assert "limit" in one_line_error(read_speech, path, 10.0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_common_image_formats_open_as_rgb(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"image.{fmt.lower()}"
    Image.new("RGB", (64, 48), (200, 30, 40)).save(path, format=fmt)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_bad_images_get_one_line_errors(tmp_path: Path, speech_wav: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    assert "empty" in one_line_error(open_image, empty)
    assert "not a readable image" in one_line_error(open_image, corrupt)
    assert "not a readable image" in one_line_error(open_image, speech_wav)


def test_100_megapixel_image_is_downscaled_not_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("RGB", (12500, 8000), (10, 120, 200)).save(path)
    prepared = prepare_image(open_image(path), max_side=448)
    assert max(prepared.size) <= 448
    t, h, w = prepared.grid_thw[0].tolist()
    assert t == 1 and max(h, w) * 14 <= 448
    assert prepared.tokens == h * w // 4
