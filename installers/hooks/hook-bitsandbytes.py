# Replaces pyinstaller-hooks-contrib's hook, which collects every bitsandbytes kernel library
# (CUDA 11.8–13.2, ROCm, XPU: ~120 MB). The CPU flavour keeps only the CPU kernels; on a GPU the
# first-run download brings bitsandbytes with its CUDA kernels (installers/gpu_runtime.py).
import os

from PyInstaller.utils.hooks import collect_dynamic_libs

binaries = collect_dynamic_libs("bitsandbytes")
if os.environ.get("OMNIVOX_FLAVOUR", "cpu") == "cpu":
    binaries = [(path, dest) for path, dest in binaries if os.path.basename(path).startswith("libbitsandbytes_cpu.")]

# bitsandbytes' optional triton kernels are JIT-compiled from their source files
module_collection_mode = "pyz+py"
