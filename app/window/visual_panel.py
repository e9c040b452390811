"""The visual-context panel: none / camera / screen / image, a live preview, and each mode's source chooser."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QRect, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.visual import screen as screens
from app.visual.context import MODES, ScreenTarget, VisualContext
from app.window.controls import ImagePreview

HINTS = {
    "none": "The assistant sees nothing.\nPick the camera, the screen or an image.",
    "camera": "Starting the camera…",
    "screen": "Capturing the screen…",
    "image": "Drop an image on the window,\nor paste one with Ctrl+V.",
}


class VisualPanel(QWidget):
    openImageRequested = Signal()
    regionRequested = Signal(int)  # screen index

    def __init__(self, context: VisualContext, cameras: Callable[[], list[str]],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("visualPanel")
        self.context = context
        self.cameras = cameras
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        title = QLabel("What the assistant sees", self, objectName="panelTitle")
        layout.addWidget(title)

        switch = QHBoxLayout()
        switch.setSpacing(0)
        self.modes = QButtonGroup(self)
        self.mode_buttons: dict[str, QPushButton] = {}
        for mode in MODES:
            button = QPushButton(mode.capitalize(), self, objectName="segment")
            button.setCheckable(True)
            button.setAccessibleName(f"Visual context: {mode}")
            button.setToolTip({"none": "Send no picture", "camera": "Show the assistant your camera",
                               "screen": "Show the assistant your screen",
                               "image": "Show the assistant an image you drop or paste"}[mode])
            self.modes.addButton(button)
            self.mode_buttons[mode] = button
            switch.addWidget(button)
            button.clicked.connect(lambda _=False, m=mode: context.set_mode(m))
        self.mode_buttons["none"].setChecked(True)
        layout.addLayout(switch)

        self.preview = ImagePreview(HINTS["none"], self)
        layout.addWidget(self.preview)
        self.options = QStackedWidget(self)
        self.options.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.pages = {"none": QWidget(self), "camera": self.camera_page(), "screen": self.screen_page(),
                      "image": self.image_page()}
        for page in self.pages.values():
            self.options.addWidget(page)
        layout.addWidget(self.options)
        layout.addStretch(1)

        context.modeChanged.connect(self.on_mode)
        context.previewChanged.connect(self.preview.set_image)

    def camera_page(self) -> QWidget:
        page = QWidget(self)
        row = QHBoxLayout(page)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Camera", page))
        self.camera_choice = QComboBox(page, objectName="cameraChoice")
        self.camera_choice.setEditable(True)
        self.camera_choice.setAccessibleName("Camera device")
        self.camera_choice.setToolTip("A device number, or a video file or stream URL")
        self.camera_choice.activated.connect(lambda _: self.context.set_camera_source(self.camera_choice.currentText()))
        self.camera_choice.lineEdit().editingFinished.connect(
            lambda: self.context.set_camera_source(self.camera_choice.currentText()))
        row.addWidget(self.camera_choice, 1)
        return page

    def screen_page(self) -> QWidget:
        page = QWidget(self)
        row = QHBoxLayout(page)
        row.setContentsMargins(0, 0, 0, 0)
        self.screen_choice = QComboBox(page, objectName="screenChoice")
        self.screen_choice.setAccessibleName("Screen or window to capture")
        self.screen_choice.activated.connect(self.on_screen_choice)
        row.addWidget(self.screen_choice, 1)
        region = QPushButton("Region…", page)
        region.setAccessibleName("Capture a region")
        region.setToolTip("Drag out the part of the screen to show")
        region.clicked.connect(lambda: self.regionRequested.emit(self.context.screen_target.screen))
        row.addWidget(region)
        return page

    def image_page(self) -> QWidget:
        page = QWidget(self)
        row = QHBoxLayout(page)
        row.setContentsMargins(0, 0, 0, 0)
        self.image_name = QLabel("No image", page, objectName="imageName")
        row.addWidget(self.image_name, 1)
        open_button = QPushButton("Open…", page)
        open_button.setAccessibleName("Open an image file")
        open_button.clicked.connect(self.openImageRequested)
        row.addWidget(open_button)
        clear = QPushButton("Clear", page)
        clear.setAccessibleName("Clear the attached image")
        clear.setToolTip("Stop sending this image with each turn")
        clear.clicked.connect(self.context.clear_image)
        row.addWidget(clear)
        return page

    def on_mode(self, mode: str) -> None:
        self.mode_buttons[mode].setChecked(True)
        self.options.setCurrentWidget(self.pages[mode])
        self.preview.set_hint(HINTS[mode])
        if mode == "camera":
            self.fill_cameras()
        elif mode == "screen":
            self.fill_screens()
        elif mode == "image":
            self.show_attached()

    def show_attached(self) -> None:
        attached = self.context.attached
        self.image_name.setText(attached.name if attached else "No image")

    def fill_cameras(self) -> None:
        current = self.context.camera_source
        self.camera_choice.clear()
        self.camera_choice.addItems(sorted({*self.cameras(), current}))
        self.camera_choice.setCurrentText(current)

    def fill_screens(self) -> None:
        self.screen_choice.clear()
        for index, screen in enumerate(screens.screens()):
            self.screen_choice.addItem(screens.screen_label(screen), ScreenTarget(screen=index,
                                                                                  label=screen.name() or "screen"))
        for window in screens.list_windows():
            self.screen_choice.addItem(f"Window: {window.title}", ScreenTarget(window=window.id, label=window.title))
        target = self.context.screen_target
        if target.region is not None:
            self.add_region_item(target)
        self.screen_choice.setCurrentIndex(max(0, self.find_target(target)))

    def add_region_item(self, target: ScreenTarget) -> None:
        region = target.region
        self.screen_choice.addItem(f"Region {region.width()}×{region.height()}", target)

    def find_target(self, target: ScreenTarget) -> int:
        for index in range(self.screen_choice.count()):
            if self.screen_choice.itemData(index) == target:
                return index
        return -1

    def on_screen_choice(self, index: int) -> None:
        target = self.screen_choice.itemData(index)
        if target is not None:
            self.context.set_screen_target(target)

    def set_region(self, screen: int, region: QRect) -> None:
        target = ScreenTarget(screen=screen, region=region, label="screen region")
        self.context.set_screen_target(target)
        if self.context.mode != "screen":
            self.context.set_mode("screen")
        self.fill_screens()
