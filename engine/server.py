"""The engine process: one app, one loopback TCP connection, the frame protocol of engine.protocol.

`python -m engine.server --listen 127.0.0.1:0` prints `OMNIVOX_ENGINE_PORT <port>` as its first
stdout line and serves the app that started it: the first connection whose first frame is a
hello carrying the start token the app put in OMNIVOX_ENGINE_TOKEN. Any other connection gets
one error frame and is closed while the engine keeps waiting for its app. The engine exits when
the app leaves, asks it to shut down, or sends a frame that cannot be framed. A reader thread
answers pings and cancels at once, while the main thread runs model requests in arrival order.
torch loads with the first model, so the process answers within a fraction of a second of starting.

Transcriptions are background work: a turn (respond) or the sign of one coming (prefetch)
cancels every transcription queued or running, so a reply never waits for one longer than a
decode step (or the prefill it is in). The app asks again later.

Every failure of a request is an `error` event naming the request; the process keeps serving.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import os
import queue
import selectors
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from engine.errors import OmnivoxError
from engine.protocol import (
    MAX_HELLO,
    PORT_ANNOUNCEMENT,
    PREFIX,
    PROTOCOL_VERSION,
    REQUESTS,
    TOKEN_ENV,
    AudioChunkEvent,
    CancelRequest,
    ErrorEvent,
    HelloRequest,
    LoadModelRequest,
    Message,
    ModelLoadedEvent,
    PingRequest,
    PongEvent,
    PrefetchedEvent,
    PrefetchRequest,
    ProgressEvent,
    ProtocolError,
    ReadyEvent,
    ResetRequest,
    RespondRequest,
    ShutdownRequest,
    TextDeltaEvent,
    TranscribeRequest,
    TranscriptEvent,
    TurnDoneEvent,
    check_hello,
    decode_message,
    header_length,
    read_frame,
)

if TYPE_CHECKING:
    from PIL import Image

    from engine.events import Event
    from engine.media import Speech
    from engine.session import Session, TurnRequest

NO_MODEL = "no model loaded; load one first"
MAX_ERROR_CHARS = 500
STOP_GRACE_S = 5.0  # after shutdown or the app leaving, how long a model load may hold the process
MIN_TOKEN_CHARS = 32  # the app's token is 64 hex digits; a short one could be guessed
HELLO_TIMEOUT_S = 10.0  # a connection that has not said hello by then is dropped (the app says it at once)
MAX_GREETINGS = 32  # connections waiting to say hello; beyond this the oldest is dropped

Job = tuple[str, Callable[[], None]]  # the request id to name in an error, the work


class Connection:
    """Sends frames to the app from any thread; after the app is gone, sends are dropped."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, event: Message) -> None:
        data = event.encode()
        # OSError: the app is gone; the reader sees that too and stops the engine.
        with self.lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def error(self, frame_id: str, message: str) -> None:
        self.send(ErrorEvent(frame_id, message[:MAX_ERROR_CHARS]))


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class LastImage:
    """The last image received, decoded: a turn about the prefetched picture does not decode it again."""

    def __init__(self) -> None:
        self.digest: bytes | None = None
        self.image: Image.Image | None = None

    def decode(self, data: bytes) -> Image.Image:
        from engine.media import open_image

        key = digest(data)
        if key != self.digest or self.image is None:
            self.image, self.digest = open_image(data), key
        return self.image


