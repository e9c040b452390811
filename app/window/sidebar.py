"""History sidebar: the stored conversations, newest first, with reopen, rename, delete and export."""

from __future__ import annotations

from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QListWidget, QListWidgetItem, QMenu, QPushButton, QVBoxLayout, QWidget

from app.history import Conversation


class HistorySidebar(QWidget):
    openRequested = Signal(int)
    renameRequested = Signal(int)
    deleteRequested = Signal(int)
    exportRequested = Signal(int)
    newRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sidebar")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        self.new_button = QPushButton("New conversation", self, objectName="newConversation")
        self.new_button.setAccessibleName("New conversation")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.newRequested)
        layout.addWidget(self.new_button)
        self.list = QListWidget(self, objectName="conversationList")
        self.list.setAccessibleName("Conversations")
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self.show_menu)
        self.list.itemActivated.connect(lambda item: self.openRequested.emit(item.data(Qt.ItemDataRole.UserRole)))
        self.list.itemClicked.connect(lambda item: self.openRequested.emit(item.data(Qt.ItemDataRole.UserRole)))
        self.list.currentItemChanged.connect(lambda *_: self.update_buttons())
        layout.addWidget(self.list, 1)
        row = QHBoxLayout()
        self.actions = {}
        for name, signal in (("Rename", self.renameRequested), ("Delete", self.deleteRequested),
                             ("Export", self.exportRequested)):
            button = QPushButton(name, self)
            button.setAccessibleName(f"{name} conversation")
            button.setToolTip(f"{name} the selected conversation")
            button.clicked.connect(lambda _=False, s=signal: self.emit_selected(s))
            row.addWidget(button)
            self.actions[name] = (button, signal)
        layout.addLayout(row)
        self.update_buttons()

    def set_conversations(self, conversations: list[Conversation], current: int | None) -> None:
        self.list.blockSignals(True)  # rebuilding is not the user choosing
        self.list.clear()
        for conversation in conversations:
            item = QListWidgetItem(conversation.display_title)
            item.setData(Qt.ItemDataRole.UserRole, conversation.id)
            item.setToolTip(f"{conversation.display_title}\n{conversation.created}")
            self.list.addItem(item)
            if conversation.id == current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self.update_buttons()

    def selected(self) -> int | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def emit_selected(self, signal: Signal) -> None:
        conversation = self.selected()
        if conversation is not None:
            signal.emit(conversation)

    def update_buttons(self) -> None:
        for button, _ in self.actions.values():
            button.setEnabled(self.list.currentItem() is not None)

    def show_menu(self, position: QPoint) -> None:
        item = self.list.itemAt(position)
        if item is None:
            return
        self.list.setCurrentItem(item)
        menu = QMenu(self)
        menu.addAction("Open", lambda: self.openRequested.emit(item.data(Qt.ItemDataRole.UserRole)))
        for name, (_, signal) in self.actions.items():
            menu.addAction(f"{name}…" if name != "Delete" else name, lambda s=signal: self.emit_selected(s))
        menu.exec(self.list.viewport().mapToGlobal(position))
