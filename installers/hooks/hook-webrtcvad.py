# Replaces pyinstaller-hooks-contrib's hook, which copies the metadata of the `webrtcvad`
# distribution: the app uses the maintained fork `webrtcvad-wheels` (same import name), and
# webrtcvad.py reads its version from that distribution's metadata.
from PyInstaller.utils.hooks import copy_metadata

datas = copy_metadata("webrtcvad-wheels")
