"""Which GPU runtime a GPU and its driver get (faked nvidia-smi output and torch.cuda answers), and the
check of the downloaded torch in a fresh process before the app switches to it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from installers import firstrun, gpu_manifest, gpu_runtime
from installers.firstrun import plan
from installers.gpu_runtime import Gpu, Manifest, Wheel

WHEEL = (Wheel("torch.whl", "https://x/torch.whl", "ab" * 32, 2_800_000_000),)
CURRENT = Manifest("torch (CUDA 13.0)", WHEEL, "13.0", "580.65.06", gpu_manifest.ARCHS["13.0"])
OLDER = Manifest("torch (CUDA 12.6)", (Wheel("t126.whl", "https://x/t126.whl", "cd" * 32, 2_500_000_000),),
                 "12.6", "525.60.13", gpu_manifest.ARCHS["12.6"])


@pytest.mark.parametrize(("output", "expected"), [
    ("NVIDIA GeForce RTX 4070, 560.35.03, 8.9\n", Gpu("NVIDIA GeForce RTX 4070", "560.35.03", (8, 9))),
    ("NVIDIA GeForce RTX 5090, 575.51.02, 12.0\n", Gpu("NVIDIA GeForce RTX 5090", "575.51.02", (12, 0))),
    ("Quadro RTX 6000, Rev 2, 535.54.03, 7.5\n", Gpu("Quadro RTX 6000,Rev 2", "535.54.03", (7, 5))),
    ("Tesla K80, 470.82.01\n", Gpu("Tesla K80", "470.82.01")),  # a driver without the compute_cap field
])
def test_nvidia_smi_output_gives_name_driver_and_capability(output: str, expected: Gpu) -> None:
    assert gpu_runtime.detect_nvidia(lambda: output) == expected


@pytest.mark.parametrize(("gpu", "chosen"), [
    (Gpu("RTX 4070", "590.44.01", (8, 9)), CURRENT),
    (Gpu("RTX 5090", "590.44.01", (12, 0)), CURRENT),
    (Gpu("RTX 2080", "580.65.06", (7, 5)), CURRENT),  # exactly the oldest driver
    (Gpu("RTX 3060", "550.54.15", (8, 6)), OLDER),  # a driver too old for CUDA 13
    (Gpu("GTX 1080", "590.44.01", (6, 1)), OLDER),  # Pascal: only the CUDA 12.6 build has kernels for it
    (Gpu("Titan V", "535.54.03", (7, 0)), OLDER),
])
def test_the_first_runtime_the_driver_and_gpu_can_run_is_offered(gpu: Gpu, chosen: Manifest) -> None:
    assert gpu_runtime.choose(gpu, (CURRENT, OLDER)) == chosen


def test_a_gpu_older_than_every_runtime_is_told_so_before_any_download(tmp_path: Path) -> None:
    decided = plan(Gpu("Tesla K80", "470.82.01", (3, 7)), (CURRENT, OLDER), tmp_path)
    assert decided.action == "cpu" and decided.runtime is None
    assert decided.notice == ("Tesla K80 (compute capability 3.7) is too old for Omnivox's GPU runtime, which "
                              "needs 5.0 or newer: Omnivox runs on the CPU.")
    only_current = plan(Gpu("GTX 1080", "590.44.01", (6, 1)), (CURRENT,), tmp_path)
    assert only_current.action == "cpu" and "(compute capability 6.1) is too old" in only_current.notice
    assert "needs 7.5 or newer" in only_current.notice


def test_an_old_driver_is_told_which_driver_it_needs(tmp_path: Path) -> None:
    for capability in ((8, 6), None):  # with or without a reported capability
        decided = plan(Gpu("RTX 3060", "470.82.01", capability), (CURRENT, OLDER), tmp_path)
        assert decided.action == "cpu"
        assert decided.notice.startswith("RTX 3060 found, but its NVIDIA driver 470.82.01 is older than 525.60.13")
        assert "update the driver" in decided.notice


def test_the_offer_names_the_chosen_runtime_s_size(tmp_path: Path) -> None:
    decided = plan(Gpu("GTX 1080", "590.44.01", (6, 1)), (CURRENT, OLDER), tmp_path)
    assert decided.action == "install" and decided.runtime == OLDER and "(2.5 GB)" in decided.notice


def test_manifests_round_trip_with_their_requirements(tmp_path: Path) -> None:
    gpu_runtime.write_manifests(tmp_path / "m.json", (CURRENT, OLDER))
    assert gpu_runtime.read_manifests(tmp_path / "m.json") == (CURRENT, OLDER)


def pip_item(name: str, version: str) -> dict:
    return {"metadata": {"name": name, "version": version}}


def test_the_build_records_each_runtime_s_cuda_driver_and_architectures() -> None:
    pypi = [pip_item("torch", "2.13.0"), pip_item("nvidia-cuda-runtime", "13.0.96"), pip_item("bitsandbytes", "0.50.2")]
    assert gpu_manifest.cuda_release(pypi) == "13.0"
    assert gpu_manifest.cuda_release([pip_item("torch", "2.13.0+cu126")]) == "12.6"
    assert gpu_manifest.requirements_of("12.6", "manylinux_2_28_x86_64") == ("525.60.13", gpu_manifest.ARCHS["12.6"])
    assert gpu_manifest.requirements_of("13.0", "win_amd64")[0] == "580.88"
    assert gpu_manifest.requirements_of("13.2", "manylinux_2_28_x86_64")[1] == gpu_manifest.ARCHS["13.0"]
    with pytest.raises(SystemExit, match="CUDA 11.8: add its oldest driver"):
        gpu_manifest.requirements_of("11.8", "manylinux_2_28_x86_64")


def installed_runtime(root: Path, torch_source: str) -> None:
    """A runtime folder as install() leaves it, whose torch is a stand-in answering like a CUDA build."""
    (root / "site" / "torch").mkdir(parents=True)
    (root / "site" / "torch" / "__init__.py").write_text(torch_source)
    (root / gpu_runtime.MARKER_NAME).write_text(json.dumps({"digest": OLDER.digest}))


FAKE_TORCH = """
__version__ = "2.13.0+cu126"
class version:
    cuda = "12.6"
