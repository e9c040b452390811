"""requirements/: the lock is complete, hashed, agrees with pyproject.toml, and is what the venv holds."""

from __future__ import annotations

import importlib.util
import re
import shutil
from importlib.metadata import distribution, distributions
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
SPEC = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lock)
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def pins(path: Path, python: str | None = None) -> dict[str, Version]:
    """name → locked version of every line of `path` whose marker holds here (or for another Python)."""
    environment = default_environment()
    if python:
        environment |= {"python_version": python, "python_full_version": f"{python}.0"}
    found = {}
    for name, text in lock.blocks(path.read_text()):
        requirement = Requirement(text.split("\\")[0].strip())
        if requirement.marker is None or requirement.marker.evaluate(environment):
            found[name] = Version(str(requirement.specifier).removeprefix("=="))
    return found


def torch_lock() -> Path:
    """The torch lock scripts/setup.sh chose for this machine."""
    return LOCKS / ("cuda.txt" if shutil.which("nvidia-smi") else "cpu.txt")


def test_every_locked_release_carries_its_hashes() -> None:
    for path in LOCKS.glob("*.txt"):
        for name, text in lock.blocks(path.read_text()):
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", text), f"{path.name}: {name} has no hash"


def test_the_venv_holds_exactly_the_lock() -> None:
    # what makes two set-ups of a fresh clone give the same `pip freeze`: nothing beside the lock, nothing else
    locked = pins(LOCKS / "common.txt") | pins(torch_lock())
    installed = {canonicalize_name(dist.metadata["Name"]): Version(dist.version) for dist in distributions()}
    installed.pop("omnivox")
    assert installed == locked


@pytest.mark.parametrize("python", PYTHONS)
def test_the_lock_satisfies_pyproject_for_every_python(python: str) -> None:
    # an edit to pyproject.toml without re-running scripts/lock.py fails here
    locked = pins(LOCKS / "common.txt", python) | pins(LOCKS / "cuda.txt", python)
    for line in distribution("omnivox").requires:  # pyproject.toml's dependencies and extras, as installed
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not locked for Python {python}"
        assert locked[name] in requirement.specifier, f"{name} {locked[name]} is outside {requirement.specifier}"


def test_torch_is_the_same_release_in_every_lock() -> None:
    for path in (LOCKS / "cpu.txt", LOCKS / "cuda.txt"):
        for name, text in lock.blocks(path.read_text()):
            if name == "torch":
                assert text.startswith(f"torch=={lock.TORCH_RELEASE}")
    assert "torch" not in pins(LOCKS / "common.txt")


def test_the_cuda_libraries_stay_out_of_the_cpu_set_up() -> None:
    common = {name for name, _text in lock.blocks((LOCKS / "common.txt").read_text())}
    cuda = {name for name, _text in lock.blocks((LOCKS / "cuda.txt").read_text())}
    assert not any(lock.CUDA_STACK.match(name) for name in common)
    assert {"torch", "triton", "nvidia-cublas"} <= cuda


def test_blocks_keep_each_requirement_with_its_hashes_and_comments() -> None:
    compiled = ("numpy==2.4.6 ; python_full_version == '3.11.*' \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
                "    # via torch\nNvidia-Cublas==13.1 ; sys_platform == 'linux' \\\n    --hash=sha256:cc\n")
    assert lock.blocks(compiled) == [
        ("numpy", "numpy==2.4.6 ; python_full_version == '3.11.*' \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
                  "    # via torch\n"),
        ("nvidia-cublas", "Nvidia-Cublas==13.1 ; sys_platform == 'linux' \\\n    --hash=sha256:cc\n"),
    ]
