"""App tests run headless (Qt's offscreen platform) unless a real display is there (xvfb-run)."""

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
