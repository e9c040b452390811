"""Another application's window that drags a file, as a file manager would: the source of a real drop.

    python tests/e2e/drag_source.py FILE X Y

Shows a small window at (X, Y) and prints "READY" once it is on screen. A mouse press on it
starts a drag of FILE's URL (text/uri-list over XDND, Qt's own drag machinery); the test then
moves the pointer with xdotool and releases it over the target. Prints "DROPPED" when the
target accepted the drop, "REFUSED" otherwise, and exits a little later (the target fetches
the dropped data from this process after the drop).
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QMimeData, Qt, QTimer, QUrl
from PySide6.QtGui import QDrag, QMouseEvent
from PySide6.QtWidgets import QApplication, QLabel


class DragSource(QLabel):
    def __init__(self, path: str) -> None:
        super().__init__("drag me")
        self.path = path
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWindowFlag(Qt.WindowType.FramelessWindowHint)
        self.setStyleSheet("background: #fc6; color: black;")

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(self.path)])
        drag = QDrag(self)
        drag.setMimeData(mime)
        accepted = drag.exec(Qt.DropAction.CopyAction) != Qt.DropAction.IgnoreAction
        print("DROPPED" if accepted else "REFUSED", flush=True)
        # The target fetches the file's URL from this process after the drop: stay until it has.
        QTimer.singleShot(3000, QApplication.quit)


def main() -> int:
    path, x, y = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    app = QApplication([])
    source = DragSource(path)
    source.setGeometry(x, y, 120, 80)
    source.show()
    QTimer.singleShot(300, lambda: print("READY", flush=True))  # mapped and painted by then
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
