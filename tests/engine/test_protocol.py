import contextlib
import io
import json
import random
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import protocol
from engine.protocol import (
    MAX_HEADER,
    PROTOCOL_VERSION,
    RESPOND_PARTS,
    FrameDecoder,
    ProtocolError,
    RespondRequest,
    TranscribeRequest,
    check_hello,
    encode_frame,
    hello_frame,
    read_frame,
)


def raw_frame(header: dict | bytes, payload: bytes = b"") -> bytes:
    """A frame exactly as given, valid or not."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + payload


def header(kind: str = "ping", frame_id: str = "x", payload: bytes = b"", **fields: object) -> dict:
    return {"v": PROTOCOL_VERSION, "type": kind, "id": frame_id, "payload_size": len(payload), **fields}


def drain(decoder: FrameDecoder, data: bytes) -> list:
    """Everything `data` completes, in order; a bad frame becomes its error message."""
    results: list = []
    while True:
        try:
            frames = decoder.feed(data)
        except ProtocolError as err:
            results.append(str(err))
            frames = [None]
        data = b""
        if not frames:
            return results
        results += [frame for frame in frames if frame is not None]


def decode_all(data: bytes, sender: str = "app") -> list:
    return drain(FrameDecoder(sender), data)


PCM = struct.pack("<4f", 0.0, 0.5, -1.0, 0.25)


def test_round_trip_through_stream_and_decoder() -> None:
    frames = [
        encode_frame({"type": "audio_chunk", "id": "t1", "sample_rate": 16000, "samples": 4}, PCM),
        encode_frame({"type": "text_delta", "id": "t1", "text": "héllo 👋"}),
        encode_frame({"type": "turn_done", "id": "t1", "timings_ms": {"total": 1.5}, "adapter": None}),
    ]
    stream = io.BytesIO(b"".join(frames))
    read = [read_frame(stream, sender="engine") for _ in frames]
    assert read == FrameDecoder("engine").feed(b"".join(frames))
    (chunk, pcm), (delta, _), (done, _) = read
    assert chunk == {"type": "audio_chunk", "id": "t1", "sample_rate": 16000, "samples": 4, "v": PROTOCOL_VERSION,
                     "payload_size": 16}
    assert struct.unpack("<4f", pcm) == (0.0, 0.5, -1.0, 0.25)
    assert delta["text"] == "héllo 👋" and done["adapter"] is None
    with pytest.raises(EOFError, match="connection closed"):
        read_frame(stream)


def test_truncated_frame_is_end_of_stream() -> None:
    frame = encode_frame({"type": "ping", "id": "p"}, b"abc")
    with pytest.raises(EOFError, match="mid-frame"):
        read_frame(io.BytesIO(frame[:-1]))


def test_respond_request_round_trip() -> None:
    full = RespondRequest("t9", speech=PCM, sample_rate=44100, image=b"\x89PNG...", text="what is this? ünï",
                          max_new_tokens=12, speak=False)
    for request in (full, RespondRequest("t8", text="hi"), RespondRequest("t7", speech=b"")):
        assert RespondRequest.decode(*read_frame(io.BytesIO(request.encode()))) == request


@pytest.mark.parametrize(("fields", "payload", "message"), [
    ({"parts": {"speech": 4}}, b"12345", "add up to 4 bytes but the payload has 5"),
    ({"parts": {"smell": 1}}, b"1", "parts must map"),
    ({"parts": {"speech": 3}}, b"123", "multiple of 4 bytes"),
    ({"parts": {"text": 1}}, b"\xff", "not valid UTF-8"),
    ({"sample_rate": 0}, b"", "sample_rate must be a positive integer"),
    ({"max_new_tokens": "8"}, b"", "max_new_tokens must be"),
    ({"speak": "yes"}, b"", "speak must be true or false"),
])
def test_respond_request_rejects_inconsistent_parts(fields: dict, payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as caught:
        RespondRequest.decode(header("respond", "t3", payload, **fields), payload)
    assert caught.value.frame_id == "t3" and str(caught.value).startswith("respond t3: ")


NEXT = encode_frame({"type": "ping", "id": "next"})


@pytest.mark.parametrize(("bad", "message"), [
    (raw_frame(header("dance")), "unknown message type 'dance'"),
    (raw_frame(header(["ping"])), "unknown message type ['ping']"),  # was a TypeError that killed the reader
    (raw_frame(header({"ping": 1}, "x", b"!!"), b"!!"), "unknown message type {'ping': 1}"),
    (raw_frame(header("ping", "x", b"xyz", v=PROTOCOL_VERSION + 1), b"xyz"),
     f"app speaks protocol {PROTOCOL_VERSION + 1}, engine speaks {PROTOCOL_VERSION}; update Omnivox"),
    (raw_frame({"type": "ping", "payload_size": 0}), "frame header lacks v, id"),
    (raw_frame(header("ping", v="1")), "field v must be a protocol version"),
    (raw_frame(header("ping", id=7)), "field id must be a string of at most 128 printable characters, got 7"),
    (raw_frame(header("ping", id="x" * 129)), "field id must be a string of at most 128 printable characters"),
    (raw_frame(header("ping", id="\n")), "field id must be a string of at most 128 printable characters"),
    (raw_frame(b'{"v":1,"type":"text_delta","id":"x","payload_size":0,"text":"a\\ud800"}'),
     "a string holds an unpaired UTF-16 surrogate"),
])
def test_each_bad_frame_is_one_error_and_the_stream_goes_on(bad: bytes, message: str) -> None:
    stream = io.BytesIO(bad + NEXT)
    with pytest.raises(ProtocolError) as caught:
        read_frame(stream)
    assert message in str(caught.value) and "\n" not in str(caught.value) and not caught.value.fatal
    assert read_frame(stream)[0]["id"] == "next"
    errors, frame = decode_all(bad + NEXT)
    assert message in errors and frame[0]["id"] == "next"


@pytest.mark.parametrize(("bad", "message"), [
    (raw_frame(b"{not json"), "malformed frame header: Expecting property name"),
    (raw_frame(b"\xff\xfe"), "malformed frame header: 'utf-8' codec can't decode"),
    (raw_frame(b"[1, 2]"), "malformed frame header: not a JSON object"),
    (raw_frame({"v": 1, "type": "ping"}), "frame header lacks id, payload_size"),
    (raw_frame(header("ping", payload_size=-1)), "field payload_size must be a byte count, got -1"),
    (raw_frame(header("ping", payload_size=[4])), "field payload_size must be a byte count, got [4]"),
    (raw_frame(b"[" * 60_000), f"frame header nests deeper than {protocol.MAX_NESTING} levels"),  # was RecursionError
    (raw_frame(b'{"a":' * 40 + b"0" + b"}" * 40), f"nests deeper than {protocol.MAX_NESTING} levels"),
    (raw_frame(header("prefetch", payload_size=2**62)), f"payload of {2**62} bytes is over the"),  # was "skipped"
    (raw_frame(b" " * (MAX_HEADER + 1)), f"frame header of {MAX_HEADER + 1} bytes is over the {MAX_HEADER}-byte"),
])
def test_a_frame_whose_end_is_unknown_ends_the_stream(bad: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        read_frame(io.BytesIO(bad + NEXT))
    assert message in str(caught.value) and str(caught.value).endswith("; closing the connection")
    assert caught.value.fatal and "\n" not in str(caught.value)
    decoder = FrameDecoder("app")
    assert drain(decoder, bad + NEXT) == [str(caught.value)]
    assert decoder.closed and drain(decoder, NEXT) == [] and len(decoder.buffer) == 0  # nothing more is framed


def test_a_frame_after_good_ones_closes_the_decoder_only_once_they_are_out() -> None:
    deep = raw_frame(b"[" * 60_000)
    decoder = FrameDecoder("app")
    frames = decoder.feed(NEXT + deep + NEXT)
    assert [frame[0]["id"] for frame in frames] == ["next"]
    with pytest.raises(ProtocolError, match="nests deeper"):
        decoder.feed(b"")
    assert decoder.feed(NEXT) == []


def test_brackets_and_quotes_inside_strings_are_not_nesting() -> None:
    text = '[{"' * 40 + "\\" + '"]}' * 40
    frame = encode_frame({"type": "text_delta", "id": "t", "text": text})
    assert read_frame(io.BytesIO(frame), sender="engine")[0]["text"] == text


def test_quoted_values_in_errors_are_bounded() -> None:
    with pytest.raises(ProtocolError) as caught:
        read_frame(io.BytesIO(raw_frame(header("\x01" * 10_000))))
    assert len(str(caught.value)) < 100 and str(caught.value).startswith("unknown message type '\\x01")


def test_oversized_payload_is_refused_without_buffering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_PAYLOAD", 1000)
    bad = raw_frame(header("prefetch", "big", b"z" * 1001), b"z" * 1001)
    with pytest.raises(ProtocolError, match="payload of 1001 bytes is over the 1000-byte limit") as caught:
        read_frame(io.BytesIO(bad))
    assert caught.value.frame_id == "big" and caught.value.fatal
    decoder, cut = FrameDecoder("app"), len(bad) - 1000  # the header and one payload byte
    with pytest.raises(ProtocolError, match="payload of 1001 bytes"):
        decoder.feed(bad[:cut])
    assert decoder.feed(bad[cut:] + NEXT) == [] and len(decoder.buffer) == 0


def test_version_error_names_the_newer_side() -> None:
    newer = raw_frame(header("pong", v=PROTOCOL_VERSION + 3))
    assert decode_all(newer, sender="engine") == [
        f"engine speaks protocol {PROTOCOL_VERSION + 3}, app speaks {PROTOCOL_VERSION}; update Omnivox"]


def test_encode_refuses_what_the_peer_would_reject() -> None:
    with pytest.raises(ProtocolError, match="unknown message type 'dance'"):
        encode_frame({"type": "dance", "id": "x"})
    with pytest.raises(ProtocolError, match="frame header lacks id"):
        encode_frame({"type": "ping"})
    with pytest.raises(ProtocolError, match="over the 65536-byte limit"):
        encode_frame({"type": "text_delta", "id": "x", "text": "a" * MAX_HEADER})


def test_decoder_handles_data_split_at_every_byte() -> None:
    stream = b"".join([
        encode_frame({"type": "audio_chunk", "id": "a", "sample_rate": 16000}, PCM),
        raw_frame(header("dance", "bad", b"!!"), b"!!"),
        encode_frame({"type": "text_delta", "id": "b", "text": "ü"}),
        RespondRequest("c", speech=PCM, image=b"img", text="why").encode(),
    ])
    expected = decode_all(stream)
    assert [item if isinstance(item, str) else item[0]["id"] for item in expected] == [
        "a", "unknown message type 'dance'", "b", "c"]
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder("app")
        assert drain(decoder, stream[:cut]) + drain(decoder, stream[cut:]) == expected, cut
    decoder = FrameDecoder("app")
    assert [item for index in range(len(stream)) for item in drain(decoder, stream[index:index + 1])] == expected


def test_protocol_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, engine.protocol; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_transcribe_request_round_trip() -> None:
    request = TranscribeRequest("x1", PCM, sample_rate=44100, max_new_tokens=64)
    frame = read_frame(io.BytesIO(request.encode()))
    assert frame[0]["type"] == "transcribe" and frame[1] == PCM
    assert TranscribeRequest.decode(*frame) == request


@pytest.mark.parametrize(("fields", "payload", "message"), [
    ({}, b"", "no speech to transcribe"),
    ({}, b"123", "multiple of 4 bytes"),
    ({"sample_rate": -16000}, PCM, "sample_rate must be a positive integer"),
    ({"max_new_tokens": None}, PCM, "max_new_tokens must be"),
])
def test_transcribe_request_rejects_bad_fields(fields: dict, payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as caught:
        TranscribeRequest.decode(header("transcribe", "x2", payload, **fields), payload)
    assert caught.value.frame_id == "x2" and str(caught.value).startswith("transcribe x2: ")


def test_a_version_1_frame_is_still_read() -> None:
    old = raw_frame(header("respond", "t", b"hi", v=1, parts={"text": 2}), b"hi")
    assert RespondRequest.decode(*read_frame(io.BytesIO(old))).text == "hi"


TOKEN = "5f" * 32


def hello_header(frame: bytes) -> bytes:
    """The header bytes of a one-frame buffer, as the engine hands them to check_hello."""
    return frame[4:4 + struct.unpack(">I", frame[:4])[0]]


def test_only_a_hello_with_the_start_token_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []
    monkeypatch.setattr(protocol.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or a == b)
    check_hello(hello_header(hello_frame(TOKEN)), TOKEN)
    assert compared == [(TOKEN.encode(), TOKEN.encode())]  # in constant time, not with ==
    refusals = [
        (hello_frame("5f" * 31 + "60"), "wrong start token"),
        (hello_frame(""), "wrong start token"),
        (encode_frame({"type": "hello", "id": ""}), "wrong start token"),
        (raw_frame(header("hello", token=[TOKEN])), "wrong start token"),
        (raw_frame(header("hello", "", b"x", token=TOKEN)), "the first frame must be hello"),
        (encode_frame({"type": "ping", "id": "p", "token": TOKEN}), "the first frame must be hello"),
        (encode_frame({"type": "load_model", "id": "l", "model": "/tmp/x"}), "the first frame must be hello"),
        (raw_frame(b"[" * 60_000), "nests deeper"),
    ]
    for frame, message in refusals:
        with pytest.raises(ProtocolError, match=message):
            check_hello(hello_header(frame), TOKEN)


def test_hello_is_a_request_of_its_own_version() -> None:
    frame = read_frame(io.BytesIO(hello_frame(TOKEN)))[0]
    assert frame == {"type": "hello", "id": "", "token": TOKEN, "v": PROTOCOL_VERSION, "payload_size": 0}
    assert PROTOCOL_VERSION == 4 and "hello" in protocol.REQUESTS
    assert len(hello_header(hello_frame(TOKEN))) < protocol.MAX_HELLO


# ---- fuzzing: whatever the bytes, the decoder raises ProtocolError and nothing else -----------

FUZZ_CASES = 4000
FUZZ_SECONDS = 20.0
ODD_VALUES = [None, True, False, -1, 0, 1.5, float("inf"), 2**31, 2**62, 10**40, "", "x" * 300, "\ud800", "ping",
              [], {}, [[[]]], {"a": {"b": [1]}}, ["respond"], {"text": 4}, "\x00\n"]


def valid_frames() -> list[bytes]:
    return [
        encode_frame({"type": "ping", "id": "p"}),
        encode_frame({"type": "audio_chunk", "id": "a", "sample_rate": 16000, "samples": 4}, PCM),
        RespondRequest("r", speech=PCM, image=b"img", text="why?").encode(),
        TranscribeRequest("t", PCM).encode(),
        hello_frame(TOKEN),
    ]


def confused_frame(rng: random.Random) -> bytes:
    """A valid frame's header with one field (or one part size) swapped for a value of another type."""
    head, payload = read_frame(io.BytesIO(rng.choice(valid_frames())), sender="engine")
    field = rng.choice([*head, "parts", "sample_rate", "max_new_tokens", "speak", "token"])
    value = rng.choice(ODD_VALUES)
    if field == "parts" and rng.random() < 0.5:
        head["parts"] = {rng.choice(RESPOND_PARTS): value}
    else:
        head[field] = value
    return raw_frame(json.dumps(head).encode(), payload[:rng.randrange(len(payload) + 1)])


