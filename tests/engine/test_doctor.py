"""doctor's GPU section from faked torch.cuda answers and nvidia-smi output (there is no GPU here)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from engine import doctor

NVIDIA_SMI_HEADER = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


def fake_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        out = "550.54.15\n" if any(arg.startswith("--query-gpu") for arg in command) else NVIDIA_SMI_HEADER
        return subprocess.CompletedProcess(command, 0, out, "")

    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(doctor.subprocess, "run", run)


@pytest.mark.parametrize(("capability", "bf16"), [((7, 5), False), ((8, 6), True)])
def test_the_gpu_report_names_capability_bf16_driver_and_both_cuda_versions(
        monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], bf16: bool) -> None:
    fake_nvidia_smi(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5_000_000_000, 8_000_000_000))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or bf16)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    report = doctor.gpu_report()
    assert report["compute_capability"] == f"{capability[0]}.{capability[1]}"
    assert report["native_bf16"] is bf16
    assert (report["driver"], report["driver_cuda"], report["cuda_runtime"]) == ("550.54.15", "12.4", "12.6")
    assert report["torch_archs"] == ["sm_75", "sm_80", "sm_86"] and report["vram_total_gb"] == 8.0


def test_without_a_gpu_the_report_says_so_and_bitsandbytes_runs_on_the_cpu() -> None:
    report = doctor.gpu_report()
    assert report["cuda_available"] is False and "compute_capability" not in report
    assert doctor.bitsandbytes_report() | {"version": None} == {
        "installed": True, "version": None, "backend": "CPU", "cuda_library": False, "library_error": None}
