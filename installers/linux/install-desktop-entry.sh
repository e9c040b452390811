#!/bin/sh
# For the .tar.gz: adds Omnivox to the desktop menu of the current user, pointing at this folder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
icons="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/scalable/apps"
mkdir -p "$apps" "$icons"
cp "$here/omnivox.svg" "$icons/omnivox.svg"
sed "s|^Exec=omnivox|Exec=\"$here/omnivox\"|" "$here/omnivox.desktop" > "$apps/omnivox.desktop"
echo "added $apps/omnivox.desktop"
