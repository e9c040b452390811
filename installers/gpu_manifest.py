"""Build-time: the manifest of the GPU runtime the CPU installer fetches on first run.

`python -m installers.gpu_manifest --out gpu-runtime.json` asks pip (dry run, nothing downloaded)
which wheels the CUDA build of torch and bitsandbytes need for the frozen app's Python and
platform, keeps torch, bitsandbytes and the CUDA libraries (the pure-Python dependencies are
already in the app), and records each wheel's URL, SHA-256 (from the index) and size.
The versions are the ones the app was built with, so the engine code sees the same torch API.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from importlib.metadata import version
from pathlib import Path

from installers.gpu_runtime import Manifest, Wheel

RUNTIME_PACKAGES = re.compile(r"^(torch|bitsandbytes|triton|nvidia-.*|cuda-.*)$")


def resolve(requirements: list[str], indexes: list[str], python: str, platform: str) -> list[dict]:
    """pip's installation report for the target platform (`pip install --dry-run --report`)."""
    with tempfile.TemporaryDirectory() as target:
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--report", "-", "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
                   "--platform", platform, "--target", target, "--index-url", indexes[0],
                   *(f"--extra-index-url={url}" for url in indexes[1:]), *requirements]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"pip could not resolve {' '.join(requirements)}: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout)["install"]


def content_length(url: str) -> int:
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as response:
        return int(response.headers["Content-Length"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m installers.gpu_manifest", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    # Linux: PyPI's torch is the CUDA build (CUDA libraries in nvidia-* wheels). Windows: pass
    # --index-url https://download.pytorch.org/whl/cu128 --extra-index-url https://pypi.org/simple
    parser.add_argument("--index-url", default="https://pypi.org/simple")
    parser.add_argument("--extra-index-url", action="append", default=[])
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64", help="e.g. win_amd64 for Windows")
    args = parser.parse_args(argv)
    torch_version = version("torch").split("+")[0]  # "2.13.0+cpu" → the same release's CUDA build
    requirements = [f"torch=={torch_version}", f"bitsandbytes=={version('bitsandbytes')}"]
    wheels = []
    for item in resolve(requirements, [args.index_url, *args.extra_index_url], args.python_version, args.platform):
        if not RUNTIME_PACKAGES.match(item["metadata"]["name"].lower()):
            continue
        info = item["download_info"]
        url = info["url"]
        wheels.append(Wheel(url.rsplit("/", 1)[-1], url, info["archive_info"]["hashes"]["sha256"], content_length(url)))
    description = (f"torch {torch_version} (CUDA) + bitsandbytes {version('bitsandbytes')} "
                   f"for CPython {args.python_version} on {args.platform}")
    Manifest(description, tuple(wheels)).write(args.out)
    print(f"{args.out}: {len(wheels)} wheels, {sum(w.size for w in wheels) / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
