"""Turning user files and buffers into model inputs: 16 kHz mono speech and Qwen2-VL patches.

Everything here validates as it goes, so a bad file ends in one `OmnivoxError` line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
from PIL import Image, UnidentifiedImageError

from engine.errors import OmnivoxError

SAMPLE_RATE = 16000
CLIP_SAMPLES = 30 * SAMPLE_RATE  # Whisper's fixed 30 s window
# The ChatML prompt is cut at 16384 tokens and speech costs 300 tokens per 30 s clip, so beyond
# ~25 minutes the question would no longer fit.
DEFAULT_MAX_SPEECH_SECONDS = 25 * 60
DEFAULT_MAX_IMAGE_SIDE = 1920  # the release's evaluation setting (training allowed 2880)
Image.MAX_IMAGE_PIXELS = 400_000_000  # decode huge photos/screens (then shrink them), refuse bombs


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # float32 mono at 16 kHz

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def clips(self) -> int:
        """Number of 30 s Whisper clips; an exact multiple of 30 s adds no empty clip."""
        return max(1, -(-len(self.samples) // CLIP_SAMPLES))


@dataclass(frozen=True)
class PreparedImage:
    pixel_values: torch.Tensor  # (patches, 3 · 2 · 14 · 14) as the Qwen2-VL processor flattens them
    grid_thw: torch.Tensor  # (1, 3) patch grid before the 2×2 merge
    size: tuple[int, int]  # width, height fed to the processor

    @property
    def tokens(self) -> int:
        return int(self.grid_thw.prod()) // 4


def speech_from_pcm(samples: np.ndarray, rate: int, max_seconds: float = DEFAULT_MAX_SPEECH_SECONDS) -> Speech:
    """Any-rate, any-channel PCM (frames × channels or 1-D) → float32 mono 16 kHz."""
    audio = np.asarray(samples, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.size == 0:
        raise OmnivoxError("the audio holds no samples; record or choose a non-empty file.")
    if not np.all(np.isfinite(audio)):
        raise OmnivoxError("the audio holds invalid (NaN or infinite) samples; re-record it.")
    if audio.size / rate > max_seconds:
        raise OmnivoxError(
            f"the audio is {audio.size / rate / 60:.1f} min long; the limit is {max_seconds / 60:.0f} min — "
            "split it or raise the limit."
        )
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return Speech(np.clip(audio, -1.0, 1.0))


def read_speech(path: Path, max_seconds: float = DEFAULT_MAX_SPEECH_SECONDS) -> Speech:
    if not path.is_file():
        raise OmnivoxError(f"{path}: no such audio file.")
    if path.stat().st_size == 0:
        raise OmnivoxError(f"{path}: the audio file is empty (0 bytes).")
    try:
        info = soundfile.info(str(path))
        if info.frames / info.samplerate > max_seconds:
            return speech_from_pcm(np.zeros((info.frames, 1)), info.samplerate, max_seconds)  # raises
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise OmnivoxError(f"{path}: not a readable audio file (WAV, FLAC or OGG expected): {err}") from err
    return speech_from_pcm(samples, rate, max_seconds)


def speech_clips(speech: Speech) -> np.ndarray:
    """(clips, 480000) back-to-back 30 s windows, the last zero-padded."""
    padded = np.zeros(speech.clips * CLIP_SAMPLES, dtype=np.float32)
    padded[: len(speech.samples)] = speech.samples
    return padded.reshape(speech.clips, CLIP_SAMPLES)


@cache
def feature_extractor(n_mels: int):  # noqa: ANN201 - transformers' class
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE)


def speech_features(speech: Speech, n_mels: int = 128) -> torch.Tensor:
    """(clips, n_mels, 3000) Whisper log-mel features, one row per 30 s clip."""
    clips = speech_clips(speech)
    features = feature_extractor(n_mels)(list(clips), sampling_rate=SAMPLE_RATE, return_tensors="pt")
    return features["input_features"]


def open_image(source: Path | bytes) -> Image.Image:
    """Decode a file or encoded bytes (PNG, JPEG, WebP, BMP, GIF first frame) to RGB."""
    name = str(source) if isinstance(source, Path) else "the image"
    if isinstance(source, Path):
        if not source.is_file():
            raise OmnivoxError(f"{source}: no such image file.")
        data = source.read_bytes()
    else:
        data = source
    if not data:
        raise OmnivoxError(f"{name}: the image file is empty (0 bytes).")
    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (DEFAULT_MAX_IMAGE_SIDE * 2, DEFAULT_MAX_IMAGE_SIDE * 2))  # JPEG: decode smaller
        image.seek(0)
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise OmnivoxError(f"{name}: not a readable image (PNG, JPEG, WebP, BMP or GIF expected): {err}") from err


@cache
def image_processor():  # noqa: ANN201 - transformers' class
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil()


def prepare_image(image: Image.Image, max_side: int = DEFAULT_MAX_IMAGE_SIDE) -> PreparedImage:
    """Shrink so the long side fits `max_side`, then the Qwen2-VL processor (14 px patches, 2×2 merge)."""
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(28, round(image.width * scale)), max(28, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    size = {"shortest_edge": 56 * 56, "longest_edge": max_side * max_side}
    out = image_processor()(images=[image], size=size, return_tensors="pt")
    return PreparedImage(out["pixel_values"], out["image_grid_thw"], image.size)
