"""Build-time: the manifest of the GPU runtimes the CPU installer fetches on first run.

`python -m installers.gpu_manifest --out gpu-runtime.json` asks pip (dry run, nothing downloaded)
which wheels the CUDA build of torch and bitsandbytes need for the frozen app's Python and
platform, keeps torch, bitsandbytes and the CUDA libraries (the pure-Python dependencies are
already in the app), and records each wheel's URL, SHA-256 (from the index) and size.
The versions are the ones the app was built with, so the engine code sees the same torch API.

Each runtime records the CUDA release it carries, the oldest driver that runs it and the GPU
architectures it has kernels for, so the app picks one the user's driver and GPU can run before
downloading ~3 GB, or says why none can. A release build adds a second runtime for older drivers
(≥ 525) and GPUs (Maxwell to Volta) where the pinned torch has a CUDA 12.6 build:
`--older-index-url https://download.pytorch.org/whl/cu126` (off by default: that index is not a
package registry the CI machines reach).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from importlib.metadata import version
from pathlib import Path

from installers.gpu_runtime import Manifest, Wheel, version_key, write_manifests

LOCKS = Path(__file__).resolve().parents[1] / "requirements"
PIP_SOURCES = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT")
RUNTIME_PACKAGES = re.compile(r"^(torch|bitsandbytes|triton|nvidia-.*|cuda-.*)$")

# The oldest driver each CUDA major release runs on (CUDA minor-version compatibility, from its release
# notes), Linux / Windows.
MIN_DRIVER = {"12": ("525.60.13", "528.33"), "13": ("580.65.06", "580.88")}
# The architectures torch's builds for each CUDA release carry (TORCH_CUDA_ARCH_LIST of its wheel builds).
# The app asks the downloaded torch itself before using it, so a stale row costs a download, not a crash.
ARCHS = {
    "12.6": ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
    "12.8": ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
    "12.9": ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
    "13.0": ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_110", "sm_120"),
}


def platform_tags(platform: str) -> list[str]:
    """pip takes --platform literally: a manylinux_2_N machine also runs every older manylinux wheel
    (bitsandbytes is tagged manylinux_2_24, cuSPARSELt manylinux2014), so name them all."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if match is None:
        return [platform]
    newest, arch = int(match[1]), match[2]
    legacy = [f"manylinux{alias}_{arch}" for alias in ("2014", "2010", "1")]  # = manylinux_2_17, _2_12, _2_5
    return [f"manylinux_2_{glibc}_{arch}" for glibc in range(newest, 4, -1)] + legacy


def resolve(requirements: list[str], indexes: list[str], python: str, platform: str) -> list[dict]:
    """pip's installation report for the target platform (`pip install --dry-run --report`), with the
    versions requirements/ locks: the runtime is the build of what the tests ran."""
    with tempfile.TemporaryDirectory() as target:
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--report", "-", "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
                   *(f"--platform={tag}" for tag in platform_tags(platform)), "--target", target,
                   "--index-url", indexes[0], *(f"--extra-index-url={url}" for url in indexes[1:]),
                   *(f"--constraint={LOCKS / name}" for name in ("cuda.txt", "common.txt")), *requirements]
        # Only the indexes named here: a local wheel folder in pip's configuration (the CPU build of
        # torch, on the build machines) must not stand in for the CUDA build.
        environment = {name: value for name, value in os.environ.items() if name not in PIP_SOURCES}
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                env={**environment, "PIP_CONFIG_FILE": os.devnull})
    if result.returncode != 0:
        raise SystemExit(f"pip could not resolve {' '.join(requirements)}: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout)["install"]


def cuda_release(items: list[dict]) -> str:
    """The CUDA release of a resolved runtime: torch's local version (+cu126) or the CUDA runtime wheel's."""
    versions = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in items}
    local = re.search(r"\+cu(\d+)(\d)$", versions.get("torch", ""))
    if local:
        return f"{local[1]}.{local[2]}"
    runtime = next((v for name, v in versions.items() if name.startswith("nvidia-cuda-runtime")), None)
    if runtime is None:
        raise SystemExit("the resolved torch names no CUDA release (no +cuXXX tag, no nvidia-cuda-runtime wheel)")
    return ".".join(runtime.split(".")[:2])


def requirements_of(cuda: str, platform: str) -> tuple[str, tuple[str, ...]]:
    """(oldest driver, GPU architectures) for a runtime of this CUDA release on this platform; a release
    missing from ARCHS takes the nearest earlier one of its major version (the app checks the real list)."""
    major = cuda.split(".")[0]
    known = [release for release in ARCHS
             if release.split(".")[0] == major and version_key(release) <= version_key(cuda)]
    if not known or major not in MIN_DRIVER:
        raise SystemExit(f"CUDA {cuda}: add its oldest driver and torch's architectures to installers/gpu_manifest.py")
    linux, windows = MIN_DRIVER[major]
    return (windows if platform.startswith("win") else linux), ARCHS[max(known, key=version_key)]


def runtime(indexes: list[str], python: str, platform: str) -> Manifest:
    torch_version = version("torch").split("+")[0]  # "2.13.0+cpu" → the same release's CUDA build
    requirements = [f"torch=={torch_version}", f"bitsandbytes=={version('bitsandbytes')}"]
    items = [item for item in resolve(requirements, indexes, python, platform)
             if RUNTIME_PACKAGES.match(item["metadata"]["name"].lower())]
    wheels = []
    for item in items:
        info = item["download_info"]
        url = info["url"]
        wheels.append(Wheel(url.rsplit("/", 1)[-1], url, info["archive_info"]["hashes"]["sha256"], content_length(url)))
    cuda = cuda_release(items)
    min_driver, archs = requirements_of(cuda, platform)
    description = (f"torch {torch_version} (CUDA {cuda}) + bitsandbytes {version('bitsandbytes')} "
                   f"for CPython {python} on {platform}")
    return Manifest(description, tuple(wheels), cuda, min_driver, archs)


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
    parser.add_argument("--older-index-url",
                        help="the index of a second runtime for older drivers and GPUs, e.g. torch's cu126 index")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64", help="e.g. win_amd64 for Windows")
    args = parser.parse_args(argv)
    runtimes = [runtime([args.index_url, *args.extra_index_url], args.python_version, args.platform)]
    if args.older_index_url:
        try:
            older = runtime([args.older_index_url, "https://pypi.org/simple"], args.python_version, args.platform)
        except SystemExit as err:  # this torch has no such build: the first runtime is the only one
            print(f"note: no runtime for older drivers: {err}", file=sys.stderr)
        else:
            if older.cuda != runtimes[0].cuda:
                runtimes.append(older)
    write_manifests(args.out, runtimes)
    for item in runtimes:
        print(f"{args.out}: {item.description}: {len(item.wheels)} wheels, {item.total_bytes / 1e9:.2f} GB, "
              f"driver >= {item.min_driver}, {' '.join(item.archs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
