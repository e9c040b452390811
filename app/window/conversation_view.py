"""The conversation: one bubble per turn, the reply's text growing as it streams.

A thin view over `TurnView` records from the chat controller: `add_turn` and `update_turn`
render them; nothing here decides anything. Thumbnails of reopened turns are read on a worker
(their PNGs can be 2880 px wide), and the view keeps to the bottom while the user has not
scrolled up.
"""

from __future__ import annotations

from pathlib import Path

import shiboken6
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QImage, QImageReader, QPixmap, QResizeEvent
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from app.chat import TurnView
from app.workers import run_in_background

THUMBNAIL = QSize(240, 150)
STICK_PX = 48  # within this of the bottom, new text keeps the view scrolled down
BUBBLE_SHARE = 0.78  # of the view's width: the widest a bubble gets before its text wraps


def read_thumbnail(path: Path) -> QImage:
    reader = QImageReader(str(path))
    size = reader.size()
    if size.isValid():
        reader.setScaledSize(size.scaled(THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio))
    return reader.read()


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{int(value // 60)}:{value % 60:04.1f}"


class TurnWidget(QFrame):
    def __init__(self, view: TurnView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        user = view.role == "user"
        self.setObjectName("userTurn" if user else "assistantTurn")
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Preferred)
        self.available = 480
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(4)
        self.header = QLabel(self, objectName="turnHeader")
        self.thumbnail = QLabel(self, objectName="thumbnail")
        self.thumbnail.hide()
        self.body = QLabel(self, objectName="turnText")
        self.body.setWordWrap(True)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.setTextFormat(Qt.TextFormat.PlainText)
        self.transcript = QLabel(self, objectName="transcript")
        self.transcript.setWordWrap(True)
        self.transcript.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.footer = QLabel(self, objectName="turnFooter")
        for label in (self.header, self.thumbnail, self.body, self.transcript, self.footer):
            layout.addWidget(label)
        if view.image_path is not None:
            run_in_background(lambda: read_thumbnail(view.image_path), self.set_thumbnail)
        self.refresh(view)

    def refresh(self, view: TurnView) -> None:
        user = view.role == "user"
        if view.image is not None and self.thumbnail.isHidden():  # a picture decoded after the turn was shown
            self.set_thumbnail(view.image)
        parts = ["You" if user else "Omnivox"]
        if view.audio_seconds is not None and user:
            parts.append(f"voice {seconds(view.audio_seconds)}")
        if view.image_label:
            parts.append(f"sees {view.image_label}")
        self.header.setText(" · ".join(parts))
        streaming = not user and not view.done
        self.body.setText(view.text + (" ▍" if streaming else ""))  # a cursor while the reply is still coming
        self.body.setVisible(bool(view.text) or not user)
        self.transcript.setText(f"“{view.transcript}”" if view.transcript else "")
        self.transcript.setVisible(bool(view.transcript))
        self.footer.setText(self.footer_text(view))
        self.footer.setVisible(bool(self.footer.text()))
        self.setAccessibleName(f"{parts[0]}: {view.text or view.transcript or 'spoken message'}")
        self.fit()

    def fit(self, available: int | None = None) -> None:
        """As wide as the longest line needs, up to `available`; a wrapping QLabel cannot work this out itself."""
        self.available = available or self.available
        margins = self.layout().contentsMargins()
        natural = max([label.fontMetrics().horizontalAdvance(line) for label in (self.header, self.body,
                                                                               self.transcript, self.footer)
                       if label.isVisibleTo(self) for line in label.text().splitlines() or [""]] +
                      [self.thumbnail.pixmap().width() if self.thumbnail.isVisibleTo(self) else 0])
        self.setFixedWidth(min(self.available, natural + margins.left() + margins.right() + 4))

    @staticmethod
    def footer_text(view: TurnView) -> str:
        if view.role == "user":
            return ""
        if view.interrupted:
            return "interrupted"
        if not view.done:
            return ""
        parts = []
        timings = view.timings or {}
        first = timings.get("first_audio") or timings.get("first_text")
        if first is not None:
            parts.append(f"first words {first:.0f} ms")
        if view.audio_seconds:
            parts.append(f"spoke {seconds(view.audio_seconds)}")
        return " · ".join(parts)

    def set_thumbnail(self, image: QImage) -> None:
        if not shiboken6.isValid(self) or image.isNull():  # the conversation may have been closed meanwhile
            return
        pixmap = QPixmap.fromImage(image.scaled(THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio,
                                                Qt.TransformationMode.SmoothTransformation))
        self.thumbnail.setPixmap(pixmap)
        self.thumbnail.setAccessibleName("Attached image")
        self.thumbnail.show()
        self.fit()


class ConversationView(QScrollArea):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("conversation")
        self.setAccessibleName("Conversation")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget(self, objectName="conversationContent")
        self.column = QVBoxLayout(content)
        self.column.setContentsMargins(16, 16, 16, 16)
        self.column.setSpacing(10)
        self.empty = QLabel("Say something, or type below.\nDrop an image here, or pick the camera or the screen "
                            "on the right, to talk about what you see.", content, objectName="emptyHint")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)  # the view is narrower than the hint's longer line at the default size
        self.empty.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)  # the middle of the view
        self.column.addWidget(self.empty, 1)  # while shown, it takes the free space (so sits in the middle) ...
        self.column.addStretch(0)  # ... else this does, keeping the turns at the top
        self.setWidget(content)
        self.widgets: dict[int, TurnWidget] = {}
        self.stick = True
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(lambda value: setattr(self, "stick", value >= bar.maximum() - STICK_PX))
        bar.rangeChanged.connect(lambda _, maximum: bar.setValue(maximum) if self.stick else None)

    def show_conversation(self, views: list[TurnView]) -> None:
        for widget in self.widgets.values():
            widget.parentWidget().deleteLater()  # the row holding it
        self.widgets = {}
        self.stick = True
        for view in views:
            self.add_turn(view)
        self.empty.setVisible(not views)

    def add_turn(self, view: TurnView) -> None:
        self.empty.hide()
        row = QWidget(self.widget())
        line = QHBoxLayout(row)
        line.setContentsMargins(0, 0, 0, 0)
        bubble = TurnWidget(view, row)
        bubble.fit(self.bubble_width())
        if view.role == "user":
            line.addStretch(1)
        line.addWidget(bubble)
        if view.role != "user":
            line.addStretch(1)
        self.column.insertWidget(self.column.count() - 1, row)  # above the stretch
        self.widgets[view.key] = bubble

    def bubble_width(self) -> int:
        return int(self.viewport().width() * BUBBLE_SHARE)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        for widget in self.widgets.values():
            widget.fit(self.bubble_width())

    def update_turn(self, view: TurnView) -> None:
        widget = self.widgets.get(view.key)
        if widget is not None:
            widget.refresh(view)
