"""The app's side of the engine: starts the engine process, speaks its protocol, survives its crashes.

`EngineClient` is a QObject living on the GUI thread. QProcess and QTcpSocket are event-driven,
so nothing here blocks the window (except `shutdown`, briefly, at exit). Engine events arrive
as Qt signals. The engine keeps no state the app cannot rebuild: when its process dies, the
client reports why within a second, starts a new one and loads the last model again; the
conversation shown to the user lives in the app and is untouched.

Only this app talks to its engine: each start hands the child a fresh random token in its
environment (never its command line, which other users can read); the first frame on the
connection carries it, and requests go out only after a `ready` from the child's own pid.

This module must never import torch (the window opens before the engine has loaded anything).
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import uuid
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal
from PySide6.QtNetwork import QAbstractSocket, QHostAddress, QTcpSocket

from engine.protocol import (
    EVENTS,
    PORT_ANNOUNCEMENT,
    TOKEN_ENV,
    AudioChunkEvent,
    CancelRequest,
    ErrorEvent,
    FrameDecoder,
    LoadModelRequest,
    ModelLoadedEvent,
    PingRequest,
    PongEvent,
    PrefetchedEvent,
    PrefetchRequest,
    ProgressEvent,
    ProtocolError,
    ResetRequest,
    RespondRequest,
    ShutdownRequest,
    TextDeltaEvent,
    TranscribeRequest,
    TranscriptEvent,
    TurnDoneEvent,
    decode_message,
    hello_frame,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where `python -m engine.server` finds the engine package
MAX_RESTARTS = 3  # crashes in a row with no model loaded or turn finished in between: stop retrying
SHUTDOWN_GRACE_MS = 3000
TOKEN_BYTES = 32  # 256 random bits per engine start

log = logging.getLogger("omnivox.engine")


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def exit_reason(code: int, status: QProcess.ExitStatus, last_error: str) -> str:
    """One line saying why the engine process ended."""
    if status == QProcess.ExitStatus.CrashExit:  # on Unix Qt reports the signal number as the code
        name = signal_name(code)
        return f"the engine process was killed ({name}{', possibly out of memory' if name == 'SIGKILL' else ''})"
    # A Python failure ends its traceback on stderr with the one line that says what went wrong.
    return f"the engine process exited with status {code}" + (f": {last_error}" if last_error else "")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class EngineClient(QObject):
    ready = Signal()  # the engine process is up and connected (no model needed)
    progress = Signal(str, float)  # stage, fraction done
    prefetched = Signal(str)  # prefetch id: the engine has encoded the picture and prefilled up to it
    modelLoaded = Signal(dict)  # model, precision, device, load_ms
    textDelta = Signal(str, str)  # turn id, text
    audioChunk = Signal(str, bytes, int)  # turn id, float32 little-endian PCM, sample rate
    turnDone = Signal(str, dict)  # turn id, {text, audio_seconds, timings_ms, tokens, adapter, cancelled}
    transcribed = Signal(str, dict)  # request id, {text, cancelled}, or {error} when the engine refused it
    error = Signal(str, str)  # id of the request it concerns ("" when none), one-line message
    engineDied = Signal(str)  # why; a turn that was running is over without its turnDone
    pong = Signal(str)  # ping id

    def __init__(self, python: str = sys.executable, data_dir: Path | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        # One process object and one socket for the client's whole life, restarted and reconnected
        # in place: deleting and replacing Qt children from their own signals is where crashes hide.
        self.process = QProcess(self)
        self.process.setProgram(python)
        # with the data folder, the engine keeps a model's quantized weights there: a second start skips quantizing
        self.process.setArguments(["-m", "engine.server", "--listen", "127.0.0.1:0",
                                   *(["--data-dir", str(data_dir)] if data_dir is not None else [])])
        self.process.setWorkingDirectory(str(PROJECT_ROOT))
        self.process.readyReadStandardOutput.connect(self.on_stdout)
        self.process.readyReadStandardError.connect(self.on_stderr)
        self.process.finished.connect(self.on_finished)
        self.process.errorOccurred.connect(self.on_process_error)
        self.socket = QTcpSocket(self)
        self.socket.connected.connect(self.on_connected)
        self.socket.readyRead.connect(self.on_ready_read)
        self.socket.errorOccurred.connect(self.on_socket_error)
        self.decoder = FrameDecoder(sender="engine")
        self.stdout: bytes | None = None  # what the engine printed so far, until its port line
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.outbox: list[bytes] = []  # requests made before the engine said ready
        self.model_frame: bytes | None = None  # the last load_model, sent again to a restarted engine
        self.transcriptions: set[str] = set()  # asked and not answered: their errors go to `transcribed`
        self.token = ""  # this start's secret, shared only with the child
        self.verified = False  # the connection reached our own child, which said ready
        self.abandoned = ""  # why the app gave up on the running engine, reported when it ends
        self.crashes = 0
        self.stopping = False

    @property
    def pid(self) -> int | None:
        """The engine process id while it runs."""
        if self.process.state() == QProcess.ProcessState.NotRunning:
            return None
        return self.process.processId()

    # ---- requests ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine process (no-op while one runs); `ready` follows once it is connected."""
        if self.pid is not None:
            return
        self.stopping = False
        self.decoder = FrameDecoder(sender="engine")
        self.stdout = b""
        self.stderr_tail.clear()
        self.verified, self.abandoned = False, ""
        self.token = secrets.token_hex(TOKEN_BYTES)
        environment = QProcessEnvironment.systemEnvironment()
        environment.insert(TOKEN_ENV, self.token)
        self.process.setProcessEnvironment(environment)
        self.process.start()

    def load_model(self, path: str | Path, precision: str | None = None, device: str | None = None) -> str:
        """Load a model folder (None: the engine's defaults, nf4 on CUDA); progress, then modelLoaded."""
        request_id = new_id()
        self.model_frame = LoadModelRequest(request_id, str(path), precision, device).encode()
        if self.verified:
            self.write(self.model_frame)
        return request_id  # not ready yet: the model goes first once the engine is

    def respond(self, pcm: bytes | None, rate: int, image: bytes | None, text: str | None,
                max_new_tokens: int, speak: bool = True) -> str:
        """Ask for a reply to float32 PCM speech, an encoded image and/or typed text; returns the turn id."""
        turn_id = new_id()
        self.send(RespondRequest(turn_id, pcm, rate, image, text, max_new_tokens, speak).encode())
        return turn_id

    def transcribe(self, pcm: bytes, rate: int, max_new_tokens: int) -> str:
        """Ask what was said in float32 PCM speech, outside the conversation; `transcribed` answers."""
        request_id = new_id()
        self.transcriptions.add(request_id)
        self.send(TranscribeRequest(request_id, pcm, rate, max_new_tokens).encode())
        return request_id

    def prefetch(self, image: bytes) -> str:
        """Let the engine encode the image the next turn is likely to carry, while the user speaks."""
        request_id = new_id()
        self.send(PrefetchRequest(request_id, image).encode())
        return request_id

    def cancel(self, turn_id: str) -> None:
        self.send(CancelRequest(turn_id).encode())

    def reset(self) -> None:
        """Make the engine forget the conversation (the app's history is unaffected)."""
        self.send(ResetRequest(new_id()).encode())

    def ping(self) -> str:
        request_id = new_id()
        self.send(PingRequest(request_id).encode())
        return request_id

    def shutdown(self) -> None:
        """Stop the engine for good; blocks up to a few seconds, then kills it."""
        self.stopping = True
        if self.verified:
            self.write(ShutdownRequest(new_id()).encode())
            self.socket.flush()
        else:  # not serving this app yet: it holds nothing worth a graceful end
            self.process.kill()
        if self.pid is not None and not self.process.waitForFinished(SHUTDOWN_GRACE_MS):
            self.process.kill()
            self.process.waitForFinished(SHUTDOWN_GRACE_MS)
        self.socket.abort()

    # ---- plumbing ----------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self.verified:
            self.write(frame)
        else:
            self.outbox.append(frame)

    def write(self, frame: bytes) -> None:
        self.socket.write(frame)

    def on_stdout(self) -> None:
        data = self.process.readAllStandardOutput().data()
        if self.stdout is None:  # the port is known; nothing else on stdout matters
            return
        self.stdout += data
        line, newline, _ = self.stdout.partition(b"\n")
        if not newline:
            return
        self.stdout = None
        name, _, port = line.decode("utf-8", "replace").strip().partition(" ")
        if name != PORT_ANNOUNCEMENT or not port.isdigit():
            self.error.emit("", f"the engine did not announce its port (it printed {line[:80]!r})")
            return
        self.socket.abort()
        self.socket.connectToHost(QHostAddress(QHostAddress.SpecialAddress.LocalHost), int(port))

    def on_stderr(self) -> None:
        for line in self.process.readAllStandardError().data().decode("utf-8", "replace").splitlines():
            if line.strip():
                log.info("engine: %s", line)
                self.stderr_tail.append(line.strip())

    def on_connected(self) -> None:
        self.socket.setSocketOption(QAbstractSocket.SocketOption.LowDelayOption, 1)
        self.write(hello_frame(self.token))  # requests wait for the ready that answers it

    def greet(self, header: dict) -> None:
        """The engine's first frame: `ready` from our own child, or we are not talking to our engine."""
        kind, pid = header["type"], header.get("pid")
        if kind == "ready" and pid == self.process.processId():
            self.verified = True
            pending = ([self.model_frame] if self.model_frame is not None else []) + self.outbox
            self.outbox = []
            for frame in pending:
                self.write(frame)
            self.ready.emit()
        elif kind == "error":
            self.abandon(f"the engine refused this app: {header.get('message', 'no reason given')}")
        else:
            self.abandon(f"the process on the engine's port is not the engine this app started (its first "
                         f"message was {kind!r} from pid {pid!r}, the engine is pid {self.process.processId()})")

    def abandon(self, reason: str) -> None:
        """Stop talking to this engine process and end it; it is restarted as after a crash."""
        log.warning("%s", reason)
        self.abandoned = reason
        self.socket.abort()
        self.process.kill()

    def on_socket_error(self, failure: QAbstractSocket.SocketError) -> None:
        # The engine closing its end is reported by the process ending, with the reason.
        if failure != QAbstractSocket.SocketError.RemoteHostClosedError:
            self.error.emit("", f"lost the connection to the engine: {self.socket.errorString()}")

    def on_ready_read(self) -> None:
        decoder, data = self.decoder, self.socket.readAll().data()
        while not self.abandoned:  # drain: a bad frame raises after the good ones before it came out
            try:
                frames = decoder.feed(data)
            except ProtocolError as err:
                if err.fatal:
                    self.abandon(f"bad message from the engine: {err}")
                    return
                self.error.emit(err.frame_id, f"bad message from the engine: {err}")
            else:
                if not frames:
                    return
                for header, payload in frames:
                    if not self.abandoned:
                        self.dispatch(header, payload)
            data = b""

    def dispatch(self, header: dict, payload: bytes) -> None:
        if not self.verified:
            self.greet(header)
            return
        if header["type"] not in EVENTS:
            self.error.emit(header["id"], f"the engine sent a {header['type']!r} request; this app version cannot "
                                          "handle it")
            return
        try:
            event = decode_message(header, payload)
        except ProtocolError as err:
            self.error.emit(err.frame_id, f"bad message from the engine: {err}")
            return
        match event:
            case PongEvent():
                self.pong.emit(event.id)
            case ProgressEvent():
                self.progress.emit(event.stage, float(event.fraction))
            case PrefetchedEvent():
                self.prefetched.emit(event.id)
            case ModelLoadedEvent():
                self.crashes = 0
                self.modelLoaded.emit(event.body())
            case TextDeltaEvent():
                self.textDelta.emit(event.id, event.text)
            case AudioChunkEvent():
                self.audioChunk.emit(event.id, event.pcm, event.sample_rate)
            case TurnDoneEvent():
                self.crashes = 0
                self.turnDone.emit(event.id, event.body())
            case TranscriptEvent():
                self.transcriptions.discard(event.id)
                self.transcribed.emit(event.id, event.body())
            case ErrorEvent() if event.id in self.transcriptions:  # background work: not the user's business
                self.transcriptions.discard(event.id)
                self.transcribed.emit(event.id, {"error": event.message})
            case ErrorEvent():
                self.error.emit(event.id, event.message)

    def on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self.socket.abort()
        self.verified = False
        self.transcriptions.clear()  # engineDied tells their askers
        if self.stopping:
            return
        reason = self.abandoned or exit_reason(code, status, self.stderr_tail[-1] if self.stderr_tail else "")
        self.crashes += 1
        if self.crashes > MAX_RESTARTS:
            self.engineDied.emit(f"{reason}; it failed {MAX_RESTARTS} times in a row, so it was not restarted")
            return
        self.engineDied.emit(reason)
        QTimer.singleShot(0, self.restart)  # once QProcess has finished handling this exit

    def restart(self) -> None:
        if not self.stopping:  # a shutdown since the crash ends the client for good
            self.start()

    def on_process_error(self, failure: QProcess.ProcessError) -> None:
        if failure == QProcess.ProcessError.FailedToStart:
            self.engineDied.emit(f"the engine could not start ({self.process.program()}): "
                                 f"{self.process.errorString()}")
