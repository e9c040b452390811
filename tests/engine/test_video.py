"""Video turns: Lyra's CLI sampling, Qwen2-VL's video layout and positions, budgets, bad clips, the wire."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine import media
from engine.media import Video, clip_indices, frame_size, prepare_video, read_video, video_from_frames
from engine.prompt import Piece, mrope_positions
from engine.protocol import MAX_VIDEO_FRAMES, ProtocolError, RespondRequest, read_frame
from engine.session import Session, TurnRequest, collect
from main import main
from tests.engine.test_media import one_line_error
from tests.engine.test_prompt import reference_rope_index


def pattern(index: int, height: int = 84, width: int = 112) -> np.ndarray:
    """A moving test pattern: frame `index` of a clip, uint8 RGB."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 2 + index * 7) % 256, (y * 3) % 256, ((x + y) * 5 + index) % 256], -1).astype(np.uint8)


def write_clip(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """A lossless clip (FFV1 in Matroska) through OpenCV's FFmpeg writer, so its frames read back exactly."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return path


def png(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


# ---- sampling and sizes, as Lyra's CLI (qwen-vl-utils 0.0.8) ---------------------------------------------

# (frames, fps, height, width) → frames kept, their indices and the frame size, as printed by qwen-vl-utils
# 0.0.8's smart_nframes, torch.linspace(...).round() and smart_resize with the CLI's total_pixels and min_pixels.
LYRA_SAMPLING = [
    ((300, 30.0, 1080, 1920), [0, 20, 40, 60, 80, 100, 120, 140, 159, 179, 199, 219, 239, 259, 279, 299], (560, 1008)),
    ((25, 10.0, 84, 112), [0, 8, 16, 24], (84, 112)),
    ((900, 30.0, 720, 1280), [0, 60, 120, 180, 240, 300, 360, 420, 479, 539, 599, 659, 719, 779, 839, 899],
     (560, 1008)),
    ((48, 24.0, 480, 640), [0, 16, 31, 47], (476, 644)),
]


@pytest.mark.parametrize(("clip", "indices", "size"), LYRA_SAMPLING)
def test_clips_are_sampled_and_sized_as_lyras_cli_does(clip: tuple, indices: list[int], size: tuple) -> None:
    count, fps, height, width = clip
    assert clip_indices(count, fps) == indices
    assert frame_size(height, width, len(indices)) == size


def test_a_clip_shorter_than_the_rule_keeps_every_frame() -> None:
    """Lyra raises here (3.5 s at 2 fps asks for 8 of 7 frames); the engine keeps the 7, the last repeated."""
    assert clip_indices(7, 2.0) == list(range(7))
    assert clip_indices(1, 30.0) == [0]


@pytest.mark.parametrize("budget", [64, 100, 256, 700, 1500, 6144])
@pytest.mark.parametrize(("count", "fps", "height", "width"), [(300, 30.0, 1080, 1920), (20, 2.0, 480, 640),
                                                               (9, 30.0, 2160, 3840), (40, 10.0, 3000, 100)])
def test_a_budget_bounds_the_vision_tokens(budget: int, count: int, fps: float, height: int, width: int) -> None:
    indices = clip_indices(count, fps, budget)
    rows, columns = frame_size(height, width, len(indices), budget)
    tokens = -(-len(indices) // 2) * (rows // 28) * (columns // 28)
    assert 0 < tokens <= budget
    assert len(indices) <= len(clip_indices(count, fps))


def test_a_larger_budget_never_gives_fewer_tokens() -> None:
    tokens = []
    for budget in (64, 128, 256, 512, 1024, 2048, 4096):
        indices = clip_indices(300, 30.0, budget)
        rows, columns = frame_size(720, 1280, len(indices), budget)
        tokens.append(len(indices) // 2 * rows // 28 * columns // 28)
    assert tokens == sorted(tokens) and tokens[-1] > 8 * tokens[0]


# ---- the model's input: Qwen2-VL's video patches and positions -------------------------------------------

def test_one_frame_is_paired_with_itself_exactly_as_the_image_processor_lays_out_an_image() -> None:
    """Qwen2-VL repeats a single picture over the temporal patch; a one-frame clip gives the same patches."""
    frame = pattern(3, 56, 84)
    prepared = prepare_video(Video(frame[None], (0.0,)))
    image = media.prepare_image(Image.fromarray(frame))
    assert prepared.grid_thw.tolist() == image.grid_thw.tolist() == [[1, 4, 6]]
    assert torch.allclose(prepared.pixel_values, image.pixel_values, atol=1e-6)


def test_frame_pairs_are_the_temporal_patch() -> None:
    """Each patch row holds (channel, frame of the pair, 14, 14): frame 2k in the first half of each channel."""
    frames = np.stack([np.full((28, 28, 3), value, np.uint8) for value in (0, 255, 0, 255)])
    prepared = prepare_video(Video(frames, (0.0, 0.5, 1.0, 1.5)))
    assert prepared.grid_thw.tolist() == [[2, 2, 2]]
    row = prepared.pixel_values[0].reshape(3, 2, 14, 14)
    assert (row[:, 0] < 0).all() and (row[:, 1] > 0).all()  # black then white, normalised


def test_video_positions_match_transformers_qwen2vl_get_rope_index() -> None:
    """The first row advances one per frame pair; text resumes after the block's largest index."""
    grid = (3, 2, 4)  # 3 frame pairs of 4 × 8 patches before the merge
    pieces = [Piece("text", 5, tuple(range(5))), Piece("video", 24, grid=grid), Piece("text", 4, tuple(range(4)))]
    ours, next_position = mrope_positions(pieces, start=0)
    token_types = torch.tensor([[0] * 5 + [2] * 24 + [0] * 4])
    theirs, deltas = reference_rope_index(token_types, video_grid_thw=torch.tensor([[3, 4, 8]]))
    assert torch.equal(ours, theirs[:, 0])
    assert ours[0, 5:29].unique().tolist() == [5, 6, 7]
    assert next_position == int(theirs.max()) + 1 == ours.shape[1] + int(deltas)


# ---- reading clips, and what goes wrong with them ---------------------------------------------------------

def test_a_clip_file_reads_back_its_sampled_frames_exactly(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.mkv", [pattern(i) for i in range(25)], fps=10)
    video = read_video(path)
    assert video.timestamps == (0.0, 0.8, 1.6, 2.4)
    assert all(np.array_equal(frame, pattern(i)) for frame, i in zip(video.frames, (0, 8, 16, 24), strict=True))
    assert video.tokens == 2 * 3 * 4


def test_sent_frames_are_sampled_by_their_timestamps() -> None:
    frames = [png(pattern(i)) for i in range(20)]
    video = video_from_frames(frames, [i * 0.5 for i in range(20)])  # 10 s at 2 fps: 16 of 20
    assert len(video.frames) == 16 and video.timestamps[-1] == 9.5
    assert np.array_equal(video.frames[1], pattern(1))  # linspace(0, 19, 16) keeps 0, 1, 3, …


def test_frames_of_changing_size_are_resized_to_the_first_frames_size() -> None:
    frames = [png(pattern(0)), png(pattern(1, 120, 160)), png(pattern(2, 84, 112)), png(pattern(3, 60, 200))]
    video = video_from_frames(frames, [0.0, 0.5, 1.0, 1.5])
    assert video.frames.shape == (4, 84, 112, 3)
    assert np.array_equal(video.frames[2], pattern(2))


def test_one_frame_is_a_clip_of_one_frame_pair(lyra_fp32) -> None:  # noqa: ANN001 - a LoadedLyra
    video = video_from_frames([png(pattern(0))], [0.0])
    assert video.frames.shape[0] == 1 and video.tokens == 12
    done, _ = collect(Session(lyra_fp32).respond(TurnRequest(video=video, text="What is this?", max_new_tokens=2)))
    assert done.tokens["video"] == 12


def test_bad_clip_files_get_one_line_errors(tmp_path: Path, image_png: Path) -> None:
    empty, noise = tmp_path / "empty.mp4", tmp_path / "noise.mp4"
    empty.write_bytes(b"")
    noise.write_bytes(np.random.default_rng(0).bytes(20_000))
    assert "no such video file" in one_line_error(read_video, tmp_path / "missing.mp4")
    assert "empty (0 bytes)" in one_line_error(read_video, empty)
    assert "not a readable video" in one_line_error(read_video, noise)
    thin = write_clip(tmp_path / "thin.mkv", [np.zeros((2, 600, 3), np.uint8)] * 4, fps=2)
    assert "at most 200 times" in one_line_error(read_video, thin)


def test_absurd_clips_are_refused_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_clip(tmp_path / "clip.mkv", [pattern(i) for i in range(25)], fps=10)
    monkeypatch.setattr(media, "MAX_CLIP_FRAMES", 24)
    assert "holds 25 frames" in one_line_error(read_video, path)
    monkeypatch.setattr(media, "MAX_CLIP_FRAMES", 25)
    monkeypatch.setattr(media, "MAX_DECODED_PIXELS", 84 * 112 - 1)
    assert "112×84" in one_line_error(read_video, path)


def test_a_stream_shorter_than_its_header_is_sampled_from_the_frames_it_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_clip(tmp_path / "clip.mkv", [pattern(i) for i in range(25)], fps=10)
    header = media.video_header
    monkeypatch.setattr(media, "video_header", lambda p: (header(p)[0] + 15, header(p)[1]))  # claims 40 frames
    video = read_video(path)
    assert video.timestamps == (0.0, 0.8, 1.6, 2.4)  # the 25 real frames, sampled as a 25-frame clip


@pytest.mark.parametrize(("frames", "times", "budget", "expected"), [
    ([], [], None, "holds no frames"),
    ([b"x"], [0.0, 1.0], None, "1 frames but 2 timestamps"),
    ([b"x", b"y"], [1.0, 0.0], None, "finite seconds in order"),
    ([b"x"], [float("nan")], None, "finite seconds in order"),
    ([b"not an image"], [0.0], None, "not a readable image"),
    ([b"x"], [0.0], 10, "budget must be 64…16384, got 10"),
])
def test_bad_sent_frames_get_one_line_errors(frames: list, times: list, budget: int | None, expected: str) -> None:
    assert expected in one_line_error(video_from_frames, frames, times, budget)


def test_a_turn_shows_an_image_or_a_video_and_asks_a_question(lyra_fp32) -> None:  # noqa: ANN001
    video = video_from_frames([png(pattern(0))], [0.0])
    session = Session(lyra_fp32)
    assert "not both" in one_line_error(lambda: next(session.respond(
        TurnRequest(video=video, image=Image.new("RGB", (56, 56)), text="hi"))))
    assert "a video needs a question" in one_line_error(lambda: next(session.respond(TurnRequest(video=video))))


# ---- a video turn ----------------------------------------------------------------------------------------

def test_token_extraction_thins_video_tokens_like_image_tokens(lyra_fp32) -> None:  # noqa: ANN001
    video = video_from_frames([png(pattern(i, 112, 168)) for i in range(8)], [i * 0.5 for i in range(8)])
    done, _ = collect(Session(lyra_fp32).respond(TurnRequest(video=video, text="What moved?", max_new_tokens=2)))
    assert done.tokens["video"] == 4 * 4 * 6 == done.tokens["media_in"]
    kept = done.tokens["media_kept_per_block"]
    assert kept[0] == 96 and kept[-1] < kept[0] and kept == sorted(kept, reverse=True)


def test_ask_video_prints_its_vision_tokens(test_model: Path, tmp_path: Path, capsys) -> None:
    path = write_clip(tmp_path / "clip.mkv", [pattern(i) for i in range(25)], fps=10)
    args = ["ask", "--model", str(test_model), "--device", "cpu", "--video", str(path), "--text", "What moved?",
            "--max-new-tokens", "3", "--extract-blocks", "off", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens"]["video"] == 24 and summary["tokens"]["image"] == 0
    assert main([*args, "--video-tokens", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"]["video"] <= 64


@pytest.mark.parametrize(("extra", "expected"), [
    (["--video", "{tmp}/clip.mkv", "--image", "{tmp}/clip.mkv", "--text", "hi"], "--image or --video, not both"),
    (["--video", "{tmp}/clip.mkv"], "--video needs a question"),
    (["--video", "{tmp}/clip.mkv", "--text", "hi", "--video-tokens", "20"], "budget must be 64…16384, got 20"),
    (["--video", "{tmp}/missing.mkv", "--text", "hi"], "no such video file"),
])
def test_ask_video_argument_errors_fail_before_the_model_loads(tmp_path: Path, capsys, extra: list[str],
                                                                expected: str) -> None:
    (tmp_path / "clip.mkv").write_bytes(b"x")
    assert main(["ask", "--model", str(tmp_path / "no-model"), *[a.format(tmp=tmp_path) for a in extra]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


# ---- over the wire ---------------------------------------------------------------------------------------

def test_a_video_crosses_the_wire_as_encoded_frames_with_their_times() -> None:
    frames = (png(pattern(0)), png(pattern(1)), b"jpeg")
    request = RespondRequest("v1", speech=b"\0" * 8, text="and now?", video=frames, video_times=(0.0, 0.5, 1.25),
                             video_tokens=512)
    decoded = RespondRequest.decode(*read_frame(io.BytesIO(request.encode())))
    assert decoded == request


def frame_header(payload: bytes, **fields: object) -> dict:
    return {"v": 3, "type": "respond", "id": "v2", "payload_size": len(payload), **fields}


@pytest.mark.parametrize(("fields", "message"), [
    ({"parts": {"video": 4}}, "video_frames must list 1 to 64"),
    ({"parts": {"video": 4}, "video_frames": [[0, 2], [1, 1]]}, "add up to 3 bytes but the video part has 4"),
    ({"parts": {"video": 4}, "video_frames": [[1, 2], [0, 2]]}, "must be in time order"),
    ({"parts": {"video": 4}, "video_frames": [[0, 4]] * 0}, "video_frames must list 1 to 64"),
    ({"parts": {"video": 4}, "video_frames": [[0, 1]] * (MAX_VIDEO_FRAMES + 1)}, "video_frames must list 1 to 64"),
    ({"parts": {"video": 4}, "video_frames": [[float("inf"), 4]]}, "video_frames must list"),
    ({"parts": {"video": 4}, "video_frames": [[10**400, 4]]}, "video_frames must list"),  # no float overflow
    ({"parts": {"video": 4}, "video_frames": [[0, 0], [0, 4]]}, "video_frames must list"),
    ({"parts": {"video": 4}, "video_frames": [[0, 4]], "video_tokens": -1}, "video_tokens must be"),
    ({"video_frames": [[0, 4]]}, "video_frames given without a video part"),
])
def test_bad_video_fields_are_one_protocol_error(fields: dict, message: str) -> None:
    payload = b"abcd" if "parts" in fields else b""
    with pytest.raises(ProtocolError, match=message) as caught:
        RespondRequest.decode(frame_header(payload, **fields), payload)
    assert "\n" not in str(caught.value) and caught.value.frame_id == "v2"
