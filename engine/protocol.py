"""The wire protocol between the app and the engine process: versioned frames of plain data.

A frame is a 4-byte big-endian header length, a UTF-8 JSON object (the header: at least `v`,
`type`, `id` and `payload_size`), then `payload_size` raw bytes — float32 little-endian PCM for
audio, encoded PNG/JPEG for images. Nothing is ever unpickled, so the same bytes can cross a
network later. This module imports neither torch nor numpy: the GUI uses it.

A bad frame raises `ProtocolError`, and nothing else does, whatever the bytes. When the frame's
end is still known (its header is a JSON object with a byte count in `payload_size`, all within
the limits), the reader has consumed the frame (`skip` says how many of its bytes are still to be
dropped) and the connection goes on. When it is not (a header over 64 KB or nested deeper than
32 levels, not a JSON object, without a byte count, or announcing a payload over 256 MB), the error is
`fatal`: nothing after it can be framed, so the connection must be closed.

The app's first frame is `hello {token}`: the start token the app handed its engine process in
the environment variable OMNIVOX_ENGINE_TOKEN. The engine answers `ready` only to that frame.

Each request and event is one dataclass below (`decode_message` turns a frame into one, checking
every field's type; `encode` makes its frame). Requests (app → engine; `id` names the request, or
the turn for respond and cancel):
  hello {token} (the first frame, and only there)          HelloRequest
  load_model {model, precision, device, vocoder}            LoadModelRequest
  prefetch + image bytes                                     PrefetchRequest
  respond {parts, sample_rate, max_new_tokens, speak, video_frames, video_tokens} + speech PCM, image,
    UTF-8 text, video frames (a video is encoded frames back to back, video_frames = [[seconds, bytes], …])
                                                             RespondRequest
  transcribe {sample_rate, max_new_tokens} + speech PCM     TranscribeRequest
  cancel (id = the turn or transcription to stop)   ping   reset   shutdown
Events (engine → app; `id` is the request or turn they answer, "" for none):
  ready {pid, protocol}   progress {stage, fraction}   model_loaded {model, precision, device, load_ms}
  prefetched (the picture is encoded and prefilled)   text_delta {text}
  audio_chunk {sample_rate, samples} + PCM   turn_done {text, audio_seconds, timings_ms, tokens, adapter,
  cancelled}   transcript {text, cancelled}   pong   error {message}

Versions: 2 added transcribe and transcript; 3 added hello, which the engine requires first, so an
app older than 3 cannot reach it (the two ship together); 4 added prefetched (a prefetch was
acknowledged by a progress event before). Otherwise a peer only refuses frames newer than its own
version: an engine of version 4 reads the other frames of versions 1 to 3.
"""

from __future__ import annotations

import hmac
import json
import struct
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, BinaryIO, ClassVar, NoReturn

PROTOCOL_VERSION = 4
SAMPLE_RATE = 16000  # Hz: speech on the wire, and the app's audio from microphone to speaker (Whisper's rate)
PORT_ANNOUNCEMENT = "OMNIVOX_ENGINE_PORT"  # first stdout line of the engine process, then the port
TOKEN_ENV = "OMNIVOX_ENGINE_TOKEN"  # the app's start token, in the engine process's environment (never argv)
MAX_HEADER = 64 * 1024
MAX_HELLO = 1024  # the first frame's header: a token and the required fields
MAX_NESTING = 32  # json.loads recurses once per level; real headers nest 2 deep
MAX_ID = 128  # characters; ids are echoed in every answer, so they must stay short and printable
MAX_PAYLOAD = 256 * 1024 * 1024  # 25 min of speech is 96 MB of float32; a screenshot PNG a few MB
PREFIX = struct.Struct(">I")
REQUIRED = ("v", "type", "id", "payload_size")

PEER = {"app": "engine", "engine": "app"}  # who reads what the other sends

# A respond payload is its parts back to back in this order; the header gives their sizes.
RESPOND_PARTS = ("speech", "image", "text", "video")
MAX_VIDEO_FRAMES = 64  # 32 s at the 2 frames a second the model samples; the engine keeps at most 16
MAX_VIDEO_SECONDS = 86_400.0  # a frame's timestamp; compared, never converted, so a huge JSON integer is refused

