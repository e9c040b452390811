# livekit.rtc (the app's WebRTC echo canceller) loads its Rust FFI library, resources/liblivekit_ffi.so,
# with ctypes through importlib.resources: invisible to PyInstaller's analysis, so without this hook
# the frozen app would silently fall back to the echo gate alone.
from PyInstaller.utils.hooks import collect_dynamic_libs

binaries = collect_dynamic_libs("livekit.rtc")
hiddenimports = ["livekit.rtc.resources"]
