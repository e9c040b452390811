"""Small widgets of the main window: state indicator, mic level meter, the message box, previews."""

from __future__ import annotations

from PySide6.QtCore import QMimeData, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QPainter, QPaintEvent
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QProgressBar, QSizePolicy, QWidget

from app.voice import STATES

METER_FLOOR_DB = -60.0  # the meter's empty end; speech sits around -30 to -10 dBFS


class StateIndicator(QLabel):
    """A coloured dot and a word; the style sheet colours it by its `state` property."""

    LABELS = {"idle": "Idle", "listening": "Listening", "user speaking": "You are speaking",
              "thinking": "Thinking…", "speaking": "Speaking"}

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("stateIndicator")
        self.setAccessibleName("Assistant state")
        self.state = ""
        self.set_state("idle")

    def set_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        if state == self.state:
            return
        self.state = state
        self.setText(f"● {self.LABELS[state]}")
        self.setAccessibleDescription(self.LABELS[state])
        self.setProperty("state", state.replace(" ", "-"))
        self.style().unpolish(self)  # re-apply the style sheet's [state="…"] rules
        self.style().polish(self)


class LevelMeter(QProgressBar):
    """Microphone level in dBFS, shown from METER_FLOOR_DB to 0."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("levelMeter")
        self.setAccessibleName("Microphone level")
        self.setRange(0, 100)
        self.setValue(0)
        self.setTextVisible(False)
        self.setFixedSize(QSize(110, 10))

    def set_db(self, db: float) -> None:
        fraction = (max(METER_FLOOR_DB, min(0.0, db)) - METER_FLOOR_DB) / -METER_FLOOR_DB
        self.setValue(round(fraction * 100))


class MessageBox(QPlainTextEdit):
    """The typed-message box: Enter sends, Shift+Enter starts a new line, pasted images are attached."""

    submitted = Signal(str)
    mediaPasted = Signal(QMimeData)  # files or an image, for the image input

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageBox")
        self.setAccessibleName("Message")
        self.setPlaceholderText("Type a message, or just talk. Enter sends, Shift+Enter adds a line.")
        self.setTabChangesFocus(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(64)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt's name
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            text = self.toPlainText().strip()
            if text:
                self.submitted.emit(text)
                self.clear()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:  # noqa: N802
        return source.hasImage() or source.hasUrls() or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:  # noqa: N802
        local_files = any(url.isLocalFile() for url in source.urls())
        if (source.hasImage() and not source.hasText()) or local_files:
            self.mediaPasted.emit(source)
            return
        super().insertFromMimeData(source)


class ImagePreview(QWidget):
    """Paints an image scaled to fit, or a hint when there is none. Cheap enough for 30 fps."""

    def __init__(self, hint: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("preview")
        self.setAccessibleName("Visual context preview")
        self.image = QImage()
        self.hint = hint
        self.setMinimumSize(200, 120)
        policy = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)
        self.setSizePolicy(policy)

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt's name
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802
        """The image's own shape (4:3 until there is one), so the preview has no bands above and below."""
        if self.image.isNull() or self.image.width() == 0:
            return width * 3 // 4
        return min(width * 3 // 2, width * self.image.height() // self.image.width())

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(320, self.heightForWidth(320))

    def set_image(self, image: QImage) -> None:
        reshaped = image.isNull() != self.image.isNull() or image.size() != self.image.size()
        self.image = image
        if reshaped:  # camera frames keep their size: no relayout for each of them
            self.updateGeometry()
        self.update()

    def set_hint(self, hint: str) -> None:
        self.hint = hint
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        if self.image.isNull():
            painter.setPen(self.palette().placeholderText().color())
            painter.drawText(self.rect().adjusted(12, 12, -12, -12),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.hint)
        else:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            size = self.image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, size.width(), size.height())
            target.moveCenter(self.rect().center())
            painter.drawImage(target, self.image)
        painter.setPen(QColor(128, 128, 128, 90))
        painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
