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
# The venv holds exactly what requirements/ locks (scripts/lock.py writes it): torch's CUDA build
# where an NVIDIA driver is present, its CPU build elsewhere. A venv made from other lock files
# (or by hand) is made anew, so that every machine runs the set of versions the tests ran.
torch_lock=requirements/cpu.txt
if command -v nvidia-smi >/dev/null 2>&1; then
    torch_lock=requirements/cuda.txt
fi
stamp=$(cat requirements/common.txt "$torch_lock" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/omnivox-lock 2>/dev/null)" != "$stamp" ]; then
    rm -rf .venv
    "$PYTHON" -m venv .venv
    # --no-deps: the lock already names every package; nothing unlocked can come in beside it.
    if ! .venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements/common.txt -r "$torch_lock"; then
        echo "error: could not install the locked packages (above). torch's CPU build is locked for CPython 3.11" \
             "on Linux: run with PYTHON=python3.11, and give pip PyTorch's CPU wheel index if it lacks it." >&2
        exit 1
    fi
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
    if ! report=$(.venv/bin/python -m pip check); then
        echo "$report" >&2
        exit 1
    fi
    echo "$stamp" > .venv/omnivox-lock
fi
