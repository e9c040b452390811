"""What the frozen app carries besides code: its dependencies' data files and metadata.

PyInstaller follows imports, not files. A package that reads a file of its own when imported breaks
a frozen app unless something collects that file: transformers 5.25 began importing `kernels`, which
reads `python_depends.json` at import, and the self-test of the built app failed. So the spec does
not list packages by hand: for every distribution the app needs at run time (pyproject.toml's
dependencies and theirs, as installed) it collects the package's data files and its metadata
(transformers and peft check their dependencies' versions through importlib.metadata).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

APP = "omnivox"
# Their PyInstaller hooks collect the files they need; collecting all of torch's data would add
# 180 MB of C++ headers.
HOOKED = frozenset({"torch", "pyside6-essentials", "shiboken6"})
# Files no package reads at run time: type stubs and C headers.
NOT_READ = ["**/*.pyi", "**/*.h", "**/*.hpp", "**/py.typed"]


def runtime_distributions(root: str = APP) -> list[str]:
    """The distributions `root` needs to run, as installed here: its requirements without extras, recursively."""
    needed: list[str] = []
    pending = [root]
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.append(name)
        for line in distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return sorted(set(needed) - {root})


def top_level_packages(distribution_names: list[str]) -> dict[str, list[str]]:
    """distribution → the import names it installs."""
    packages: dict[str, list[str]] = {name: [] for name in distribution_names}
    for package, owners in packages_distributions().items():
        for owner in owners:
            if canonicalize_name(owner) in packages:
                packages[canonicalize_name(owner)].append(package)
    return packages


def collected_files() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(data files, metadata folders) as PyInstaller's `datas` entries, for every runtime distribution."""
    from PyInstaller.utils.hooks import collect_data_files, copy_metadata

    data: list[tuple[str, str]] = []
    metadata: list[tuple[str, str]] = []
    for name, packages in top_level_packages(runtime_distributions()).items():
        try:
            metadata += copy_metadata(name)
        except PackageNotFoundError:  # a requirement whose marker held but that is not installed: pip check says so
            continue
        if name not in HOOKED:
            for package in packages:
                data += collect_data_files(package, excludes=NOT_READ)
    return data, metadata
