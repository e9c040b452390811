"""The requests both sides of the conformance comparison run, and the media they carry.

Imported by `make_reference.py` (in the venv that runs Lyra's code) and by the tests (in the
project's venv), so it needs only numpy and Pillow. The speech, the picture and the clip are
synthesised from formulas, so the committed reference data holds no audio, image or video files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SAMPLE_RATE = 16000
CLIP_SECONDS = 30
WHISPER_EVERY = 10  # the reference keeps every 10th of Whisper's 1500 frames per clip, to stay small


def speech(seconds: float, pitch: float) -> np.ndarray:
    """Float32 mono 16 kHz: a voiced tone of three harmonics under a syllable-rate envelope."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in (1, 2, 3))
    return (0.3 * envelope * voice).astype(np.float32)


def picture() -> Image.Image:
    """112 × 84 RGB (multiples of 28: no resize on either side), 4 × 3 merged vision tokens."""
    y, x = np.mgrid[0:84, 0:112]
    rgb = np.stack([(x * 2) % 256, (y * 3) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


CLIP_FPS = 10
CLIP_FRAMES = 40  # 4 s: Lyra's CLI keeps 8 of them (2 per second), 4 frame pairs


def clip_frames() -> np.ndarray:
    """(40, 84, 112, 3) uint8 RGB: a pattern sliding right and brightening, 112 × 84 so neither side resizes."""
    y, x = np.mgrid[0:84, 0:112]
    frames = [np.stack([(x * 2 + 9 * i) % 256, (y * 3 + i) % 256, ((x + y) * 5 + 4 * i) % 256], axis=-1)
              for i in range(CLIP_FRAMES)]
    return np.stack(frames).astype(np.uint8)


@dataclass(frozen=True)
class Turn:
    text: str | None = None
    speech: tuple[float, float] | None = None  # (seconds, pitch in Hz)
    image: bool = False
    video: bool = False  # clip_frames(), as a file the CLI's --video-file reads

    @property
    def adapter(self) -> str | None:
        """Which LoRA adapter Lyra's CLI and Omnivox pick: none, one 30 s clip, or more."""
        if self.speech is None:
            return None
        return "speech" if self.speech[0] <= CLIP_SECONDS else "long_speech"


@dataclass(frozen=True)
class Case:
    name: str
    turns: tuple[Turn, ...]
    max_new_tokens: int = 6


# The Lyra ASR evaluation prompt's text after `<speech>\n` (see engine.session.TRANSCRIBE).
ASR_TEXT = "\nRecord the spoken words as text."

CASES = (
    Case("speech_text", (Turn(text="What did I say?", speech=(2.0, 140.0)),)),
    Case("image_text", (Turn(text="What is in this picture?", image=True),)),
    Case("image_speech", (Turn(speech=(1.5, 180.0), image=True),)),
    Case("image_speech_text", (Turn(text="Read the text.", speech=(1.0, 220.0), image=True),)),
    Case("speech", (Turn(speech=(3.0, 120.0)),)),
    Case("long_speech", (Turn(speech=(31.5, 160.0)),)),
    Case("text", (Turn(text="Hello, how can I help you today?"),)),
    Case("transcript", (Turn(text=ASR_TEXT, speech=(2.5, 200.0)),)),
    Case("second_turn", (Turn(text="What did I say?", speech=(2.0, 140.0)), Turn(speech=(1.0, 250.0)))),
    Case("video_text", (Turn(text="What moved?", video=True),)),
    Case("video_speech", (Turn(speech=(1.5, 170.0), video=True),)),
)
