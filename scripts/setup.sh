#!/usr/bin/env bash
# Installs everything Omnivox needs into ./.venv (and, when run as root on Debian/Ubuntu,
# the system libraries for audio, the Qt window and the test tools). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libportaudio2 libsndfile1 libasound2-plugins pulseaudio pulseaudio-utils \
        libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
        libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 \
        libegl1 libgl1 libfontconfig1 libdbus-1-3 \
        xvfb xauth espeak-ng sox x11-apps xdotool xclip tesseract-ocr tesseract-ocr-eng >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# A CUDA build when an NVIDIA driver is present, otherwise the CPU build.
if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch>=2.6,<2.15"
else
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
