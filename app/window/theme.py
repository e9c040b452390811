"""Light and dark looks: Qt's Fusion style, a matching palette, and resources/styles/omnivox.qss.

The style sheet names its colours (@accent, @ink, …); each theme here fills them in, so the
two looks cannot drift apart in anything but colour.
"""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

RESOURCES = Path(__file__).resolve().parents[2] / "resources"

COLORS = {
    "light": {
        "window": "#f6f7f9", "base": "#ffffff", "panel": "#eef0f4", "ink": "#1d2330", "heading": "#3b4456",
        "muted": "#5d6677", "faint": "#8a93a3", "border": "#d5d9e0", "divider": "#e3e6eb", "hover": "#eef2f8",
        "pressed": "#e1e7f1", "pill": "#eceef2", "bubble": "#f0f2f6", "accent": "#2f6fde", "accentHover": "#2a63c7",
        "accentFaded": "#b6c7ea", "selected": "#dbe5fa", "selectedInk": "#1d4fb0", "bannerBg": "#fff6e0",
        "bannerBorder": "#f0d48a", "bannerInk": "#5c4500", "listenBg": "#e2f3e6", "listenInk": "#1f7a3a",
        "talkBg": "#c9efd3", "talkInk": "#11632a", "thinkBg": "#fff1d6", "thinkInk": "#8a5a00",
        "stopInk": "#b42318", "stopBorder": "#f1c2bd", "stopHover": "#fdecea",
    },
    "dark": {
        "window": "#1c1f26", "base": "#242833", "panel": "#20242c", "ink": "#e6e9ef", "heading": "#c5cbd6",
        "muted": "#a5adbd", "faint": "#7d8596", "border": "#3a4050", "divider": "#343a48", "hover": "#2c3240",
        "pressed": "#363d4e", "pill": "#2d3240", "bubble": "#2d3240", "accent": "#3d6fd8", "accentHover": "#4a7ae0",
        "accentFaded": "#34486f", "selected": "#2c3d63", "selectedInk": "#c4d5ff", "bannerBg": "#3a3220",
        "bannerBorder": "#6b5a2a", "bannerInk": "#f3dfa5", "listenBg": "#1f3a29", "listenInk": "#8fdca7",
        "talkBg": "#245235", "talkInk": "#b4f0c6", "thinkBg": "#45381c", "thinkInk": "#f5cf7a",
        "stopInk": "#ff8a80", "stopBorder": "#6b3430", "stopHover": "#3a2426",
    },
}


def icon(name: str) -> QIcon:
    return QIcon(str(RESOURCES / "icons" / f"{name}.svg"))


def resolve(theme: str) -> str:
    """"system" follows the desktop's colour scheme where Qt can read it, else light."""
    if theme in COLORS:
        return theme
    scheme = QGuiApplication.styleHints().colorScheme()
    return "dark" if scheme == Qt.ColorScheme.Dark else "light"


def apply_theme(app: QApplication, theme: str) -> str:
    """Apply "light", "dark" or "system"; returns the one applied."""
    name = resolve(theme)
    colors = COLORS[name]
    palette = QPalette()
    role = QPalette.ColorRole
    for target, source in ((role.Window, "window"), (role.Base, "base"), (role.AlternateBase, "window"),
                           (role.Text, "ink"), (role.WindowText, "ink"), (role.ButtonText, "ink"),
                           (role.Button, "pill"), (role.Highlight, "accent"), (role.ToolTipBase, "base"),
                           (role.ToolTipText, "ink"), (role.PlaceholderText, "faint"), (role.Mid, "border")):
        palette.setColor(target, QColor(colors[source]))
    palette.setColor(role.HighlightedText, QColor("#ffffff"))
    app.setStyle("Fusion")
    app.setPalette(palette)
    app.setStyleSheet(style_sheet(colors))
    return name


def style_sheet(colors: dict[str, str]) -> str:
    template = (RESOURCES / "styles" / "omnivox.qss").read_text(encoding="utf-8")
    values = {**colors, "iconsFolder": (RESOURCES / "icons").as_posix()}  # url() in a style sheet needs a full path
    return re.sub(r"@(\w+)", lambda match: values[match.group(1)], template)