def mangled_frame(rng: random.Random) -> bytes:
    """Random bytes, a cut or bit-flipped valid frame, deep nesting or an absurd length prefix."""
    frame = bytearray(rng.choice(valid_frames()))
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(64))
    if kind == 1:
        return bytes(frame[:rng.randrange(len(frame))])
    if kind == 2:
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return bytes(frame)
    if kind == 3:
        depth = rng.randrange(1, 5000)
        return raw_frame(rng.choice([b"[" * depth, b'{"a":' * depth, b'{"v":1,"id":' + b"[" * depth]))
    return struct.pack(">I", rng.choice([0, 1, MAX_HEADER, MAX_HEADER + 1, 2**32 - 1])) + rng.randbytes(8)


def check_decoded(frame: tuple[dict, bytes]) -> None:
    """What decodes can be answered (its id echoed) and handed to the request decoders."""
    head, payload = frame
    encode_frame({"type": "error", "id": head["id"], "message": "x"})
    for request in (RespondRequest, TranscribeRequest):
        with contextlib.suppress(ProtocolError):
            request.decode(head, payload)


def test_fuzzed_frames_raise_only_protocol_errors() -> None:
    rng = random.Random(15)
    started, cases = time.monotonic(), 0
    while cases < FUZZ_CASES and time.monotonic() - started < FUZZ_SECONDS:
        cases += 1
        data = b"".join((confused_frame if rng.random() < 0.5 else mangled_frame)(rng)
                        for _ in range(rng.randrange(1, 4))) + NEXT
        decoder, offset = FrameDecoder(rng.choice(["app", "engine"])), 0
        while offset < len(data):  # in random pieces, as a socket delivers them
            piece = data[offset:offset + rng.randrange(1, 200)]
            offset += len(piece)
            for item in drain(decoder, piece):
                if isinstance(item, str):
                    assert "\n" not in item and len(item) < 400, item
                else:
                    check_decoded(item)
        stream = io.BytesIO(data)
        for _ in range(10):  # the blocking reader: only ProtocolError, or the stream's end
            try:
                check_decoded(read_frame(stream))
            except ProtocolError as err:
                if err.fatal:
                    break
            except EOFError:
                break
    assert cases >= 500, f"only {cases} cases in {FUZZ_SECONDS} s"