Frame = tuple[dict, bytes]


class ProtocolError(Exception):
    """A frame that breaks the protocol, described in one line.

    `frame_id` is the offending frame's id when it could be read, so the reply can name it;
    `skip` is how many bytes after what was read still belong to the rejected frame;
    `fatal` means the frame's end is unknown, so the connection cannot go on.
    """

    def __init__(self, message: str, frame_id: str = "", skip: int = 0, fatal: bool = False) -> None:
        super().__init__(" ".join(message.split()) + ("; closing the connection" if fatal else ""))
        self.frame_id = frame_id
        self.skip = skip
        self.fatal = fatal


def encode_frame(header: dict, payload: bytes = b"") -> bytes:
    """One frame; `v` and `payload_size` are filled in. Refuses what the other side would reject."""
    full = {**header, "v": PROTOCOL_VERSION, "payload_size": len(payload)}
    check_header(full, sender="app")
    raw = json.dumps(full, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(raw) > MAX_HEADER:
        raise ProtocolError(f"frame header of {len(raw)} bytes is over the {MAX_HEADER}-byte limit")
    return PREFIX.pack(len(raw)) + raw + payload


def header_length(prefix: bytes, limit: int = MAX_HEADER) -> int:
    (length,) = PREFIX.unpack(prefix)
    if length > limit:
        raise ProtocolError(f"frame header of {length} bytes is over the {limit}-byte limit", fatal=True)
    return length


def parse_header(raw: bytes, sender: str) -> dict:
    """Decode and check a header sent by `sender` ("app" or "engine")."""
    check_nesting(raw)
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise ProtocolError(f"malformed frame header: {err}", fatal=True) from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed frame header: not a JSON object", fatal=True)
    check_header(header, sender)
    if b"\\u" in raw and not is_unicode(header):  # only a \u escape can smuggle in half a character
        raise ProtocolError("malformed frame header: a string holds an unpaired UTF-16 surrogate (half a "
                            "character)", header["id"], header["payload_size"])
    return header


def check_nesting(raw: bytes) -> None:
    """Refuse a header nested deeper than MAX_NESTING before json.loads recurses into it."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:  # the common case, at C speed
        return
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)  # backslash, quote
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_NESTING:
                raise ProtocolError(f"frame header nests deeper than {MAX_NESTING} levels", fatal=True)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1


def is_unicode(header: dict) -> bool:
    """Whether every string in the header can be written back as UTF-8 (answers echo its fields)."""
    try:
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_header(header: dict, sender: str) -> None:
    frame_id = header["id"] if is_id(header.get("id")) else ""
    missing = [name for name in REQUIRED if name not in header]
    size = header.get("payload_size")
    # Without a byte count nobody knows where this frame ends, so nothing after it can be read.
    if "payload_size" in missing:
        raise ProtocolError(f"frame header lacks {', '.join(missing)}", frame_id, fatal=True)
    if not is_count(size):
        raise ProtocolError(f"frame header field payload_size must be a byte count, got {short(size)}", frame_id,
                            fatal=True)
    if size > MAX_PAYLOAD:  # skipping it could take forever: no valid sender announces one
        raise ProtocolError(f"payload of {short(size)} bytes is over the {MAX_PAYLOAD}-byte limit", frame_id,
                            fatal=True)

    def invalid(message: str) -> ProtocolError:
        return ProtocolError(message, frame_id, size)

    version, kind = header.get("v"), header.get("type")
    if is_count(version) and version > PROTOCOL_VERSION:
        raise invalid(f"{sender} speaks protocol {short(version)}, {PEER[sender]} speaks {PROTOCOL_VERSION}; "
                      "update Omnivox")
    if missing:
        raise invalid(f"frame header lacks {', '.join(missing)}")
    if not (is_count(version) and version >= 1):
        raise invalid(f"frame header field v must be a protocol version, got {short(version)}")
    if not is_id(header["id"]):
        raise invalid(f"frame header field id must be a string of at most {MAX_ID} printable characters, "
                      f"got {short(header['id'])}")
    if not (isinstance(kind, str) and kind in REQUESTS | EVENTS):
        raise invalid(f"unknown message type {short(kind)}")


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_id(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID and value.isprintable()


def short(value: object) -> str:
    """A peer's value as quoted in an error: bounded, since the error travels back in one frame."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def hello_frame(token: str) -> bytes:
    """The app's first frame: proof that it is the app that started this engine."""
    return encode_frame({"type": "hello", "id": "", "token": token})


def check_hello(raw: bytes, token: str) -> None:
    """Refuse a first frame (its header `raw`) unless it is a hello carrying `token`."""
    header = parse_header(raw, sender="app")
    if header["type"] != "hello" or header["payload_size"]:
        raise ProtocolError("the first frame must be hello; this engine serves only the app that started it")
    presented = header.get("token")
    if not (isinstance(presented, str) and hmac.compare_digest(presented.encode("utf-8"), token.encode("utf-8"))):
        raise ProtocolError("wrong start token; this engine serves only the app that started it")


def read_frame(stream: BinaryIO, sender: str = "app") -> Frame:
    """Block until the next frame; EOFError when the stream ends."""
    prefix = read_exactly(stream, PREFIX.size, at_boundary=True)
    try:
        header = parse_header(read_exactly(stream, header_length(prefix)), sender)
    except ProtocolError as err:
        if not err.fatal:
            discard(stream, err.skip)
        raise
    return header, read_exactly(stream, header["payload_size"])


def read_exactly(stream: BinaryIO, size: int, at_boundary: bool = False) -> bytes:
    data = stream.read(size) if size else b""
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            raise EOFError("connection closed" if at_boundary and not data else "connection closed mid-frame")
        data += more
    return data


def discard(stream: BinaryIO, size: int) -> None:
    while size > 0:
        dropped = len(stream.read(min(size, 1 << 20)))
        if not dropped:
            return
        size -= dropped


class FrameDecoder:
    """Incremental frame decoding for event-driven sockets (Qt's readyRead).

    `feed` buffers the data and returns the frames it completes, in order, up to a bad frame.
    The bad frame (consumed by then) raises `ProtocolError` from the call that reaches it first,
    or from the next call when frames came before it. So drain with `feed(b"")` until it
    returns nothing. After a fatal error the decoder is closed: it drops whatever it is fed.
    """

    def __init__(self, sender: str = "engine") -> None:
        self.sender = sender
        self.buffer = bytearray()
        self.header: dict | None = None  # a frame waiting for its payload
        self.to_drop = 0  # bytes of a rejected frame still to arrive
        self.failure: ProtocolError | None = None  # a bad frame found after good ones, raised next
        self.closed = False  # a fatal error came: the stream cannot be framed any more

    def feed(self, data: bytes) -> list[Frame]:
        if not self.closed:
            self.buffer += data
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        frames: list[Frame] = []
        while not self.closed:
            try:
                frame = self.next_frame()
            except ProtocolError as err:
                if not frames:
                    raise
                self.failure = err
                break
            if frame is None:
                break
            frames.append(frame)
        return frames

    def next_frame(self) -> Frame | None:
        """The next whole frame in the buffer, or None until more bytes arrive."""
        if self.to_drop:
            dropped = min(self.to_drop, len(self.buffer))
            del self.buffer[:dropped]
            self.to_drop -= dropped
            if self.to_drop:
                return None
        if self.header is None:
            self.header = self.next_header()
            if self.header is None:
                return None
        size = self.header["payload_size"]
        if len(self.buffer) < size:
            return None
        frame = (self.header, bytes(self.buffer[:size]))
        del self.buffer[:size]
        self.header = None
        return frame

    def next_header(self) -> dict | None:
        if len(self.buffer) < PREFIX.size:
            return None
        try:
            length = header_length(bytes(self.buffer[:PREFIX.size]))
        except ProtocolError as err:
            self.reject(PREFIX.size, err)
        if len(self.buffer) < PREFIX.size + length:
            return None
        try:
            header = parse_header(bytes(self.buffer[PREFIX.size:PREFIX.size + length]), self.sender)
        except ProtocolError as err:
            self.reject(PREFIX.size + length, err)
        del self.buffer[:PREFIX.size + length]
        return header

    def reject(self, consumed: int, err: ProtocolError) -> NoReturn:
        if err.fatal:
            self.closed = True
            self.buffer.clear()
        else:
            del self.buffer[:consumed]
            self.to_drop = err.skip
        raise err


FIELD_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {  # a field's annotation: its check, in words
    "str": (lambda value: isinstance(value, str), "a string"),
    "str | None": (lambda value: value is None or isinstance(value, str), "a string or null"),
    "int": (lambda value: is_count(value), "a non-negative integer"),
    "float": (lambda value: isinstance(value, int | float) and not isinstance(value, bool), "a number"),
    "bool": (lambda value: isinstance(value, bool), "true or false"),
    "dict": (lambda value: isinstance(value, dict), "a JSON object"),
}


@dataclass(frozen=True)
class Message:
    """A request or event whose fields but `id` (and the payload field, if any) are its header's fields."""

    kind: ClassVar[str]
    payload_field: ClassVar[str | None] = None
    id: str

    def body(self) -> dict[str, Any]:
        """The header fields, as the frame carries them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("id", self.payload_field)}

    def encode(self) -> bytes:
        payload = getattr(self, self.payload_field) if self.payload_field else b""
        return encode_frame({"type": self.kind, "id": self.id, **self.body()}, payload)

    @classmethod
    def decode(cls, header: dict, payload: bytes) -> Message:
        frame_id, values = header["id"], {}
        for f in fields(cls):
            if f.name == "id":
                continue
            if f.name == cls.payload_field:
                values[f.name] = payload
                continue
            value = header.get(f.name, f.default)
            check, wanted = FIELD_TYPES[f.type]
            if value is MISSING or not check(value):
                got = "nothing" if value is MISSING else short(value)
                raise ProtocolError(f"{cls.kind} {frame_id}: {f.name} must be {wanted}, got {got}", frame_id)
            values[f.name] = value
        if payload and cls.payload_field is None:
            raise ProtocolError(f"{cls.kind} {frame_id}: carries no payload, got {len(payload)} bytes", frame_id)
        return cls(frame_id, **values)


@dataclass(frozen=True)
class HelloRequest(Message):
    kind = "hello"
    token: str


@dataclass(frozen=True)
class LoadModelRequest(Message):
    kind = "load_model"
    model: str = ""  # the folder; the engine refuses an empty one
    precision: str | None = None  # None: the engine's default (nf4 on CUDA)
    device: str | None = None
    vocoder: str | None = None  # a folder; None: the model's vocoder/ sub-folder


@dataclass(frozen=True)
class PrefetchRequest(Message):
    """The picture the next turn will likely carry: encode it and prefill up to it now."""

    kind = "prefetch"
    payload_field = "image"
    image: bytes = b""


@dataclass(frozen=True)
class CancelRequest(Message):
    kind = "cancel"  # id: the turn or transcription to stop


@dataclass(frozen=True)
class ResetRequest(Message):
    kind = "reset"  # the engine forgets the conversation


@dataclass(frozen=True)
class ShutdownRequest(Message):
    kind = "shutdown"


@dataclass(frozen=True)
class PingRequest(Message):
    kind = "ping"


@dataclass(frozen=True)
class ReadyEvent(Message):
    kind = "ready"
    pid: int
    protocol: int


@dataclass(frozen=True)
class ProgressEvent(Message):
    kind = "progress"
    stage: str
    fraction: float


@dataclass(frozen=True)
class ModelLoadedEvent(Message):
    kind = "model_loaded"
    model: str
    precision: str
    device: str
    load_ms: float


@dataclass(frozen=True)
class PrefetchedEvent(Message):
    kind = "prefetched"  # id: the prefetch's


@dataclass(frozen=True)
class TextDeltaEvent(Message):
    kind = "text_delta"
    text: str


@dataclass(frozen=True)
class AudioChunkEvent(Message):
    kind = "audio_chunk"
    payload_field = "pcm"
    pcm: bytes = b""  # float32 little-endian mono
    sample_rate: int = SAMPLE_RATE
    samples: int = 0


@dataclass(frozen=True)
class TurnDoneEvent(Message):
    kind = "turn_done"
    text: str
    audio_seconds: float
    timings_ms: dict
    tokens: dict
    adapter: str | None
    cancelled: bool


@dataclass(frozen=True)
class TranscriptEvent(Message):
    kind = "transcript"
    text: str
    cancelled: bool


@dataclass(frozen=True)
class ErrorEvent(Message):
    kind = "error"  # id: the request it concerns, "" when none
    message: str


@dataclass(frozen=True)
class PongEvent(Message):
    kind = "pong"


@dataclass(frozen=True)
class RespondRequest:
    """One turn as the app sends it: speech PCM, an encoded image and typed text, each optional."""

    kind: ClassVar[str] = "respond"
    turn_id: str
    speech: bytes | None = None  # float32 little-endian mono PCM
    sample_rate: int = SAMPLE_RATE
    image: bytes | None = None  # encoded PNG/JPEG/...
    text: str | None = None
    max_new_tokens: int = 256
    speak: bool = True
    video: tuple[bytes, ...] | None = None  # encoded PNG/JPEG frames, oldest first
    video_times: tuple[float, ...] = ()  # seconds at which each frame was taken
    video_tokens: int | None = None  # the video's vision token budget (None: Lyra's sampling)

    def encode(self) -> bytes:
        parts = {"speech": self.speech, "image": self.image,
                 "text": self.text.encode("utf-8") if self.text is not None else None,
                 "video": b"".join(self.video) if self.video is not None else None}
        present = {name: part for name, part in parts.items() if part is not None}
        header = {"type": "respond", "id": self.turn_id, "parts": {name: len(p) for name, p in present.items()},
                  "sample_rate": self.sample_rate, "max_new_tokens": self.max_new_tokens, "speak": self.speak}
        if self.video is not None:
            header["video_frames"] = [[t, len(f)] for t, f in zip(self.video_times, self.video, strict=True)]
            header["video_tokens"] = self.video_tokens
        return encode_frame(header, b"".join(present.values()))

    @classmethod
    def decode(cls, header: dict, payload: bytes) -> RespondRequest:
        turn_id = header["id"]

        def invalid(message: str) -> ProtocolError:
            return ProtocolError(f"respond {turn_id}: {message}", turn_id)

        sizes = header.get("parts", {})
        if not isinstance(sizes, dict) or set(sizes) - set(RESPOND_PARTS) or not all(map(is_count, sizes.values())):
            raise invalid(f"parts must map some of {', '.join(RESPOND_PARTS)} to byte counts")
        if sum(sizes.values()) != len(payload):
            raise invalid(f"parts add up to {sum(sizes.values())} bytes but the payload has {len(payload)}")
        parts, offset = {}, 0
        for name in RESPOND_PARTS:
            if name in sizes:
                parts[name], offset = payload[offset:offset + sizes[name]], offset + sizes[name]
        check_pcm(parts.get("speech", b""), invalid)
        rate, tokens = speech_fields(header, invalid)
        speak = header.get("speak", True)
        if not isinstance(speak, bool):
            raise invalid(f"speak must be true or false, got {speak!r}")
        try:
            text = parts["text"].decode("utf-8") if "text" in parts else None
        except UnicodeDecodeError:
            raise invalid("text is not valid UTF-8") from None
        video, times, budget = video_fields(header, parts.get("video"), invalid)
        return cls(turn_id, parts.get("speech"), rate, parts.get("image"), text, tokens, speak, video, times, budget)


@dataclass(frozen=True)
class TranscribeRequest:
    """Speech to write down: answered by one `transcript` event, outside the conversation."""

    kind: ClassVar[str] = "transcribe"
    request_id: str
    speech: bytes  # float32 little-endian mono PCM
    sample_rate: int = SAMPLE_RATE
    max_new_tokens: int = 256

    def encode(self) -> bytes:
        header = {"type": "transcribe", "id": self.request_id, "sample_rate": self.sample_rate,
                  "max_new_tokens": self.max_new_tokens}
        return encode_frame(header, self.speech)

    @classmethod
    def decode(cls, header: dict, payload: bytes) -> TranscribeRequest:
        request_id = header["id"]

        def invalid(message: str) -> ProtocolError:
            return ProtocolError(f"transcribe {request_id}: {message}", request_id)

        if not payload:
            raise invalid("no speech to transcribe")
        check_pcm(payload, invalid)
        rate, tokens = speech_fields(header, invalid)
        return cls(request_id, payload, rate, tokens)


def video_fields(header: dict, data: bytes | None, invalid: Callable[[str], ProtocolError],
                 ) -> tuple[tuple[bytes, ...] | None, tuple[float, ...], int | None]:
    """The video part cut into its frames by `video_frames` ([[seconds, bytes], …], in time order), and its budget."""
    frames, budget = header.get("video_frames"), header.get("video_tokens")
    if data is None:
        if frames is not None:
            raise invalid("video_frames given without a video part")
        return None, (), None
    if not (isinstance(frames, list) and 1 <= len(frames) <= MAX_VIDEO_FRAMES and all(
            isinstance(f, list) and len(f) == 2 and is_seconds(f[0]) and is_count(f[1]) and f[1] > 0 for f in frames)):
        raise invalid(f"video_frames must list 1 to {MAX_VIDEO_FRAMES} [seconds, bytes] pairs")
    times = tuple(float(f[0]) for f in frames)
    if any(map(float.__lt__, times[1:], times[:-1])):
        raise invalid("video_frames must be in time order")
    if sum(f[1] for f in frames) != len(data):
        raise invalid(f"video_frames add up to {sum(f[1] for f in frames)} bytes but the video part has {len(data)}")
    if budget is not None and not is_count(budget):
        raise invalid(f"video_tokens must be a non-negative integer, got {short(budget)}")
    cuts = [0]
    for _, size in frames:
        cuts.append(cuts[-1] + size)
    return tuple(data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)), times, budget


def is_seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_VIDEO_SECONDS


def check_pcm(pcm: bytes, invalid: Callable[[str], ProtocolError]) -> None:
    if len(pcm) % 4:
        raise invalid("speech must be float32 samples (a multiple of 4 bytes)")


def speech_fields(header: dict, invalid: Callable[[str], ProtocolError]) -> tuple[int, int]:
    """The sample rate and token budget of a request carrying speech, checked."""
    rate, tokens = header.get("sample_rate", SAMPLE_RATE), header.get("max_new_tokens", 256)
    if not (is_count(rate) and rate > 0):
        raise invalid(f"sample_rate must be a positive integer, got {rate!r}")
    if not is_count(tokens):
        raise invalid(f"max_new_tokens must be a non-negative integer, got {tokens!r}")
    return rate, tokens


Request = HelloRequest | LoadModelRequest | PrefetchRequest | RespondRequest | TranscribeRequest | CancelRequest \
    | ResetRequest | ShutdownRequest | PingRequest
Event = ReadyEvent | ProgressEvent | ModelLoadedEvent | PrefetchedEvent | TextDeltaEvent | AudioChunkEvent \
    | TurnDoneEvent | TranscriptEvent | ErrorEvent | PongEvent
MESSAGES: dict[str, type] = {cls.kind: cls for cls in (*Request.__args__, *Event.__args__)}
REQUESTS = frozenset(cls.kind for cls in Request.__args__)
EVENTS = frozenset(cls.kind for cls in Event.__args__)


def decode_message(header: dict, payload: bytes) -> Request | Event:
    """The request or event a frame (already checked by `parse_header`) carries; ProtocolError if malformed."""
    return MESSAGES[header["type"]].decode(header, payload)
