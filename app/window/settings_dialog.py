"""Settings: devices, listening, the model and the look. Returns `Preferences`; the window saves and applies them."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QWidget,
)

from app.devices import DeviceProviders
from app.settings import DEVICES, EXTRACTION_STRENGTHS, OUTPUTS, PRECISIONS, THEMES, VAD_SENSITIVITIES, Preferences

SYSTEM_DEFAULT = "System default"


def choice(parent: QWidget, name: str, items: list[tuple[str, str]], current: str) -> QComboBox:
    """A combo box of (label, value) pairs; an unknown current value is kept as its own entry."""
    box = QComboBox(parent)
    box.setAccessibleName(name)
    for label, value in items:
        box.addItem(label, value)
    if box.findData(current) < 0:
        box.addItem(current, current)
    box.setCurrentIndex(box.findData(current))
    return box


class SettingsDialog(QDialog):
    def __init__(self, prefs: Preferences, providers: DeviceProviders, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Omnivox settings")
        self.setAccessibleName("Settings")
        self.prefs = prefs
        form = QFormLayout(self)

        def devices(names: list[str]) -> list[tuple[str, str]]:
            return [(SYSTEM_DEFAULT, "")] + [(name, name) for name in names]

        self.microphone = choice(self, "Microphone", devices(providers.microphones()), prefs.microphone)
        self.speaker = choice(self, "Speaker", devices(providers.speakers()), prefs.speaker)
        self.camera = choice(self, "Camera", [(f"Camera {index}", index) for index in providers.cameras()],
                             prefs.camera)
        self.camera.setEditable(True)  # a video file or stream URL works in place of a device
        self.camera.setToolTip("A device number, or a video file or stream URL")
        self.output = choice(self, "Listening through", [(value.capitalize(), value) for value in OUTPUTS],
                             prefs.output)
        self.output.setToolTip("With speakers the microphone hears the assistant too; Omnivox then needs the "
                               "user to speak louder than the reply to interrupt it")
        self.vad = choice(self, "Voice detection sensitivity",
                          [(value.capitalize(), value) for value in VAD_SENSITIVITIES], prefs.vad_sensitivity)
        self.barge_in = QCheckBox("Interrupt the reply when I start talking", self)
        self.barge_in.setAccessibleName("Barge-in")
        self.barge_in.setChecked(prefs.barge_in)

        self.model = QLineEdit(prefs.model, self)
        self.model.setAccessibleName("Model folder")
        self.model.setPlaceholderText("Folder of a Lyra model")
        browse = QPushButton("Browse…", self)
        browse.setAccessibleName("Choose the model folder")
        browse.clicked.connect(self.browse_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(browse)
        self.precision = choice(self, "Precision", [("Automatic (4-bit on a GPU)", "")] +
                                [(value, value) for value in PRECISIONS], prefs.precision)
        self.device = choice(self, "Run the model on", [("Automatic", "")] +
                             [(value.upper(), value) for value in DEVICES], prefs.device)
        self.extraction = choice(self, "Token extraction strength",
                                 [(name.capitalize(), name) for name in EXTRACTION_STRENGTHS], prefs.extraction)
        self.extraction.setToolTip("How many image and speech tokens the model drops while reading: stronger is "
                                   "faster and uses less memory, and may miss detail")
        self.theme = choice(self, "Theme", [(value.capitalize(), value) for value in THEMES], prefs.theme)

        form.addRow("Microphone", self.microphone)
        form.addRow("Speaker", self.speaker)
        form.addRow("Listening through", self.output)
        form.addRow("Camera", self.camera)
        form.addRow("Voice detection", self.vad)
        form.addRow("", self.barge_in)
        form.addRow("Model", model_row)
        form.addRow("Precision", self.precision)
        form.addRow("Device", self.device)
        form.addRow("Token extraction", self.extraction)
        form.addRow("Theme", self.theme)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        for button in buttons.buttons():
            button.setAccessibleName(button.text().replace("&", ""))
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a Lyra model folder", self.model.text())
        if folder:
            self.model.setText(folder)

    def chosen(self) -> Preferences:
        camera = self.camera.currentData() if self.camera.currentText() == self.camera.itemText(
            self.camera.currentIndex()) else self.camera.currentText()
        return replace(
            self.prefs,
            microphone=self.microphone.currentData(),
            speaker=self.speaker.currentData(),
            camera=str(camera).strip() or "0",
            output=self.output.currentData(),
            vad_sensitivity=self.vad.currentData(),
            barge_in=self.barge_in.isChecked(),
            model=self.model.text().strip(),
            precision=self.precision.currentData(),
            device=self.device.currentData(),
            extraction=self.extraction.currentData(),
            theme=self.theme.currentData(),
        )
