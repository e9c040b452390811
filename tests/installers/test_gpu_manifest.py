"""The GPU runtime's manifest is resolved for the target platform, from PyPI, at the locked versions."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from installers import gpu_manifest


def test_a_manylinux_target_takes_every_older_manylinux_wheel() -> None:
    tags = gpu_manifest.platform_tags("manylinux_2_28_x86_64")
    # bitsandbytes 0.50.2 is tagged manylinux_2_24 and cuSPARSELt manylinux2014: pip refused both
    # when given only the target's own tag, and builds went out without a GPU runtime
    assert {"manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
            "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags
    assert gpu_manifest.platform_tags("win_amd64") == ["win_amd64"]


def test_resolution_uses_only_the_named_index_and_the_locked_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def pip(command: list[str], **options: object) -> subprocess.CompletedProcess:
        calls.append((command, options["env"]))
        return subprocess.CompletedProcess(command, 0, json.dumps({"install": []}), "")

    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")  # where the build machines keep torch's CPU build
    monkeypatch.setattr(subprocess, "run", pip)
    gpu_manifest.resolve(["torch==2.13.0"], ["https://pypi.org/simple"], "3.11", "manylinux_2_28_x86_64")
    (command, environment), = calls
    assert f"--constraint={gpu_manifest.LOCKS / 'cuda.txt'}" in command
    assert f"--constraint={gpu_manifest.LOCKS / 'common.txt'}" in command
    assert "PIP_FIND_LINKS" not in environment and environment["PIP_CONFIG_FILE"] == os.devnull
    assert (gpu_manifest.LOCKS / "cuda.txt").is_file()
