"""Turning user files and buffers into model inputs: 16 kHz mono speech and Qwen2-VL patches.

Everything here validates as it goes, so a bad file ends in one `OmnivoxError` line. Nothing may
expand past a budget, however small the file: an image's size is read from its header and checked
before a pixel is decoded; an audio file's length and channels are checked from its header, then it
is read, downmixed and resampled block by block; typed text is counted against the model's prompt
budget piece by piece, stopping as soon as it is over.
"""

from __future__ import annotations

import io
import math
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
from engine.protocol import SAMPLE_RATE

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


# ---- video --------------------------------------------------------------------------------------------
# A clip is sampled as Lyra's CLI samples `--video-file` (lyra/serve/cli.py through qwen-vl-utils 0.0.8's
# fetch_video): 2 frames per second, at least 4 and at most 16, an even count spread evenly over the clip by
# index; every frame resized (bicubic, antialiased, as torchvision does) to one size whose frame pair costs at
# most 768 vision tokens. Qwen2-VL's ViT then sees the frames two at a time (its temporal patch).
VIDEO_FPS = 2.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 16
TEMPORAL_PATCH = 2
PATCH_FACTOR = 28  # a vision token is a 2×2 merge of 14 px patches
VIDEO_FRAME_MAX_PIXELS = 768 * PATCH_FACTOR**2  # qwen-vl-utils' VIDEO_MAX_PIXELS
VIDEO_FRAME_MIN_PIXELS = 4 * PATCH_FACTOR**2  # the CLI's min_pixels
LYRA_VIDEO_TOKENS = 2048 * 32  # the CLI's total_pixels / 28²; under the per-frame cap it never binds
MIN_GROUP_TOKENS = 64  # a token budget spreads over at most budget // 64 frame pairs (224 × 224 px each)
MAX_VIDEO_TOKENS = 16384  # the model's whole prompt
MAX_CLIP_FRAMES = 36_000  # frames a clip may hold: 10 min at 60 fps, 20 min at 30 fps (each is decoded to skip it)
MAX_ASPECT = 200  # Qwen2-VL's limit on a frame's long side over its short side
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)  # OpenAI CLIP, as Qwen2-VL uses
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


@dataclass(frozen=True)
class Video:
    """A clip as the model sees it: the sampled frames, all of one size, and when each was taken."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB; H and W multiples of 28
    timestamps: tuple[float, ...]  # seconds since the clip's first frame

    @property
    def tokens(self) -> int:
        """Vision tokens: one per 2×2 patch of each frame pair (an odd last frame is paired with itself)."""
        count, height, width, _ = self.frames.shape
        return -(-count // TEMPORAL_PATCH) * (height // PATCH_FACTOR) * (width // PATCH_FACTOR)


@dataclass(frozen=True)
class PreparedVideo:
    pixel_values: torch.Tensor  # (patches, 3 · 2 · 14 · 14), laid out as Qwen2-VL's video processor does
    grid_thw: torch.Tensor  # (1, 3): frame pairs, patch rows, patch columns before the 2×2 merge


def check_token_budget(budget: int | None) -> None:
    if budget is not None and not MIN_GROUP_TOKENS <= budget <= MAX_VIDEO_TOKENS:
        raise OmnivoxError(f"the video token budget must be {MIN_GROUP_TOKENS}…{MAX_VIDEO_TOKENS}, got {budget}.")


def clip_indices(count: int, fps: float, budget: int | None = None) -> list[int]:
    """Which of a clip's `count` frames (at `fps`) to keep: qwen-vl-utils' smart_nframes as the CLI calls it.

    A budget lowers the cap on frames so that each frame pair keeps at least 64 tokens. A clip with fewer
    frames than the rule asks for keeps all of them (Lyra's code raises there; an odd count gets its last
    frame repeated, as Qwen2-VL's processor does).
    """
    most = VIDEO_MAX_FRAMES if budget is None else min(VIDEO_MAX_FRAMES, TEMPORAL_PATCH * (budget // MIN_GROUP_TOKENS))
    wanted = min(max(count / fps * VIDEO_FPS, VIDEO_MIN_FRAMES), most)
    kept = min(round(wanted / TEMPORAL_PATCH) * TEMPORAL_PATCH, count)
    return torch.linspace(0, count - 1, kept).round().long().tolist()  # torch's rounding, as Lyra's


def frame_size(height: int, width: int, frames: int, budget: int | None = None) -> tuple[int, int]:
    """(height, width) every frame is resized to: qwen-vl-utils' smart_resize with the CLI's pixel limits.

    Each frame may have the pixels of the budget shared by the clip's frames (the CLI's total_pixels), at
    most 768 tokens' worth per frame pair, at least 1.05 × the CLI's min_pixels; sides are multiples of 28, the
    aspect kept.
    """
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise OmnivoxError(f"the video's frames are {width}×{height}; a side may be at most {MAX_ASPECT} times "
                           "the other — crop it first.")
    total = (LYRA_VIDEO_TOKENS if budget is None else budget) * PATCH_FACTOR**2
    pairs = -(-frames // TEMPORAL_PATCH)
    max_pixels = max(min(VIDEO_FRAME_MAX_PIXELS, total / (pairs * TEMPORAL_PATCH) * TEMPORAL_PATCH),
                     int(VIDEO_FRAME_MIN_PIXELS * 1.05))
    factor = PATCH_FACTOR
    new_height, new_width = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height = max(factor, math.floor(height / beta / factor) * factor)
        new_width = max(factor, math.floor(width / beta / factor) * factor)
    elif new_height * new_width < VIDEO_FRAME_MIN_PIXELS:
        beta = math.sqrt(VIDEO_FRAME_MIN_PIXELS / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 frame at `size`: torchvision's bicubic antialiased tensor resize, rounded back to uint8."""
    if frame.shape[:2] == size:
        return frame
    pixels = torch.tensor(frame).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