class Engine:
    """Request handling: the reader thread calls `receive`, the main thread runs `work`."""

    def __init__(self, connection: Connection, data_dir: Path | None = None) -> None:
        self.connection = connection
        self.data_dir = data_dir  # the user data folder: quantized weights are cached there between starts
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.session: Session | None = None
        self.images = LastImage()
        self.turn: tuple[str, threading.Event] | None = None  # accepted and not yet done
        self.transcriptions: dict[str, threading.Event] = {}  # accepted and not yet answered
        self.turn_lock = threading.Lock()
        self.finished = threading.Event()  # the model work has stopped

    # ---- reader thread -----------------------------------------------------------------------

    def receive(self, header: dict, payload: bytes) -> bool:
        """Handle one request; False when the app asked the engine to shut down."""
        if header["type"] not in REQUESTS:
            self.connection.error(header["id"], f"{header['type']!r} is not a request; requests are "
                                                f"{', '.join(sorted(REQUESTS))}")
            return True
        try:
            request = decode_message(header, payload)
        except ProtocolError as err:
            self.connection.error(err.frame_id, str(err))
            return True
        match request:
            case PingRequest():
                self.connection.send(PongEvent(request.id))
            case CancelRequest():
                self.cancel(request.id)
            case ShutdownRequest():
                return False
            case RespondRequest():
                self.accept_turn(request)
            case TranscribeRequest():
                self.accept_transcription(request)
            case LoadModelRequest():
                self.jobs.put((request.id, lambda: self.load_model(request)))
            case PrefetchRequest():
                self.preempt_transcriptions()  # the user has started talking
                self.jobs.put((request.id, lambda: self.prefetch(request)))
            case ResetRequest():
                self.jobs.put((request.id, self.reset))
            case HelloRequest():
                self.connection.error(request.id, "hello is only the first frame; this connection is already the app's")
        return True

    def cancel(self, turn_id: str) -> None:
        # A cancel that arrives after its turn ended is not an error: the two crossed on the wire.
        with self.turn_lock:
            if self.turn is not None and self.turn[0] == turn_id:
                self.turn[1].set()
            if turn_id in self.transcriptions:
                self.transcriptions[turn_id].set()

    def preempt_transcriptions(self) -> None:
        with self.turn_lock:
            for cancel in self.transcriptions.values():
                cancel.set()

    def accept_transcription(self, request: TranscribeRequest) -> None:
        cancel = threading.Event()
        with self.turn_lock:
            self.transcriptions[request.request_id] = cancel
        self.jobs.put((request.request_id, lambda: self.transcribe(request, cancel)))

    def accept_turn(self, request: RespondRequest) -> None:
        with self.turn_lock:
            if self.turn is not None:
                self.connection.error(request.turn_id, f"turn {self.turn[0]} is still running; wait for its "
                                                       "turn_done or cancel it, then send this turn again")
                return
            cancel = threading.Event()
            self.turn = (request.turn_id, cancel)
        self.preempt_transcriptions()
        self.jobs.put((request.turn_id, lambda: self.respond(request, cancel)))

    def stop(self) -> None:
        """Drop queued work, cancel the running turn and let the model work end."""
        while not self.jobs.empty():
            self.jobs.get_nowait()
        self.preempt_transcriptions()
        with self.turn_lock:
            if self.turn is not None:
                self.turn[1].set()
        self.jobs.put(None)

    # ---- main thread -------------------------------------------------------------------------

    def work(self) -> None:
        while (job := self.jobs.get()) is not None:
            frame_id, run = job
            try:
                run()
            except OmnivoxError as err:
                self.connection.error(frame_id, str(err))
            except Exception as err:  # a bug or an environment fault (out of memory): report, keep serving
                traceback.print_exc(file=sys.stderr)
                message = f"internal failure ({type(err).__name__}: {err})"
                self.connection.error(frame_id, " ".join(message.split())[:MAX_ERROR_CHARS])

    def load_model(self, request: LoadModelRequest) -> None:
        frame_id, folder, vocoder = request.id, request.model, request.vocoder
        if not folder:
            raise OmnivoxError("load_model needs a model folder")
        self.session = None  # free the old model before the new one takes memory
        gc.collect()
        started = time.perf_counter()
        self.connection.send(ProgressEvent(frame_id, "starting the model runtime", 0.0))
        from engine.loading import load_lyra  # torch and transformers load here, not at start-up
        from engine.quantize import Precision
        from engine.session import Session

        precision = Precision.parse(request.precision, request.device)
        self.connection.send(ProgressEvent(frame_id, "reading weights", 0.3))
        cache = None
        if self.data_dir is not None:
            from engine.weight_cache import cache_dir

            cache = cache_dir(self.data_dir)
        lyra = load_lyra(Path(folder), precision, Path(vocoder) if vocoder else None, cache_dir=cache)
        self.session = Session(lyra)
        self.connection.send(ModelLoadedEvent(frame_id, folder, precision.mode, str(precision.device),
                                              round((time.perf_counter() - started) * 1000, 1)))

    def prefetch(self, request: PrefetchRequest) -> None:
        """Encode the picture and prefill the prompt up to it while the user is still talking."""
        if self.session is None:
            raise OmnivoxError(NO_MODEL)
        self.session.prefetch(self.images.decode(request.image))
        self.connection.send(PrefetchedEvent(request.id))

    def reset(self) -> None:
        if self.session is not None:
            self.session.reset()

    def respond(self, request: RespondRequest, cancel: threading.Event) -> None:
        from engine.events import TurnDone

        try:
            if self.session is None:
                raise OmnivoxError(NO_MODEL)
            for event in self.session.respond(turn_request(request, self.images), cancel):
                if isinstance(event, TurnDone):
                    self.end_turn(cancel)  # before turn_done leaves, so the app's next respond is welcome
                self.send_event(request.turn_id, event)
        finally:
            self.end_turn(cancel)

    def transcribe(self, request: TranscribeRequest, cancel: threading.Event) -> None:
        try:
            if self.session is None:
                raise OmnivoxError(NO_MODEL)
            text, cancelled = "", cancel.is_set()
            if not cancelled:  # preempted while queued: not even the prefill
                done = self.session.transcribe(speech_of(request.speech, request.sample_rate),
                                               request.max_new_tokens, cancel)
                text, cancelled = done.text.strip(), done.cancelled
            self.connection.send(TranscriptEvent(request.request_id, text, cancelled))
        finally:
            with self.turn_lock:
                self.transcriptions.pop(request.request_id, None)

    def end_turn(self, cancel: threading.Event) -> None:
        with self.turn_lock:
            if self.turn is not None and self.turn[1] is cancel:
                self.turn = None

    def send_event(self, turn_id: str, event: Event) -> None:
        import numpy as np

        from engine.events import AudioChunk, TextDelta

        if isinstance(event, TextDelta):
            self.connection.send(TextDeltaEvent(turn_id, event.text))
        elif isinstance(event, AudioChunk):
            pcm = np.ascontiguousarray(event.pcm, dtype="<f4")
            self.connection.send(AudioChunkEvent(turn_id, pcm.tobytes(), event.sample_rate, int(pcm.size)))
        else:
            self.connection.send(TurnDoneEvent(turn_id, event.text, event.audio_seconds, event.timings_ms,
                                               event.tokens, event.adapter, event.cancelled))


