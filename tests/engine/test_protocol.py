import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from engine import protocol
from engine.protocol import (
    MAX_HEADER,
    PROTOCOL_VERSION,
    FrameDecoder,
    ProtocolError,
    RespondRequest,
    TranscribeRequest,
    encode_frame,
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
    ({"parts": {"video": 1}}, b"1", "parts must map"),
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
    (raw_frame(b"{not json"), "malformed frame header: Expecting property name"),
    (raw_frame(b"\xff\xfe"), "malformed frame header: 'utf-8' codec can't decode"),
    (raw_frame(b"[1, 2]"), "malformed frame header: not a JSON object"),
    (raw_frame({"v": 1, "type": "ping"}), "frame header lacks id, payload_size"),
    (raw_frame(header("dance")), "unknown message type 'dance'"),
    (raw_frame(header("ping", "x", b"xyz", v=PROTOCOL_VERSION + 1), b"xyz"),
     f"app speaks protocol {PROTOCOL_VERSION + 1}, engine speaks {PROTOCOL_VERSION}; update Omnivox"),
    (raw_frame(header("ping", v="1")), "field v must be a protocol version"),
    (raw_frame(header("ping", payload_size=-1)), "field payload_size must be a byte count"),
    (raw_frame(header("ping", id=7)), "field id must be a string"),
    (raw_frame(b" " * (MAX_HEADER + 1)), f"frame header of {MAX_HEADER + 1} bytes is over the {MAX_HEADER}-byte"),
])
def test_each_bad_frame_is_one_error_and_the_stream_goes_on(bad: bytes, message: str) -> None:
    stream = io.BytesIO(bad + NEXT)
    with pytest.raises(ProtocolError) as caught:
        read_frame(stream)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert read_frame(stream)[0]["id"] == "next"
    errors, frame = decode_all(bad + NEXT)
    assert message in errors and frame[0]["id"] == "next"


def test_oversized_payload_is_skipped_without_buffering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_PAYLOAD", 1000)
    bad = raw_frame(header("prefetch", "big", b"z" * 1001), b"z" * 1001)
    with pytest.raises(ProtocolError, match="payload of 1001 bytes is over the 1000-byte limit") as caught:
        read_frame(io.BytesIO(bad))
    assert caught.value.frame_id == "big"
    decoder, cut = FrameDecoder("app"), len(bad) - 1000  # the header and one payload byte
    with pytest.raises(ProtocolError, match="payload of 1001 bytes"):
        decoder.feed(bad[:cut])
    assert decoder.feed(bad[cut:]) == [] and len(decoder.buffer) == 0
    assert decoder.feed(NEXT)[0][0]["id"] == "next"


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
