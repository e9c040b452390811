"""The engine's model manager (`python main.py models …`) run as a child process, reported as Qt signals.

A child process rather than new requests to the engine process, because:
- the catalogue and its GPU-fit check import torch, which the window must not;
- a download runs for minutes to hours: beside the engine it never queues behind a reply, and
  survives the engine restarting (and the other way round);
- cancelling is ending the process, which is immediate even in a stalled network read, and
  safe: bytes go to `<file>.part` and only a whole file is renamed into place, so the next
  run resumes from what reached the disk and a partial model is never listed as installed.
`models list --json` gives the catalogue; `models download NAME --json` prints one JSON line per
progress step and a last `installed` line; `models remove NAME` deletes a model or an unfinished
download; a failure is its `error: …` line on stderr.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, Signal

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ModelRow:
    """One released model as the catalogue lists it."""

    name: str
    parameters: str
    download_gb: float
    nf4_gb: float
    fits_gpu: bool | None  # None: no CUDA GPU
    folder: str | None  # where it is installed; None when it is not
    partial_bytes: int  # what an unfinished download left on disk


def parse_listing(text: str) -> list[ModelRow]:
    """`models list --json` output → rows; ValueError naming what is wrong."""
    try:
        rows = json.loads(text)
        return [ModelRow(row["name"], row["parameters"], float(row["download_gb"]), float(row["nf4_gb"]),
                         row["fits_gpu"], row["folder"], int(row["partial_bytes"])) for row in rows]
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"unreadable model list ({type(err).__name__}: {err})") from None


def failure_line(stderr: str, code: int) -> str:
    """The one line a failed command ends with, without its `error: ` prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return f"the model manager exited with status {code}"
    return lines[-1].removeprefix("error: ")


class Command(QObject):
    """One `main.py models …` run: its stdout lines as they come, then how it ended."""

    line = Signal(str)
    ended = Signal(int, str)  # exit status (-1 when killed or failed to start), stderr's last line

    def __init__(self, python: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.process = QProcess(self)
        self.process.setProgram(python)
        self.process.setWorkingDirectory(str(PROJECT_ROOT))
        self.process.readyReadStandardOutput.connect(self.on_stdout)
        self.process.finished.connect(self.on_finished)
        self.process.errorOccurred.connect(self.on_error)
        self.pending = b""

    def running(self) -> bool:
        return self.process.state() != QProcess.ProcessState.NotRunning

    def start(self, arguments: list[str]) -> None:
        self.pending = b""
        # A frozen app (installers/launcher.py) is its own interpreter and takes main.py's arguments itself.
        script = [] if getattr(sys, "frozen", False) else [str(PROJECT_ROOT / "main.py")]
        self.process.setArguments([*script, "models", *arguments])
        self.process.start()

    def stop(self) -> None:
        if self.running():
            self.process.kill()
            self.process.waitForFinished(3000)

    def on_stdout(self) -> None:
        *lines, self.pending = (self.pending + self.process.readAllStandardOutput().data()).split(b"\n")
        for line in lines:
            if line.strip():
                self.line.emit(line.decode("utf-8", "replace"))

    def on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self.on_stdout()
        stderr = self.process.readAllStandardError().data().decode("utf-8", "replace")
        crashed = status == QProcess.ExitStatus.CrashExit
        self.ended.emit(-1 if crashed else code, failure_line(stderr, code))

    def on_error(self, failure: QProcess.ProcessError) -> None:
        if failure == QProcess.ProcessError.FailedToStart:
            self.ended.emit(-1, f"the model manager could not start ({self.process.errorString()})")


class ModelManager(QObject):
    """Lists the catalogue, runs one download and one removal at a time; tests point it at a stand-in hub."""

    listed = Signal(list)  # [ModelRow]
    progress = Signal(str, object, object)  # name, bytes done, bytes known in all (ints past 2 GB: object)
    installed = Signal(str, str)  # name, folder
    stopped = Signal(str, str)  # name, why ("" when the user cancelled)
    removed = Signal(str, str)  # name, why it could not be ("" when it was)
    failed = Signal(str)  # the catalogue could not be listed: one line

    def __init__(self, data_dir: Path, endpoint: str | None = None, vocoder_source: Path | None = None,
                 python: str = sys.executable, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.options = ["--data-dir", str(data_dir)]
        if endpoint:
            self.options += ["--endpoint", endpoint]
        if vocoder_source:
            self.options += ["--vocoder-source", str(vocoder_source)]
        self.lister = Command(python, self)
        self.lister.line.connect(self.on_listing_line)
        self.lister.ended.connect(self.on_listed)
        self.loader = Command(python, self)
        self.loader.line.connect(self.on_download_line)
        self.loader.ended.connect(self.on_downloaded)
        self.remover = Command(python, self)
        self.remover.ended.connect(self.on_removed)
        self.removing: str | None = None
        self.listing = ""
        self.downloading: str | None = None
        self.folder: str | None = None  # the download's `installed` line
        self.cancelling = False

    def refresh(self) -> None:
        if not self.lister.running():
            self.listing = ""
            self.lister.start([*self.options, "list", "--json"])

    def download(self, name: str) -> bool:
        """Start (or resume) a download; False while another runs."""
        if self.downloading is not None:
            return False
        self.downloading, self.folder, self.cancelling = name, None, False
        self.loader.start([*self.options, "download", name, "--json"])
        return True

    def remove(self, name: str) -> bool:
        """Delete an installed model or an unfinished download; False while it downloads or a removal runs."""
        if self.removing is not None or self.downloading == name:
            return False
        self.removing = name
        self.remover.start([*self.options, "remove", name])
        return True

    def cancel(self) -> None:
        if self.downloading is not None:
            self.cancelling = True
            self.loader.stop()

    def shutdown(self) -> None:
        self.cancel()
        self.lister.stop()
        self.remover.process.waitForFinished(10_000)  # a removal is not cut off half way: let it end

    def on_listing_line(self, line: str) -> None:
        self.listing += line

    def on_listed(self, code: int, error: str) -> None:
        if code != 0:
            self.failed.emit(f"The model list is unavailable: {error}")
            return
        try:
            self.listed.emit(parse_listing(self.listing))
        except ValueError as err:
            self.failed.emit(f"The model list is unavailable: {err}")

    def on_download_line(self, line: str) -> None:
        try:
            event = json.loads(line)
            if event["event"] == "progress":
                self.progress.emit(self.downloading, int(event["done"]), int(event["total"]))
            elif event["event"] == "installed":
                self.folder = str(event["folder"])
        except (ValueError, KeyError, TypeError):
            return  # a stray line is no reason to give up on a download: how the process ends decides

    def on_downloaded(self, code: int, error: str) -> None:
        name, self.downloading = self.downloading, None
        if name is None:
            return
        if code == 0 and self.folder is not None:
            self.installed.emit(name, self.folder)
        else:
            self.stopped.emit(name, "" if self.cancelling else error)
        self.refresh()  # installed, or how much a resume would start from

    def on_removed(self, code: int, error: str) -> None:
        name, self.removing = self.removing, None
        if name is not None:
            self.removed.emit(name, "" if code == 0 else error)
            self.refresh()
