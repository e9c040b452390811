"""Re-resolves the lock files in requirements/ from pyproject.toml and requirements/setup.in.

    .venv/bin/python scripts/lock.py             # after editing pyproject.toml: keeps every pin it still can
    .venv/bin/python scripts/lock.py --upgrade   # the newest releases pyproject.toml allows

(`bash scripts/upgrade.sh` runs the second, then the whole test suite with the installer self-test.)

One universal resolution by uv (`uv pip compile --universal`: Linux, Windows and macOS, every
Python pyproject.toml admits, each line with the SHA-256 of every file of that release), split
three ways so that a machine installs exactly one build of torch:

    requirements/common.txt  everything but torch and its CUDA libraries
    requirements/cuda.txt    torch from PyPI (the CUDA build on Linux) and the CUDA libraries it needs
    requirements/cpu.txt     the CPU build of torch on Linux; PyPI's torch (a CPU build) on Windows and macOS

uv, not pip-tools: pip-tools resolves for the machine it runs on only, uv for every platform at once.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
# torch's release and the set-up's own tools, resolved with pyproject.toml
SETUP_INPUT = LOCKS / "setup.in"
TORCH_RELEASE = re.search(r"^torch==(\S+)$", SETUP_INPUT.read_text(), re.MULTILINE).group(1)
# Only the CUDA build of torch needs these; the CPU build and the other platforms' torch do not.
CUDA_STACK = re.compile(r"^(triton|nvidia-[\w-]+|cuda-[\w-]+)$")
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")
HEADER = "# {what}\n# Written by scripts/lock.py from pyproject.toml; do not edit by hand.\n"


def blocks(compiled: str) -> list[tuple[str, str]]:
    """(package name, its lines) for each requirement of uv's output, in order."""
    found: list[tuple[str, str]] = []
    for line in compiled.splitlines(keepends=True):
        if match := REQUIREMENT.match(line):
            found.append((match.group(1).lower(), line))
        elif found and line.startswith(" "):
            found[-1] = (found[-1][0], found[-1][1] + line)
    return found


def resolve(upgrade: bool) -> str:
    """uv's universal resolution, preferring today's pins unless upgrading."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "all.txt"
        if not upgrade:  # uv keeps the versions it finds in the output file where they still fit
            output.write_text("".join((LOCKS / name).read_text() for name in ("common.txt", "cuda.txt")
                                      if (LOCKS / name).is_file()))
        command = [sys.executable, "-m", "uv", "pip", "compile", "pyproject.toml", str(SETUP_INPUT.relative_to(ROOT)),
                   "--extra", "dev", "--extra", "build", "--universal", "--python-version", "3.10",
                   "--generate-hashes", "--no-header", "--quiet", "--output-file", str(output),
                   *(["--upgrade"] if upgrade else [])]
        subprocess.run(command, cwd=ROOT, check=True)
        return output.read_text()


def cpu_torch_hash() -> str:
    """The SHA-256 of torch's CPU build for Linux, as pip finds it (PyTorch's CPU index, or a local folder)."""
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--dest", scratch,
                        f"torch=={TORCH_RELEASE}+cpu"], check=True)
        (wheel,) = Path(scratch).glob("torch-*.whl")
        return hashlib.sha256(wheel.read_bytes()).hexdigest()


def write_locks(compiled: str, cpu_hash: str) -> None:
    common, cuda = [], []
    pypi_torch = ""
    for name, text in blocks(compiled):
        if name == "torch":
            pypi_torch = text
        (cuda if name == "torch" or CUDA_STACK.match(name) else common).append(text)
    LOCKS.mkdir(exist_ok=True)
    (LOCKS / "common.txt").write_text(HEADER.format(what="Every dependency but torch, for every platform.")
                                      + "".join(common))
    (LOCKS / "cuda.txt").write_text(HEADER.format(what="torch's CUDA build (PyPI) and its CUDA libraries.")
                                    + "".join(cuda))
    # The CPU build of torch for Linux is published for CPython 3.11 here; other platforms take PyPI's.
    other_platforms = pypi_torch.replace(f"torch=={TORCH_RELEASE} \\",
                                         f"torch=={TORCH_RELEASE} ; sys_platform != 'linux' \\", 1)
    linux_cpu = (f"torch=={TORCH_RELEASE}+cpu ; sys_platform == 'linux' and python_version == '3.11' \\\n"
                 f"    --hash=sha256:{cpu_hash}\n")
    (LOCKS / "cpu.txt").write_text(HEADER.format(what="torch's CPU build.") + linux_cpu + other_platforms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lock.py", description=__doc__.split("\n")[0])
    parser.add_argument("--upgrade", action="store_true", help="take the newest releases pyproject.toml allows")
    args = parser.parse_args(argv)
    write_locks(resolve(args.upgrade), cpu_torch_hash())
    print(f"wrote {', '.join(sorted(path.name for path in LOCKS.glob('*.txt')))} in {LOCKS.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
