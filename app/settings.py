"""The user's preferences: a plain dataclass, read from and written to QSettings.

Qt is imported only where a QSettings is made, so `main.py` can read the choices below without
loading Qt. With `--data-dir` the settings live in that folder (settings.ini), so an isolated run (tests,
benchmarks, a second profile) never touches the user's real preferences.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PySide6.QtCore import QSettings

# engine.quantize.PRECISIONS, restated: importing it would load torch into the GUI.
PRECISIONS = ("nf4", "int8", "bf16", "fp16", "fp32")
DEVICES = ("cuda", "cpu")
OUTPUTS = ("headphones", "speakers")  # speakers: the endpointer must tell our own voice from the user's
VAD_SENSITIVITIES = ("low", "normal", "high")  # app.audio.endpointer.PRESETS
# Token extraction: share of image/speech tokens kept at each layer-block boundary (the engine's keep_rate).
EXTRACTION_STRENGTHS = {"off": None, "light": 0.85, "balanced": 0.7, "strong": 0.5}
THEMES = ("system", "light", "dark")


@dataclass
class Preferences:
    microphone: str = ""  # device name; "" is the system default
    speaker: str = ""
    camera: str = "0"  # a device index, or a video file / stream URL
    output: str = "headphones"
    vad_sensitivity: str = "normal"
    barge_in: bool = True
    hands_free: bool = True
    model: str = ""  # model folder; "" until the user has one
    precision: str = ""  # "" lets the engine choose (nf4 on CUDA)
    device: str = ""
    extraction: str = "balanced"
    theme: str = "system"


def open_settings(data_dir: Path | None) -> QSettings:
    from PySide6.QtCore import QSettings

    if data_dir is not None:
        return QSettings(str(Path(data_dir) / "settings.ini"), QSettings.Format.IniFormat)
    return QSettings("Omnivox", "Omnivox")


def load_preferences(settings: QSettings) -> Preferences:
    """Stored values, each falling back to its default when missing or of the wrong type."""
    prefs = Preferences()
    for field in fields(Preferences):
        default = getattr(prefs, field.name)
        stored = settings.value(field.name, default)
        if isinstance(default, bool):  # INI files hand booleans back as "true"/"false"
            stored = stored if isinstance(stored, bool) else str(stored).lower() == "true"
        setattr(prefs, field.name, type(default)(stored))
    return prefs


def save_preferences(settings: QSettings, prefs: Preferences) -> None:
    for field in fields(Preferences):
        settings.setValue(field.name, getattr(prefs, field.name))
    settings.sync()