def speech_of(pcm: bytes, rate: int) -> Speech:
    import numpy as np

    from engine.media import speech_from_pcm

    return speech_from_pcm(np.frombuffer(pcm, dtype="<f4"), rate)


def turn_request(request: RespondRequest, images: LastImage) -> TurnRequest:
    from engine.media import video_from_frames
    from engine.session import TurnRequest

    speech = speech_of(request.speech, request.sample_rate) if request.speech is not None else None
    image = images.decode(request.image) if request.image is not None else None
    video = (video_from_frames(list(request.video), list(request.video_times), request.video_tokens)
             if request.video is not None else None)
    return TurnRequest(speech=speech, image=image, text=request.text, max_new_tokens=request.max_new_tokens,
                       speak=request.speak, video=video)


def serve(sock: socket.socket, data_dir: Path | None = None) -> None:
    """Serve one app until it leaves or sends shutdown.

    Model work runs on the main thread and requests are read on another: in benchmarks/engine_ipc.py
    turns took a few ms longer when torch ran on a secondary thread.
    """
    connection = Connection(sock)
    engine = Engine(connection, data_dir)
    connection.send(ReadyEvent("", os.getpid(), PROTOCOL_VERSION))
    threading.Thread(target=read_requests, args=(sock, engine), name="omnivox-reader", daemon=True).start()
    engine.work()
    engine.finished.set()


def read_requests(sock: socket.socket, engine: Engine) -> None:
    try:
        receive_until_done(sock.makefile("rb"), engine)
    finally:  # whatever ended the reading, the connection is over and the engine must not outlive it
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        engine.stop()
    # A cancelled turn ends within a decode step, but a model load cannot be interrupted.
    if not engine.finished.wait(STOP_GRACE_S):
        os._exit(0)


def receive_until_done(stream: BinaryIO, engine: Engine) -> None:
    """Hand each request to the engine until the app leaves, says shutdown, or breaks the framing."""
    while True:
        try:
            header, payload = read_frame(stream, sender="app")
        except ProtocolError as err:
            engine.connection.error(err.frame_id, str(err))
            if err.fatal:
                return
            continue
        except (EOFError, OSError):
            return
        if not engine.receive(header, payload):
            return


@dataclass
class Greeting:
    """A connection that has not yet shown it is the app: its first frame so far."""

    sock: socket.socket
    since: float = field(default_factory=time.monotonic)
    received: bytearray = field(default_factory=bytearray)

    def bytes_missing(self) -> int:
        """How much more of the first frame to read; never more, so nothing after it is taken."""
        if len(self.received) < PREFIX.size:
            return PREFIX.size - len(self.received)
        return PREFIX.size + header_length(bytes(self.received[:PREFIX.size]), MAX_HELLO) - len(self.received)


