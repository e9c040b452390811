"""Streaming vocoding must reproduce one-shot vocoding for any chunking, at bounded cost per push."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.model.streaming_vocoder as streaming
from engine.model.streaming_vocoder import StreamingVocoder
from engine.model.vocoder import UnitVocoder, load_vocoder, write_random_vocoder

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory: pytest.TempPathFactory) -> UnitVocoder:
    folder: Path = tmp_path_factory.mktemp("vocoder")
    write_random_vocoder(folder, small=True, seed=1)
    return load_vocoder(folder / "g_00500000", folder / "config.json")


def _one_shot(vocoder: UnitVocoder, units: list[int], dur_prediction: bool = True) -> np.ndarray:
    return vocoder(torch.tensor(units, dtype=torch.long), dur_prediction=dur_prediction).numpy()


def _stream(stream: StreamingVocoder, chunks: list[list[int]]) -> np.ndarray:
    pieces = [stream.push(chunk) for chunk in chunks] + [stream.flush()]
    assert all(p.dtype == np.float32 and p.ndim == 1 for p in pieces)
    return np.concatenate(pieces)


def _random_chunks(rng: random.Random, units: list[int]) -> list[list[int]]:
    chunks, i = [], 0
    while i < len(units):
        size = rng.choice([0, 1, 1, 1, 2, 3, 5, 8, 30])
        chunks.append(units[i : i + size])
        i += size
    return chunks


def test_context_constant() -> None:
    assert StreamingVocoder.context_frames == 21


@pytest.mark.parametrize("seed", range(12))
def test_random_chunkings_match_one_shot(vocoder: UnitVocoder, seed: int) -> None:
    rng = random.Random(seed)
    length = [0, 1, 2, 3, 4, 6, 15, 40, 90, 150, 1, 3][seed]
    units = [rng.randrange(1000) for _ in range(length)]
    expected = _one_shot(vocoder, units)
    for min_chunk_frames in (1, 5, 64):
        stream = StreamingVocoder(vocoder, min_chunk_frames=min_chunk_frames)
        got = _stream(stream, _random_chunks(rng, units))
        assert got.shape == expected.shape
        if length:
            assert float(np.abs(got - expected).max()) <= TOLERANCE


def test_unit_by_unit_and_all_at_once(vocoder: UnitVocoder) -> None:
    rng = random.Random(7)
    units = [rng.randrange(1000) for _ in range(120)]
    expected = _one_shot(vocoder, units)
    for chunks in ([[u] for u in units], [units], [[], *[[u] for u in units], []]):
        got = _stream(StreamingVocoder(vocoder), chunks)
        assert got.shape == expected.shape
        assert float(np.abs(got - expected).max()) <= TOLERANCE


def test_empty_turn(vocoder: UnitVocoder) -> None:
    stream = StreamingVocoder(vocoder)
    assert stream.push([]).size == 0
    audio = stream.flush()
    assert audio.size == 0 and audio.dtype == np.float32
    assert stream.flush().size == 0


def test_turns_are_independent(vocoder: UnitVocoder) -> None:
    stream = StreamingVocoder(vocoder)
    for units in ([1, 2, 3, 4, 5, 6, 7, 8], [9], [500, 501, 502] * 10):
        got = _stream(stream, [[u] for u in units])
        np.testing.assert_allclose(got, _one_shot(vocoder, units), rtol=0, atol=TOLERANCE)


def test_reset_drops_the_turn(vocoder: UnitVocoder) -> None:
    stream = StreamingVocoder(vocoder)
    stream.push(list(range(50)))
    stream.reset()
    got = _stream(stream, [[3, 4], [5]])
    np.testing.assert_allclose(got, _one_shot(vocoder, [3, 4, 5]), rtol=0, atol=TOLERANCE)


def test_without_duration_prediction(vocoder: UnitVocoder) -> None:
    rng = random.Random(3)
    units = [rng.randrange(1000) for _ in range(70)]
    stream = StreamingVocoder(vocoder, dur_prediction=False)
    got = _stream(stream, _random_chunks(rng, units))
    expected = _one_shot(vocoder, units, dur_prediction=False)
    assert got.shape == expected.shape == (320 * 70,)
    assert float(np.abs(got - expected).max()) <= TOLERANCE


def test_audio_is_released_as_soon_as_it_is_final(vocoder: UnitVocoder) -> None:
    rng = random.Random(11)
    units = [rng.randrange(1000) for _ in range(80)]
    durations = vocoder.durations(torch.tensor(units)).tolist()
    stream = StreamingVocoder(vocoder)
    emitted = 0
    for n in range(1, len(units) + 1):
        emitted += stream.push([units[n - 1]]).size
        # Units with two right neighbours have final durations; all but the last 21 frames are final.
        final_frames = sum(durations[: max(0, n - 2)])
        assert emitted == 320 * max(0, final_frames - streaming.CONTEXT_FRAMES)
    assert emitted + stream.flush().size == 320 * sum(durations)


def test_work_per_push_is_bounded(vocoder: UnitVocoder, monkeypatch: pytest.MonkeyPatch) -> None:
    frame_windows: list[int] = []
    unit_windows: list[int] = []
    synthesize, durations = vocoder.synthesize_frames, vocoder.durations

    def spy_synthesize(frames: torch.Tensor) -> torch.Tensor:
        frame_windows.append(len(frames))
        return synthesize(frames)

    def spy_durations(units: torch.Tensor) -> torch.Tensor:
        unit_windows.append(len(units))
        return durations(units)

    monkeypatch.setattr(vocoder, "synthesize_frames", spy_synthesize)
    monkeypatch.setattr(vocoder, "durations", spy_durations)
    rng = random.Random(5)
    units = [rng.randrange(1000) for _ in range(300)]
    longest = int(durations(torch.tensor(units)).max())
    stream = StreamingVocoder(vocoder)
    for unit in units:
        stream.push([unit])
    stream.flush()
    # One new unit per push: a window holds 2 x 21 context frames plus the frames of the unit whose
    # duration became final (of the last two units at flush); the predictor sees one new unit with
    # two units of context on each side.
    assert max(frame_windows) <= 2 * streaming.CONTEXT_FRAMES + 2 * longest
    assert max(unit_windows) <= 5


def test_less_context_would_not_be_exact(vocoder: UnitVocoder, monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards the test itself: with the random weights the receptive field really spans many frames.
    monkeypatch.setattr(streaming, "CONTEXT_FRAMES", 10)
    rng = random.Random(2)
    units = [rng.randrange(1000) for _ in range(60)]
    got = _stream(StreamingVocoder(vocoder), [[u] for u in units])
    assert float(np.abs(got - _one_shot(vocoder, units)).max()) > 1e-3


def test_rejects_bad_units(vocoder: UnitVocoder) -> None:
    stream = StreamingVocoder(vocoder)
    with pytest.raises(ValueError, match="1000"):
        stream.push([1, 1000])
    with pytest.raises(ValueError):
        stream.push([-1])
    with pytest.raises(ValueError):
        StreamingVocoder(vocoder, min_chunk_frames=0)