EVERY_MESSAGE = [
    protocol.HelloRequest("", "0" * 64), protocol.LoadModelRequest("l1", "/models/Lyra", "nf4", None, None),
    protocol.PrefetchRequest("f1", b"\x89PNG"), RespondRequest("t1", b"\0" * 8, image=b"png", text="what?"),
    TranscribeRequest("x1", b"\0" * 8), protocol.CancelRequest("t1"), protocol.ResetRequest("r1"),
    protocol.ShutdownRequest("s1"), protocol.PingRequest("p1"),
    protocol.ReadyEvent("", 4242, PROTOCOL_VERSION), protocol.ProgressEvent("l1", "reading weights", 0.3),
    protocol.ModelLoadedEvent("l1", "/models/Lyra", "nf4", "cuda:0", 812.5), protocol.PrefetchedEvent("f1"),
    protocol.TextDeltaEvent("t1", "It is "), protocol.AudioChunkEvent("t1", b"\0" * 8, 16000, 2),
    protocol.TurnDoneEvent("t1", "It is red.", 0.5, {"total": 9.5}, {"prompt": 31}, "speech", False),
    protocol.TranscriptEvent("x1", "what is it", False), protocol.ErrorEvent("t1", "out of memory"),
    protocol.PongEvent("p1"),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda message: message.kind)