class cuda:
    is_available = staticmethod(lambda: True)
    get_device_capability = staticmethod(lambda device=0: ({major}, {minor}))
    get_arch_list = staticmethod(lambda: ["sm_75", "sm_80", "sm_86", "sm_90"])
    get_device_name = staticmethod(lambda device=0: "NVIDIA GeForce GTX 1080")
"""


@pytest.mark.parametrize(("capability", "problem"), [
    ((8, 9), None),
    ((6, 1), "NVIDIA GeForce GTX 1080 (compute capability 6.1) is not among the GPU runtime's architectures "
             "(sm_75 sm_80 sm_86 sm_90): Omnivox runs on the CPU."),
])
def test_after_install_a_fresh_process_checks_the_runtime_s_torch_before_the_switch(
        tmp_path: Path, capability: tuple[int, int], problem: str | None) -> None:
    root = tmp_path / "gpu-runtime"
    installed_runtime(root, FAKE_TORCH.format(major=capability[0], minor=capability[1]))
    gpu = Gpu("NVIDIA GeForce GTX 1080", "590.44.01", capability)
    assert plan(gpu, (OLDER,), root).action == "check"  # installed, not yet checked: not used yet
    assert gpu_runtime.verify(root, firstrun.check_command(root)) == problem
    decided = plan(gpu, (OLDER,), root)
    assert (decided.action, decided.notice) == (("gpu", None) if problem is None else ("cpu", problem))
    assert "torch" not in sys.modules or sys.modules["torch"] is torch  # the stand-in only lived in the child


def test_a_runtime_whose_torch_cannot_load_is_not_used(tmp_path: Path) -> None:
    root = tmp_path / "gpu-runtime"
    installed_runtime(root, "raise OSError('libcudart.so.12: cannot open shared object file')\n")
    problem = gpu_runtime.verify(root, firstrun.check_command(root))
    assert problem.startswith("the GPU runtime failed its check (OSError: libcudart.so.12: cannot open shared")
    assert plan(Gpu("RTX 3060", "550.54.15", (8, 6)), (OLDER,), root).action == "cpu"


def test_a_cuda_build_that_cannot_reach_the_gpu_says_to_update_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "CUDA 13.0) cannot use the GPU; update the NVIDIA driver" in gpu_runtime.check_active_runtime()