class ClipBuilder:
    """Collects a clip's kept frames, each resized as it arrives (memory follows the model's frame size).

    The first frame sets the size of all; a later frame of another size (a resized window, a rotated camera)
    is resized to it too, its aspect changed rather than the turn failed.
    """

    def __init__(self, kept: int, budget: int | None) -> None:
        self.kept, self.budget = kept, budget
        self.frames: list[np.ndarray] = []
        self.timestamps: list[float] = []
        self.size: tuple[int, int] | None = None

    def add(self, frame: np.ndarray, timestamp: float) -> None:
        height, width = frame.shape[:2]
        if height * width > MAX_DECODED_PIXELS:
            raise OmnivoxError(f"the video's frames are {width}×{height}; at most "
                               f"{MAX_DECODED_PIXELS // 1_000_000} megapixels are decoded — shrink it first.")
        if self.size is None:
            self.size = frame_size(height, width, self.kept, self.budget)
        self.frames.append(fit_frame(frame, self.size))
        self.timestamps.append(timestamp)

    def video(self) -> Video:
        return Video(np.stack(self.frames), tuple(self.timestamps))


def video_from_frames(encoded: list[bytes], timestamps: list[float], budget: int | None = None) -> Video:
    """Encoded frames (PNG, JPEG, …) taken at `timestamps` seconds → the clip the model sees.

    The frame rate is the frames' count over their span; only the kept frames are decoded.
    """
    check_token_budget(budget)
    timestamps = [float(t) for t in timestamps]
    if not encoded:
        raise OmnivoxError("the video holds no frames.")
    if len(timestamps) != len(encoded):
        raise OmnivoxError(f"the video has {len(encoded)} frames but {len(timestamps)} timestamps.")
    if not all(math.isfinite(t) for t in timestamps) or any(map(float.__lt__, timestamps[1:], timestamps[:-1])):
        raise OmnivoxError("the video's timestamps must be finite seconds in order.")
    span = timestamps[-1] - timestamps[0]
    fps = (len(encoded) - 1) / span if span > 0 else VIDEO_FPS
    indices = clip_indices(len(encoded), fps, budget)
    clip = ClipBuilder(len(indices), budget)
    for index in indices:
        clip.add(np.asarray(open_image(encoded[index])), timestamps[index] - timestamps[0])
    return clip.video()