class Doorway:
    """Lets in the first connection whose hello carries the start token, and no other.

    Connections are heard side by side (one selector, no threads), so one that connects first and
    says nothing cannot keep the app waiting. The first frame is read exactly to its end, so what
    the app sends after its hello stays in the socket for the request reader.
    """

    def __init__(self, server: socket.socket, token: str) -> None:
        self.server = server
        self.token = token
        self.greetings: dict[socket.socket, Greeting] = {}
        self.selector = selectors.DefaultSelector()

    def wait_for_app(self, timeout_s: float) -> socket.socket | None:
        """The app's connection, blocking again; None if it has not come within `timeout_s`."""
        self.server.setblocking(False)
        self.selector.register(self.server, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                for key, _ in self.selector.select(min(left, HELLO_TIMEOUT_S / 4)):
                    if key.fileobj is self.server:
                        self.admit()
                    elif self.hear(self.greetings[key.fileobj]):
                        return self.let_in(key.fileobj)
                self.drop_stale()
            return None
        finally:
            for sock in list(self.greetings):
                self.forget(sock)
            self.selector.close()

    def admit(self) -> None:
        try:
            sock, _ = self.server.accept()
        except OSError:  # gone before it was accepted
            return
        sock.setblocking(False)
        self.greetings[sock] = Greeting(sock)
        self.selector.register(sock, selectors.EVENT_READ)
        if len(self.greetings) > MAX_GREETINGS:
            self.forget(next(iter(self.greetings)))  # the oldest: dicts keep arrival order

    def hear(self, greeting: Greeting) -> bool:
        """Read what this connection sent; True once it has proved it is the app."""
        try:
            chunk = greeting.sock.recv(greeting.bytes_missing())
            if not chunk:
                self.forget(greeting.sock)
                return False
            greeting.received += chunk
            if greeting.bytes_missing():
                return False
            check_hello(bytes(greeting.received[PREFIX.size:]), self.token)
        except BlockingIOError:
            return False
        except ProtocolError as err:
            self.refuse(greeting.sock, str(err))
            return False
        except OSError:
            self.forget(greeting.sock)
            return False
        return True

    def refuse(self, sock: socket.socket, message: str) -> None:
        with contextlib.suppress(OSError):  # a best-effort explanation: the peer may be gone already
            sock.send(ErrorEvent("", message).encode())
        self.forget(sock)

    def forget(self, sock: socket.socket) -> None:
        self.stop_hearing(sock)
        sock.close()

    def stop_hearing(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.greetings[sock]

    def drop_stale(self) -> None:
        now = time.monotonic()
        for greeting in [greeting for greeting in self.greetings.values() if now - greeting.since > HELLO_TIMEOUT_S]:
            self.forget(greeting.sock)

    def let_in(self, sock: socket.socket) -> socket.socket:
        self.stop_hearing(sock)
        sock.setblocking(True)
        return sock


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


# The engine's compute is bulk work beside the app's real-time audio: on a machine whose cores the
# model fills (a CPU, or a GPU run's tokenizer and vocoder), the app's speaker callback and
# listener must still run on time. Like a build an IDE starts, the engine yields to them.
BACKGROUND_NICENESS = 10


def yield_to_the_desktop() -> None:
    """Lower this process's CPU priority below the app's (the app, and everything else, keeps its own)."""
    if hasattr(os, "nice"):
        os.nice(BACKGROUND_NICENESS)
    elif sys.platform == "win32":
        import ctypes  # noqa: PLC0415 - Windows only

        below_normal = 0x4000  # BELOW_NORMAL_PRIORITY_CLASS
        ctypes.windll.kernel32.SetPriorityClass(ctypes.windll.kernel32.GetCurrentProcess(), below_normal)


def main(argv: list[str] | None = None) -> int:
    yield_to_the_desktop()
    parser = argparse.ArgumentParser(prog="python -m engine.server", description="The Omnivox engine process.")
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0),
                        help="HOST:PORT to accept the app on (default 127.0.0.1:0, a free port)")
    parser.add_argument("--accept-timeout", type=float, default=60.0,
                        help="seconds to wait for the app to connect before giving up")
    parser.add_argument("--data-dir", type=Path,
                        help="the app's data folder, where quantized weights are kept between starts (none: no cache)")
    args = parser.parse_args(argv)
    # Out of the environment at once: nothing this process starts inherits the token.
    token = os.environ.pop(TOKEN_ENV, "")
    if len(token) < MIN_TOKEN_CHARS:
        print(f"error: {TOKEN_ENV} must hold the start token (at least {MIN_TOKEN_CHARS} characters) of the app "
              "that runs this engine; the Omnivox app sets it", file=sys.stderr)
        return 2
    with socket.create_server(args.listen) as server:
        print(f"{PORT_ANNOUNCEMENT} {server.getsockname()[1]}", flush=True)
        sock = Doorway(server, token).wait_for_app(args.accept_timeout)
    if sock is None:
        print(f"error: the app did not connect within {args.accept_timeout:g} s", file=sys.stderr)
        return 1
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # events are small and latency-bound
    with sock:
        serve(sock, args.data_dir)
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # skip torch's seconds-long interpreter teardown: the app is gone, nothing is left to save
