"""The first-run GPU download and notices as Qt dialogs, shown before the main window.

The work is installers.gpu_runtime.install on a plain thread; progress crosses to the dialog through
a queued Qt signal. Cancel stops the download between chunks and keeps the partial file.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QApplication, QMessageBox, QProgressDialog

from installers import gpu_runtime
from installers.download import DownloadCancelled, DownloadError
from installers.gpu_runtime import Manifest

MB = 1_000_000
SHOWN: list[QMessageBox] = []


class Relay(QObject):
    progress = Signal(int, int)  # MB done, MB total (int: Qt's progress bar takes int)
    finished = Signal(str)  # "" on success, else why it stopped


def application() -> QApplication:
    app = QApplication.instance()
    return app if isinstance(app, QApplication) else QApplication(sys.argv[:1])


def show_notice(text: str) -> None:
    """A non-modal note beside the main window: it informs, and must not hold up the window."""
    application()
    box = QMessageBox(QMessageBox.Icon.Information, "Omnivox", text)
    box.setModal(False)
    box.setAttribute(Qt.WidgetAttribute.WA_QuitOnClose, False)  # closing the main window still quits the app
    QTimer.singleShot(0, box.show)  # once the event loop runs: after the main window, so it shows on top
    SHOWN.append(box)  # the box lives until the user closes it, not until this function returns


def run_install_dialog(manifest: Manifest, root: Path, notice: str) -> bool:
    """Offer, then run the download with a progress dialog; True when the runtime is installed."""
    application()
    answer = QMessageBox.question(None, "Omnivox: use the GPU", f"{notice}\n\nDownload it now?")
    if answer != QMessageBox.StandardButton.Yes:
        show_notice("Omnivox runs on the CPU this time; it offers the download again at the next start.")
        return False
    dialog = QProgressDialog("Downloading the GPU runtime…", "Cancel", 0, manifest.total_bytes // MB)
    dialog.setWindowTitle("Omnivox")
    dialog.setWindowModality(Qt.WindowModality.ApplicationModal)
    dialog.setAutoClose(False)
    dialog.setAutoReset(False)
    relay = Relay()
    relay.progress.connect(lambda done, total: (dialog.setValue(done), dialog.setLabelText(
        f"Downloading the GPU runtime… {done:,} of {total:,} MB")))
    cancel = threading.Event()
    outcome: list[str] = []

    def work() -> None:
        try:
            gpu_runtime.install(manifest, root, lambda done, total: relay.progress.emit(done // MB, total // MB),
                                cancel)
            message = ""
        except DownloadCancelled:
            message = "cancelled"
        except (DownloadError, OSError, ValueError) as err:
            message = str(err)
        outcome.append(message)
        relay.finished.emit(message)

    relay.finished.connect(lambda _message: dialog.accept())  # ends exec(); reset() would not, with autoClose off
    dialog.canceled.connect(cancel.set)
    worker = threading.Thread(target=work, name="gpu-runtime-download", daemon=True)
    worker.start()
    dialog.exec()
    cancel.set()  # closing the dialog any way stops the download
    worker.join()
    message = outcome[0]  # the worker always records one before it ends
    if message == "":
        return True
    reason = "You cancelled the download" if message == "cancelled" else f"The download failed ({message})"
    show_notice(f"{reason}. Omnivox runs on the CPU this time and resumes the download at the next start.")
    return False

