#!/usr/bin/env bash
# Builds the Linux installers: dist/omnivox_<version>_amd64.deb and dist/omnivox-<version>-linux-x86_64.tar.gz.
#
#   installers/build_linux.sh            # the CPU flavour (small; the GPU runtime comes on first run)
#   OMNIVOX_FLAVOUR=full installers/build_linux.sh   # offline bundle: run it in an environment with CUDA torch
#
# Needs the project's .venv (scripts/setup.sh), dpkg-deb and fakeroot-free dpkg (>= 1.19: --root-owner-group).
# Prints the artifacts' sizes and the build time; the last line is a JSON summary for the tests and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
PYTHON="${PYTHON:-.venv/bin/python}"
FLAVOUR="${OMNIVOX_FLAVOUR:-cpu}"
OUT="${OMNIVOX_DIST:-dist}"
WORK="${OMNIVOX_BUILD:-build}"
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
mkdir -p "$OUT" "$WORK"

if ! "$PYTHON" -m PyInstaller --version >/dev/null 2>&1; then
    echo "error: $PYTHON has no PyInstaller: run scripts/setup.sh (it installs the locked build tools)" >&2
    exit 1
fi

# The GPU runtime's manifest. Without one the app still runs (on the CPU) and says so, which is
# why a failed resolution (an index without the CUDA wheels, no network) only warns.
manifest="$WORK/gpu-runtime.json"
rm -f "$manifest"
if [ "$FLAVOUR" = cpu ] && [ "${OMNIVOX_GPU_MANIFEST:-auto}" != none ]; then
    if [ "${OMNIVOX_GPU_MANIFEST:-auto}" != auto ]; then
        cp "$OMNIVOX_GPU_MANIFEST" "$manifest"
    elif ! "$PYTHON" -m installers.gpu_manifest --out "$manifest"; then
        echo "warning: no GPU runtime manifest; this build runs on the CPU only" >&2
        rm -f "$manifest"
    fi
fi

OMNIVOX_FLAVOUR="$FLAVOUR" OMNIVOX_GPU_MANIFEST_FILE="$manifest" "$PYTHON" -m PyInstaller --noconfirm \
    --log-level WARN --distpath "$WORK/pyinstaller-dist" --workpath "$WORK/pyinstaller" installers/omnivox.spec
app="$WORK/pyinstaller-dist/omnivox"
frozen=$(date +%s)

# .deb: the app under /opt/omnivox, `omnivox` on PATH, a desktop entry and the icon.
suffix=$([ "$FLAVOUR" = cpu ] && echo "" || echo "-full")
root="$WORK/deb/omnivox"
rm -rf "$root"
mkdir -p "$root/DEBIAN" "$root/opt" "$root/usr/bin" "$root/usr/share/applications" \
    "$root/usr/share/icons/hicolor/scalable/apps"
cp -a "$app" "$root/opt/omnivox"
ln -s /opt/omnivox/omnivox "$root/usr/bin/omnivox"
cp installers/linux/omnivox.desktop "$root/usr/share/applications/omnivox.desktop"
cp resources/icons/omnivox.svg "$root/usr/share/icons/hicolor/scalable/apps/omnivox.svg"
installed_kb=$(du -sk "$root" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@INSTALLED_KB@/$installed_kb/" installers/linux/control > "$root/DEBIAN/control"
deb="$OUT/omnivox${suffix}_${VERSION}_amd64.deb"
# gzip -1: xz -6 takes minutes for a few hundred MB and buys little on already-compressed libraries
dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$deb" >/dev/null

# .tar.gz: the same folder, to unpack anywhere (a writable folder keeps the GPU runtime beside the app).
tarball="$OUT/omnivox${suffix}-${VERSION}-linux-x86_64.tar.gz"
staging="$WORK/tar/omnivox-$VERSION"
rm -rf "$WORK/tar"
mkdir -p "$staging"
cp -a "$app/." "$staging/"
cp installers/linux/omnivox.desktop resources/icons/omnivox.svg installers/linux/install-desktop-entry.sh "$staging/"
tar -C "$WORK/tar" -cf - "omnivox-$VERSION" | gzip -1 > "$tarball"
rm -rf "$WORK/tar" "$root"

finished=$(date +%s)
deb_bytes=$(stat -c %s "$deb")
tar_bytes=$(stat -c %s "$tarball")
echo "built $deb ($((deb_bytes / 1000000)) MB) and $tarball ($((tar_bytes / 1000000)) MB) in $((finished - started)) s" >&2
printf '{"deb": "%s", "tar": "%s", "deb_bytes": %d, "tar_bytes": %d, "installed_kb": %d, "freeze_seconds": %d, "build_seconds": %d}\n' \
    "$deb" "$tarball" "$deb_bytes" "$tar_bytes" "$installed_kb" "$((frozen - started))" "$((finished - started))"
