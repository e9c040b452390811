"""The desktop window and its parts (thin Qt views over the Qt-free modules in app/)."""

from app.window.main_window import MainWindow, ModelChoice

__all__ = ["MainWindow", "ModelChoice"]
