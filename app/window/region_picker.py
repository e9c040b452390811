"""Pick a region of a screen by dragging over a frozen capture of it (Esc cancels)."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QScreen
from PySide6.QtWidgets import QWidget

MIN_SIDE = 8  # a click, not a drag


class RegionPicker(QWidget):
    picked = Signal(QRect)  # in the screen's logical coordinates

    def __init__(self, screen: QScreen, capture: QImage) -> None:
        super().__init__(None, Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnTopHint)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setAccessibleName("Drag out a region of the screen; Escape cancels")
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.capture = capture
        self.origin: QPoint | None = None
        self.selection = QRect()
        self.setScreen(screen)
        self.setGeometry(screen.geometry())

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.drawImage(self.rect(), self.capture)
        painter.fillRect(self.rect(), QColor(0, 0, 0, 110))
        if not self.selection.isEmpty():
            painter.drawImage(self.selection, self.capture, self.source_rect(self.selection))
            painter.setPen(QColor(80, 160, 255))
            painter.drawRect(self.selection.adjusted(0, 0, -1, -1))
        painter.setPen(Qt.GlobalColor.white)
        painter.drawText(self.rect().adjusted(0, 24, 0, 0), Qt.AlignmentFlag.AlignHCenter,
                         "Drag out the region the assistant should see · Esc cancels")

    def source_rect(self, rect: QRect) -> QRect:
        ratio = self.capture.devicePixelRatio()
        return QRect(round(rect.x() * ratio), round(rect.y() * ratio), round(rect.width() * ratio),
                     round(rect.height() * ratio))

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self.origin = event.position().toPoint()
        self.selection = QRect()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self.origin is not None:
            self.selection = QRect(self.origin, event.position().toPoint()).normalized()
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self.selection.width() >= MIN_SIDE and self.selection.height() >= MIN_SIDE:
            self.picked.emit(self.selection)
            self.close()
        self.origin = None

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Escape:
            self.close()
