"""The frozen app's data files: every package the app imports finds its own files in the bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from fnmatch import fnmatch
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from installers import bundle

ROOT = Path(__file__).resolve().parents[2]
# What the self-test imports, reported as {top-level package: folder} for the installed packages.
IMPORTED_PACKAGES = """
import json, sys, sysconfig
from pathlib import Path
from engine.selftest import import_app_modules
import_app_modules()
installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
found = {}
for name, module in list(sys.modules.items()):
    origin = getattr(module, "__file__", None)
    if origin and "." not in name and Path(origin).resolve().parent.parent in installed:
        found[name] = str(Path(origin).resolve().parent)
print(json.dumps(found))
"""
CODE = (".py", ".pyc", ".so", ".pyd", ".dll", ".dylib")


@pytest.fixture(scope="module")
def collected_sources() -> set[Path]:
    data, _metadata = bundle.collected_files()
    return {Path(source).resolve() for source, _destination in data}


@pytest.fixture(scope="module")
def imported_packages() -> dict[str, Path]:
    result = subprocess.run([sys.executable, "-c", IMPORTED_PACKAGES], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=True)
    return {name: Path(folder) for name, folder in json.loads(result.stdout.splitlines()[-1]).items()}


def data_files(folder: Path) -> list[Path]:
    """What a package may read at run time: its files that are not code, type stubs or headers."""
    return [path for path in folder.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(CODE)
            and ".so." not in path.name
            and not any(fnmatch(f"x/{path.relative_to(folder)}", pattern) for pattern in bundle.NOT_READ)]


def test_kernels_dependency_data_is_in_the_bundle(collected_sources: set[Path]) -> None:
    # transformers 5.25 imports kernels, which reads this file at import: without it the built app's
    # self-test failed on "Cannot load dependency data"
    assert any(path.name == "python_depends.json" and path.parent.parent.name == "kernels"
               for path in collected_sources)


def test_every_package_the_app_imports_has_its_data_in_the_bundle(imported_packages: dict[str, Path],
                                                                  collected_sources: set[Path]) -> None:
    owners = packages_distributions()
    assert "kernels" in imported_packages  # what made the check necessary is still imported
    missing = {}
    for package, folder in imported_packages.items():
        if {canonicalize_name(owner) for owner in owners.get(package, [])} & bundle.HOOKED:
            continue
        if lost := [str(path.relative_to(folder)) for path in data_files(folder) if path not in collected_sources]:
            missing[package] = lost[:3]
    assert missing == {}


def test_every_runtime_dependency_ships_its_metadata() -> None:
    # transformers and peft look their dependencies' versions up with importlib.metadata
    _data, metadata = bundle.collected_files()
    shipped = {Path(destination).name.split("-")[0].lower() for _source, destination in metadata}
    for name in ("transformers", "tokenizers", "huggingface_hub", "safetensors", "peft", "accelerate", "kernels"):
        assert name in shipped