def read_video(path: Path, budget: int | None = None) -> Video:
    """A video file (any format OpenCV's FFmpeg reads) sampled as Lyra's CLI samples it."""
    check_token_budget(budget)
    if not path.is_file():
        raise OmnivoxError(f"{path}: no such video file.")
    if path.stat().st_size == 0:
        raise OmnivoxError(f"{path}: the video file is empty (0 bytes).")
    count, fps = video_header(path)
    video, frames = decode_clip(path, count, fps, budget)
    if video is None and frames > 0:  # the header promised more frames than the stream holds: sample those
        video, frames = decode_clip(path, frames, fps, budget)
    if video is None:
        raise OmnivoxError(f"{path}: the video holds no readable frames.")
    return video


def open_capture(path: Path):  # noqa: ANN201 - a cv2.VideoCapture
    import cv2

    # FFmpeg's complaints about a bad file would go to stderr; the one error line says it
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise OmnivoxError(f"{path}: not a readable video (MP4, MKV, WebM, AVI, MOV … expected).")
    return capture


def video_header(path: Path) -> tuple[int, float]:
    """The frame count and rate the container declares, checked before a frame is decoded."""
    import cv2

    capture = open_capture(path)
    try:
        count, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS)
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    if count <= 0 or width <= 0 or height <= 0:
        raise OmnivoxError(f"{path}: the video holds no frames.")
    if not (math.isfinite(fps) and fps > 0):
        raise OmnivoxError(f"{path}: the video declares no frame rate ({fps}); re-encode it.")
    if count > MAX_CLIP_FRAMES:
        raise OmnivoxError(f"{path}: the video holds {count:,} frames ({count / fps / 60:.1f} min); at most "
                           f"{MAX_CLIP_FRAMES:,} are read — cut the part to ask about.")
    if width * height > MAX_DECODED_PIXELS:
        raise OmnivoxError(f"{path}: the video's frames are {width}×{height}; at most "
                           f"{MAX_DECODED_PIXELS // 1_000_000} megapixels are decoded — shrink it first.")
    return count, fps


def decode_clip(path: Path, count: int, fps: float, budget: int | None) -> tuple[Video | None, int]:
    """The kept frames of a clip of `count` frames; None and the frames it really holds when the stream ends early."""
    import cv2

    indices = clip_indices(count, fps, budget)
    clip, wanted = ClipBuilder(len(indices), budget), iter(indices)
    target = next(wanted)
    capture = open_capture(path)
    try:
        for index in range(count):
            if not capture.grab():  # grab decodes; retrieve converts only the frames kept
                return None, index
            if index == target:
                ok, frame = capture.retrieve()
                if not ok:
                    return None, index
                clip.add(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), index / fps)
                target = next(wanted, None)
                if target is None:  # the last kept frame is the clip's last: the header's count was right
                    break
    finally:
        capture.release()
    return clip.video(), count


def prepare_video(video: Video) -> PreparedVideo:
    """Frames → Qwen2-VL's video patches: rescaled and normalised like its processor, an odd last frame
    repeated, then laid out as (frame pair, merged row, merged column, 2×2 merge) × (channel, frame, 14, 14)."""
    frames = video.frames
    if len(frames) % TEMPORAL_PATCH:
        frames = np.concatenate([frames, frames[-1:].repeat(TEMPORAL_PATCH - len(frames) % TEMPORAL_PATCH, axis=0)])
    pixels = (frames.astype(np.float64) * (1 / 255)).astype(np.float32)
    pixels = ((pixels - CLIP_MEAN) / CLIP_STD).transpose(0, 3, 1, 2)  # (T, C, H, W)
    count, channels, height, width = pixels.shape
    t, h, w, merge, patch = count // TEMPORAL_PATCH, height // 14, width // 14, 2, 14
    patches = pixels.reshape(t, TEMPORAL_PATCH, channels, h // merge, merge, patch, w // merge, merge, patch)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(t * h * w, channels * TEMPORAL_PATCH * patch * patch)
    return PreparedVideo(torch.from_numpy(np.ascontiguousarray(flat)), torch.tensor([[t, h, w]]))
