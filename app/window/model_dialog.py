"""The model manager dialog: the released models, their size and GPU fit; download, cancel, resume, use, remove.

A thin view over `ModelManager` (app/model_manager.py), which does the work in a child process.
Closing the dialog leaves a download running; reopening it shows where it is.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.model_manager import ModelManager, ModelRow

COLUMNS = ("Model", "Parameters", "Download", "Memory (NF4)", "This GPU", "State")
FIT = {True: "fits", False: "too big", None: "no CUDA GPU: runs on the CPU, slowly"}
LISTING = "Reading the model list…"


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.0f} MB" if count < 1e9 else f"{count / 1e9:.2f} GB"


def state_of(row: ModelRow, downloading: str | None, removing: str | None) -> str:
    if row.name == downloading:
        return "downloading"
    if row.name == removing:
        return "removing"
    if row.folder is not None:
        return "installed"
    if row.partial_bytes:
        return f"paused at {megabytes(row.partial_bytes)}"
    return "not downloaded"


class ModelDialog(QDialog):
    modelChosen = Signal(str)  # the folder of an installed model to load

    def __init__(self, manager: ModelManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Omnivox models")
        self.setAccessibleName("Model manager")
        self.manager = manager
        self.rows: list[ModelRow] = []
        self.in_use: str | None = None  # the folder of the model the engine runs: not removed from under it

        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setAccessibleName("Released models")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.progress = QProgressBar(self)
        self.progress.setAccessibleName("Download progress")
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.status = QLabel(LISTING, self, objectName="modelStatus")
        self.status.setAccessibleName("Model manager status")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.download_button = QPushButton("Download", self)
        self.cancel_button = QPushButton("Cancel download", self)
        self.use_button = QPushButton("Use this model", self)
        self.remove_button = QPushButton("Remove", self)
        close = QPushButton("Close", self)
        for button, name in ((self.download_button, "Download the model"), (self.cancel_button, "Cancel the download"),
                             (self.use_button, "Use the model"), (self.remove_button, "Remove the model"),
                             (close, "Close")):
            button.setAccessibleName(name)

        buttons = QHBoxLayout()
        for button in (self.download_button, self.cancel_button, self.use_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(760, 300)

        self.table.itemSelectionChanged.connect(self.update_buttons)
        self.download_button.clicked.connect(self.download)
        self.cancel_button.clicked.connect(manager.cancel)
        self.use_button.clicked.connect(self.use)
        self.remove_button.clicked.connect(self.remove)
        close.clicked.connect(self.close)
        manager.listed.connect(self.show_rows)
        manager.failed.connect(self.status.setText)
        manager.progress.connect(self.on_progress)
        manager.installed.connect(self.on_installed)
        manager.stopped.connect(self.on_stopped)
        manager.removed.connect(self.on_removed)
        self.update_buttons()

    def refresh(self) -> None:
        self.manager.refresh()

    def selected(self) -> ModelRow | None:
        picked = self.table.selectionModel().selectedRows()
        return self.rows[picked[0].row()] if picked else None

    def show_rows(self, rows: list[ModelRow]) -> None:
        chosen = self.selected()
        self.rows = rows
        self.table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            cells = (row.name, row.parameters, f"{row.download_gb:.1f} GB", f"{row.nf4_gb:.1f} GB", FIT[row.fits_gpu],
                     "")
            for column, text in enumerate(cells):
                self.table.setItem(index, column, QTableWidgetItem(text))
        names = [row.name for row in rows]
        keep = chosen.name if chosen is not None and chosen.name in names else self.manager.downloading
        self.table.selectRow(names.index(keep) if keep in names else 0)
        if self.status.text() == LISTING:
            self.status.setText("Pick a model: Lyra-Mini-3B fits most GPUs." if rows else "No models are released.")
        self.update_buttons()

    def update_buttons(self) -> None:
        """The buttons and the state column, after anything changed."""
        for index, listed in enumerate(self.rows):
            self.table.item(index, len(COLUMNS) - 1).setText(
                state_of(listed, self.manager.downloading, self.manager.removing))
        row, busy = self.selected(), self.manager.downloading
        self.download_button.setText("Resume download" if row is not None and row.partial_bytes else "Download")
        self.download_button.setEnabled(row is not None and row.folder is None and busy is None)
        self.cancel_button.setEnabled(busy is not None)
        self.use_button.setEnabled(row is not None and row.folder is not None)
        self.remove_button.setText("Discard download" if row is not None and row.folder is None else "Remove")
        self.remove_button.setEnabled(row is not None and (row.folder is not None or row.partial_bytes > 0)
                                      and row.name != busy and self.manager.removing is None)

    def download(self) -> None:
        row = self.selected()
        if row is not None and self.manager.download(row.name):
            self.status.setText(f"Downloading {row.name}…")
            self.progress.setValue(0)
            self.progress.show()
            self.update_buttons()

    def on_progress(self, name: str, done: int, total: int) -> None:
        self.progress.show()  # also when the dialog was reopened mid-download
        self.progress.setValue(round(1000 * done / total) if total else 0)
        self.progress.setFormat(f"{name}: {megabytes(done)} of {megabytes(total)} (%p%)")

    def on_installed(self, name: str, folder: str) -> None:
        self.progress.hide()
        self.status.setText(f"{name} is ready in {folder}.")
        self.update_buttons()

    def on_stopped(self, name: str, why: str) -> None:
        self.progress.hide()
        self.status.setText(f"{name}: {why}" if why else f"The download of {name} was cancelled; resume it any time.")
        self.update_buttons()

    def use(self) -> None:
        row = self.selected()
        if row is not None and row.folder is not None:
            self.modelChosen.emit(row.folder)
            self.accept()

    def remove(self) -> None:
        row = self.selected()
        if row is None:
            return
        if row.folder is not None and row.folder == self.in_use:
            self.status.setText(f"{row.name} is the model in use: use another one before removing it.")
            return
        what = (f"Remove {row.name} ({row.download_gb:.1f} GB)? Using it again means downloading it again."
                if row.folder is not None else f"Discard the unfinished download of {row.name} "
                f"({megabytes(row.partial_bytes)})?")
        if self.confirm(what) and self.manager.remove(row.name):
            self.status.setText(f"Removing {row.name}…")
            self.update_buttons()

    def confirm(self, question: str) -> bool:
        answer = QMessageBox.question(self, "Remove", question)
        return answer == QMessageBox.StandardButton.Yes

    def on_removed(self, name: str, why: str) -> None:
        self.status.setText(f"Could not remove {name}: {why}" if why else f"{name} was removed.")
        self.update_buttons()