def test_every_request_and_event_is_a_dataclass_that_crosses_the_wire_unchanged(message) -> None:
    header, payload = read_frame(io.BytesIO(message.encode()))
    assert header["type"] == message.kind and protocol.decode_message(header, payload) == message


def test_each_message_type_has_its_dataclass() -> None:
    assert {message.kind for message in EVERY_MESSAGE} == protocol.REQUESTS | protocol.EVENTS


@pytest.mark.parametrize(("fields", "payload", "error"), [
    ({"type": "progress", "id": "l1", "stage": 3, "fraction": 0.5}, b"", "progress l1: stage must be a string, got 3"),
    ({"type": "turn_done", "id": "t1", "text": "Hi"}, b"", "turn_done t1: audio_seconds must be a number, got nothing"),
    ({"type": "load_model", "id": "l1", "model": "/m", "precision": 4}, b"",
     "load_model l1: precision must be a string or null, got 4"),
    ({"type": "ready", "id": "", "pid": True, "protocol": 4}, b"",
     "ready : pid must be a non-negative integer, got True"),
    ({"type": "transcript", "id": "x1", "text": "hi", "cancelled": "no"}, b"",
     "transcript x1: cancelled must be true or false, got 'no'"),
    ({"type": "ping", "id": "p1"}, b"abc", "ping p1: carries no payload, got 3 bytes"),
])
def test_a_field_of_the_wrong_type_is_one_protocol_error_naming_it(fields: dict, payload: bytes, error: str) -> None:
    frame = raw_frame({"v": PROTOCOL_VERSION, "payload_size": len(payload), **fields}, payload)
    header, payload = read_frame(io.BytesIO(frame))
    with pytest.raises(ProtocolError, match=f"^{re.escape(error)}$") as raised:
        protocol.decode_message(header, payload)
    assert raised.value.frame_id == fields["id"] and not raised.value.fatal
