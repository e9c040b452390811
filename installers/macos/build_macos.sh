#!/usr/bin/env bash
# Builds dist/Omnivox-<version>-macos-<arch>.dmg holding Omnivox.app. NOT RUN on the Linux build machine.
#
# Needs macOS 12+ with Xcode command-line tools (iconutil, hdiutil, codesign), the project's .venv
# (torch from PyPI is the macOS build with MPS; there is no CUDA on macOS, so no GPU runtime
# download), and for distribution a Developer ID: set CODESIGN_IDENTITY to sign, then notarize with
# `xcrun notarytool submit dist/*.dmg --wait` and `xcrun stapler staple`.
# bitsandbytes has no 4-bit kernels for Apple GPUs; NF4 runs on the CPU there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
mkdir -p build dist
"$PYTHON" -m installers.render_icons icns build/omnivox.icns
OMNIVOX_ICON="$PWD/build/omnivox.icns" OMNIVOX_VERSION="$VERSION" OMNIVOX_GPU_MANIFEST_FILE="" \
    "$PYTHON" -m PyInstaller --noconfirm --log-level WARN --distpath build/pyinstaller-dist \
    --workpath build/pyinstaller installers/omnivox.spec
app=build/pyinstaller-dist/Omnivox.app
"$app/Contents/MacOS/omnivox" --self-test
if [ -n "${CODESIGN_IDENTITY:-}" ]; then
    codesign --deep --force --options runtime --timestamp --sign "$CODESIGN_IDENTITY" "$app"
fi
staging=build/dmg
rm -rf "$staging"
mkdir -p "$staging"
cp -R "$app" "$staging/"
ln -s /Applications "$staging/Applications"
hdiutil create -volname Omnivox -srcfolder "$staging" -format UDZO -ov \
    "dist/Omnivox-$VERSION-macos-$(uname -m).dmg"
