"""Screen capture through Qt: a whole screen, one window, or a region of a screen.

Grabs run on the GUI thread (QScreen requires it) and take a few milliseconds; encoding the
result as PNG is the slow part and belongs on a worker (`frames.png_from_qimage`). A platform
that refuses captures (Wayland without a portal, macOS without the screen-recording permission)
hands back a null pixmap; that becomes a `CaptureRefused` with one line for the user.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

from PySide6.QtCore import QRect
from PySide6.QtGui import QGuiApplication, QImage, QScreen

from engine.errors import OmnivoxError

REFUSED = ("The system refused the screen capture{what}. On Wayland, or on macOS without the screen-recording "
           "permission, use an image instead (drag a screenshot in).")


class CaptureRefused(OmnivoxError):
    pass


@dataclass(frozen=True)
class WindowInfo:
    id: int  # the platform's window id, as QScreen.grabWindow takes it
    title: str


def screens() -> list[QScreen]:
    return QGuiApplication.screens()


def screen_label(screen: QScreen) -> str:
    size = screen.geometry()
    return f"{screen.name() or 'Screen'} ({size.width()}×{size.height()})"


def capture_screen(screen: QScreen | None = None) -> QImage:
    return grab(screen or QGuiApplication.primaryScreen(), 0, "")


def capture_window(window_id: int, screen: QScreen | None = None) -> QImage:
    return grab(screen or QGuiApplication.primaryScreen(), window_id, " of that window")


def capture_region(screen: QScreen, region: QRect) -> QImage:
    """`region` in the screen's own (logical) coordinates."""
    return crop(capture_screen(screen), region)


def crop(image: QImage, region: QRect) -> QImage:
    """The part of a screen capture under `region` (logical coordinates; the capture may be high-DPI)."""
    ratio = image.devicePixelRatio()
    pixels = QRect(round(region.x() * ratio), round(region.y() * ratio),
                   round(region.width() * ratio), round(region.height() * ratio)).intersected(image.rect())
    if pixels.isEmpty():
        raise CaptureRefused("The selected region is empty; drag out a rectangle.")
    return image.copy(pixels)


def grab(screen: QScreen | None, window_id: int, what: str) -> QImage:
    if screen is None:
        raise CaptureRefused("There is no screen to capture.")
    pixmap = screen.grabWindow(window_id)
    if pixmap.isNull() or pixmap.width() == 0:
        raise CaptureRefused(REFUSED.format(what=what))
    return pixmap.toImage()


def list_windows() -> list[WindowInfo]:
    """Top-level windows of other programs, where the platform lets us list them (X11 for now)."""
    if QGuiApplication.platformName() != "xcb" or not os.environ.get("DISPLAY"):
        return []
    return x11_client_windows()


def x11_client_windows() -> list[WindowInfo]:
    """The window manager's client list (_NET_CLIENT_LIST) with titles, through libX11."""
    name = ctypes.util.find_library("X11")
    if name is None:
        return []
    x11 = ctypes.cdll.LoadLibrary(name)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XDefaultRootWindow.restype = ctypes.c_ulong
    x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XGetWindowProperty.argtypes = [
        ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_ulong,
        ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_ulong),
        ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.c_void_p),
    ]
    x11.XFree.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    display = x11.XOpenDisplay(None)
    if not display:
        return []
    try:
        root = x11.XDefaultRootWindow(display)

        def atom(text: str) -> int:
            return x11.XInternAtom(display, text.encode(), 0)

        def window_property(window: int, name: str, kind: int) -> tuple[int, int, bytes]:
            actual, fmt, count, after, data = (ctypes.c_ulong(), ctypes.c_int(), ctypes.c_ulong(), ctypes.c_ulong(),
                                               ctypes.c_void_p())
            status = x11.XGetWindowProperty(display, window, atom(name), 0, 1 << 16, 0, kind, ctypes.byref(actual),
                                            ctypes.byref(fmt), ctypes.byref(count), ctypes.byref(after),
                                            ctypes.byref(data))
            if status != 0 or not data.value:
                return 0, 0, b""
            # Format 32 items are C longs in memory, whatever their declared width.
            size = count.value * (ctypes.sizeof(ctypes.c_long) if fmt.value == 32 else fmt.value // 8)
            raw = ctypes.string_at(data.value, size)
            x11.XFree(data)
            return fmt.value, count.value, raw

        _, count, raw = window_property(root, "_NET_CLIENT_LIST", 33)  # XA_WINDOW
        ids = list((ctypes.c_ulong * count).from_buffer_copy(raw)) if count else []
        windows = []
        for window in ids:
            title = window_property(window, "_NET_WM_NAME", atom("UTF8_STRING"))[2].decode("utf-8", "replace")
            windows.append(WindowInfo(window, title or f"window {window:#x}"))
        return windows
    finally:
        x11.XCloseDisplay(display)
