# Builds dist\omnivox-<version>-windows-x64-setup.exe. NOT RUN on the Linux build machine.
#
# Needs: Python 3.11 x64 with the project installed from the lock (py -3.11 -m venv .venv;
# .venv\Scripts\pip install --require-hashes --no-deps -r requirements\common.txt -r requirements\cpu.txt;
# .venv\Scripts\pip install --no-deps --no-build-isolation -e .) — PyPI's Windows torch is the CPU build,
# and Inno Setup 6 (ISCC.exe on PATH or in its default folder).
# The app needs the MSVC runtime, which the torch wheel already carries as DLLs.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
$python = ".venv\Scripts\python.exe"
$version = & $python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])"
New-Item -ItemType Directory -Force build, dist | Out-Null

& $python -m installers.render_icons ico build\omnivox.ico
# The CUDA runtime comes from PyTorch's own index on Windows (PyPI's Windows torch is CPU-only).
& $python -m installers.gpu_manifest --out build\gpu-runtime.json --platform win_amd64 `
    --index-url https://download.pytorch.org/whl/cu128 --extra-index-url https://pypi.org/simple
if ($LASTEXITCODE -ne 0) { Write-Warning "no GPU runtime manifest: this build runs on the CPU only"; Remove-Item -ErrorAction Ignore build\gpu-runtime.json }

$env:OMNIVOX_ICON = (Resolve-Path build\omnivox.ico).Path
$env:OMNIVOX_GPU_MANIFEST_FILE = if (Test-Path build\gpu-runtime.json) { (Resolve-Path build\gpu-runtime.json).Path } else { "" }
& $python -m PyInstaller --noconfirm --log-level WARN --distpath build\pyinstaller-dist --workpath build\pyinstaller installers\omnivox.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
& build\pyinstaller-dist\omnivox\omnivox.exe --self-test
if ($LASTEXITCODE -ne 0) { throw "the frozen app failed its self-test" }

$iscc = (Get-Command ISCC.exe -ErrorAction SilentlyContinue).Source
if (-not $iscc) { $iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" }
& $iscc "/DAppVersion=$version" installers\windows\omnivox.iss
if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }
