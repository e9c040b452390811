"""Turning user files and buffers into model inputs: 16 kHz mono speech and Qwen2-VL patches.

Everything here validates as it goes, so a bad file ends in one `OmnivoxError` line. Nothing may
expand past a budget, however small the file: an image's size is read from its header and checked
before a pixel is decoded; an audio file's length and channels are checked from its header, then it
is read, downmixed and resampled block by block; typed text is counted against the model's prompt
budget piece by piece, stopping as soon as it is over.
"""

from __future__ import annotations

import io
import warnings
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
MAX_IMAGE_SIDE = 2880  # the release's training limit: 10 580 image tokens, within the prompt budget
MIN_IMAGE_SIDE = 28  # one merged 2×2 patch
# Pixels a decode may produce (0.4 GB as RGBA, 0.7 GB with its RGB copy), checked from the header before
# decoding; far above any screen (8K is 33 Mpx). A JPEG is decoded at a reduced scale, so big photos fit.
MAX_DECODED_PIXELS = 100_000_000
# Headers beyond this are refused at once: Pillow warns above it, and its warning is an error here.
Image.MAX_IMAGE_PIXELS = 400_000_000
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# Samples an audio file may hold (frames × channels), checked from its header: 25 min of 8 channels at
# 48 kHz or of stereo at 192 kHz. Decoding is block by block, so memory follows the 16 kHz mono result.
MAX_AUDIO_SAMPLES = DEFAULT_MAX_SPEECH_SECONDS * 384_000
AUDIO_BLOCK_FRAMES = 1 << 16
TEXT_PIECE_CHARS = 8192  # typed text is counted against the prompt budget this much at a time


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
    check_duration(audio.size / rate, max_seconds)
    check_finite(audio)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return finished_speech(audio)


def check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise OmnivoxError(f"the audio is {seconds / 60:.1f} min long; the limit is {max_seconds / 60:.0f} min — "
                           "split it or raise the limit.")


def check_finite(audio: np.ndarray) -> None:
    if not np.all(np.isfinite(audio)):
        raise OmnivoxError("the audio holds invalid (NaN or infinite) samples; re-record it.")


def finished_speech(audio: np.ndarray) -> Speech:
    if audio.size == 0:
        raise OmnivoxError("the audio holds no samples; record or choose a non-empty file.")
    return Speech(np.clip(audio, -1.0, 1.0))


def read_speech(path: Path, max_seconds: float = DEFAULT_MAX_SPEECH_SECONDS) -> Speech:
    if not path.is_file():
        raise OmnivoxError(f"{path}: no such audio file.")
    if path.stat().st_size == 0:
        raise OmnivoxError(f"{path}: the audio file is empty (0 bytes).")
    try:
        with soundfile.SoundFile(str(path)) as sound:
            check_audio_header(sound, max_seconds)
            return finished_speech(mono_16k(sound, max_seconds))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise OmnivoxError(f"{path}: not a readable audio file (WAV, FLAC or OGG expected): {err}") from err


def check_audio_header(sound: soundfile.SoundFile, max_seconds: float) -> None:
    """Length and size from the header, before a sample is decoded."""
    check_duration(sound.frames / sound.samplerate, max_seconds)
    samples = sound.frames * sound.channels
    if samples > MAX_AUDIO_SAMPLES:
        raise OmnivoxError(
            f"the audio holds {sound.channels} channels at {sound.samplerate} Hz for "
            f"{sound.frames / sound.samplerate / 60:.1f} min ({samples / 1e6:.0f} M samples, over the "
            f"{MAX_AUDIO_SAMPLES / 1e6:.0f} M this reads); convert it to mono or a lower rate."
        )


def mono_16k(sound: soundfile.SoundFile, max_seconds: float) -> np.ndarray:
    """Read block by block, each downmixed and resampled at once: memory follows the 16 kHz mono result."""
    resampling = sound.samplerate != SAMPLE_RATE
    resampler = soxr.ResampleStream(sound.samplerate, SAMPLE_RATE, 1, dtype="float32") if resampling else None
    pieces, frames = [], 0
    for block in sound.blocks(blocksize=AUDIO_BLOCK_FRAMES, dtype="float32", always_2d=True):
        frames += len(block)
        check_duration(frames / sound.samplerate, max_seconds)  # a header may understate the length
        mono = block.mean(axis=1)
        check_finite(mono)
        pieces.append(resampler.resample_chunk(mono) if resampler else mono)
    if resampler:
        pieces.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


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
    """Decode a file or encoded bytes (PNG, JPEG, WebP, BMP, GIF first frame) to RGB, within the pixel budget."""
    name = str(source) if isinstance(source, Path) else "the image"
    if isinstance(source, Path) and not source.is_file():
        raise OmnivoxError(f"{source}: no such image file.")
    if (source.stat().st_size if isinstance(source, Path) else len(source)) == 0:
        raise OmnivoxError(f"{name}: the image file is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            stream = source if isinstance(source, Path) else io.BytesIO(source)
            with Image.open(stream, formats=IMAGE_FORMATS) as image:
                image.draft("RGB", (DEFAULT_MAX_IMAGE_SIDE * 2, DEFAULT_MAX_IMAGE_SIDE * 2))  # JPEG: decode smaller
                check_pixels(image, name)
                image.seek(0)
                return image.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise OmnivoxError(f"{name}: the image is too large to decode ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise OmnivoxError(f"{name}: not a readable image (PNG, JPEG, WebP, BMP or GIF expected): {err}") from err


def check_pixels(image: Image.Image, name: str) -> None:
    """The header's size against the decoding budget (after a JPEG's reduced-scale draft)."""
    width, height = image.size
    if width * height > MAX_DECODED_PIXELS:
        raise OmnivoxError(f"{name}: the image is {width}×{height} ({width * height / 1e6:.0f} megapixels); at most "
                           f"{MAX_DECODED_PIXELS // 1_000_000} megapixels are decoded — shrink it first.")


def check_text_budget(text: str | None, tokenizer, max_tokens: int) -> None:  # noqa: ANN001 - a transformers tokenizer
    """Typed text that alone needs more than the model's prompt budget fails here, before the prompt is built.

    It is tokenized a piece at a time and counting stops once the budget is passed, so twenty million
    characters cost what the budget's worth does. Pieces end at a space, where the tokenizer splits anyway."""
    count, start = 0, 0
    while text and start < len(text):
        end = min(start + TEXT_PIECE_CHARS, len(text))
        space = text.rfind(" ", start + 1, end) if end < len(text) else -1
        end = space if space > start else end
        count += len(tokenizer.encode(text[start:end], add_special_tokens=False))
        if count > max_tokens:
            raise OmnivoxError(f"the text is {len(text):,} characters, more than the model's {max_tokens:,}-token "
                               "prompt can hold; shorten it.")
        start = end


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
