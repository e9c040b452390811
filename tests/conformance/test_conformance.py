"""Omnivox against Lyra's own code and fairseq's vocoder, on the data `make_reference.py` wrote.

Each request of `inputs.CASES` runs through the engine's real turn path (`Session.respond`, fp32 on the
CPU, token extraction off as in the released config) on tiny checkpoints that Lyra's training entry point
saved — one with untied embeddings like Lyra-Base, one tied like Lyra-Mini. What the engine computes on
the way is recorded with hooks and compared with what Lyra's CLI computed: prompt ids, 3-row M-RoPE
positions and rope delta, ViT, Whisper and speech projector outputs, every step's logits, the greedy ids,
the CTC generator's frame argmax and units; and the vocoder against fairseq's CodeHiFiGANVocoder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.loading import LoadedLyra, load_lyra
from engine.media import Speech, read_video
from engine.model.speech_generator import ctc_collapse
from engine.model.vocoder import load_vocoder
from engine.prompt import Piece
from engine.quantize import Precision
from engine.session import Session, TurnRequest, collect
from tests.conformance.inputs import CASES, CLIP_FPS, WHISPER_EVERY, Case, clip_frames, picture, speech
from tests.engine.test_video import write_clip

DATA = Path(__file__).parent / "data"
VARIANTS = ("Lyra_Base_tiny", "Lyra_Mini_tiny")
IMAGE_TOKEN_INDEX, SPEECH_TOKEN_INDEX = -200, -500  # Lyra's placeholders in prompt ids (lyra/constants.py)
LOGITS_TOLERANCE = 2e-3
TOWER_TOLERANCE = 1e-4
AUDIO_TOLERANCE = 1e-4


# ---- the checkpoints, rebuilt in the release layout ----------------------------------------------

def unpack(manifest: dict[str, dict], blobs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors stored by make_reference.pack_tensors: int8 q, value q · 2^-k in the saved dtype."""
    return {name: (blobs[entry["blob"]].float() * 2.0 ** -entry["k"]).reshape(entry["shape"])
            .to(getattr(torch, entry["dtype"])) for name, entry in manifest.items()}


def write_release(variant: str, folder: Path) -> Path:
    """The checkpoint exactly as Lyra saved it (pickles written back with torch.save), plus the vocoder."""
    blobs = load_file(DATA / "blobs.safetensors")
    for name, entry in json.loads((DATA / f"{variant}.checkpoint.json").read_text()).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if "text" in entry:
            path.write_text(entry["text"], encoding="utf-8")
        elif "safetensors" in entry:
            save_file(unpack(entry["safetensors"], blobs), path, metadata={"format": "pt"})
        else:
            torch.save(unpack(entry["torch_save"], blobs), path)
    (folder / "vocoder").mkdir()
    torch.save({"generator": load_file(DATA / "vocoder.safetensors")}, folder / "vocoder" / "g_00500000")
    (folder / "vocoder" / "config.json").write_bytes((DATA / "vocoder.config.json").read_bytes())
    return folder


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    name = request.param
    folder = write_release(name, tmp_path_factory.mktemp("conformance") / name)
    lyra = load_lyra(folder, Precision.parse("fp32", "cpu"))
    reference = json.loads((DATA / f"{name}.reference.json").read_text())
    tensors = load_file(DATA / f"{name}.reference.safetensors")
    yield name, lyra, reference, tensors


# ---- the engine's side, recorded ------------------------------------------------------------------

@dataclass
class Recorded:
    prompt_ids: list[int] = field(default_factory=list)  # the whole conversation, Lyra's placeholders for media
    positions: list[torch.Tensor] = field(default_factory=list)  # every forward pass's (3, T)
    logits: list[torch.Tensor] = field(default_factory=list)  # the last turn's, one row per step
    frames: list[torch.Tensor] = field(default_factory=list)  # the last turn's CTC frame logits
    vision: list[torch.Tensor] = field(default_factory=list)
    whisper: list[torch.Tensor] = field(default_factory=list)
    projector: list[torch.Tensor] = field(default_factory=list)
    units: int = 0


def piece_ids(pieces: list[Piece]) -> list[int]:
    marker = {"image": IMAGE_TOKEN_INDEX, "video": IMAGE_TOKEN_INDEX, "speech": SPEECH_TOKEN_INDEX}
    return [i for piece in pieces for i in (piece.token_ids if piece.kind == "text" else (marker[piece.kind],))]


def run_engine(lyra: LoadedLyra, case: Case, monkeypatch: pytest.MonkeyPatch, folder: Path) -> Recorded:
    """Every turn of `case` through Session.respond, as the app runs it, with hooks on what it computes.

    A video goes through `ask --video`'s reader: the clip written losslessly with OpenCV, read back and sampled."""
    model, seen = lyra.model, Recorded()
    session = Session(lyra, extraction=None)
    embed_pieces, forward, logits = session.embed_pieces, session.forward, model.logits

    def recording_embed(pieces: list[Piece], media: dict) -> torch.Tensor:
        seen.prompt_ids += piece_ids(pieces)
        return embed_pieces(pieces, media)

    def recording_forward(embeds: torch.Tensor, positions: torch.Tensor, *args, **kwargs):  # noqa: ANN202
        seen.positions.append(positions)
        return forward(embeds, positions, *args, **kwargs)

    def recording_logits(hidden: torch.Tensor) -> torch.Tensor:
        out = logits(hidden)
        seen.logits.append(out.reshape(-1))
        return out

    monkeypatch.setattr(session, "embed_pieces", recording_embed)
    monkeypatch.setattr(session, "forward", recording_forward)
    monkeypatch.setattr(model, "logits", recording_logits)
    hooks = [
        model.vision_tower.register_forward_hook(lambda _m, _i, out: seen.vision.append(out.pooler_output)),
        model.speech_tower.register_forward_hook(lambda _m, _i, out: seen.whisper.append(out.last_hidden_state)),
        model.speech_generator.register_forward_hook(lambda _m, _i, out: seen.frames.append(out)),
        *(projector.register_forward_hook(lambda _m, _i, out: seen.projector.append(out))
          for projector in model.speech_projectors.values()),
    ]
    try:
        for number, turn in enumerate(case.turns, start=1):
            last = number == len(case.turns)
            for recorded in (seen.logits, seen.frames, seen.vision, seen.whisper, seen.projector):
                recorded.clear()  # keep the last turn's only
            video = read_video(write_clip(folder / "clip.mkv", list(clip_frames()), CLIP_FPS)) if turn.video else None
            request = TurnRequest(speech=Speech(speech(*turn.speech)) if turn.speech else None,
                                  image=picture() if turn.image else None, text=turn.text,
                                  max_new_tokens=case.max_new_tokens, speak=last, video=video)
            done, _ = collect(session.respond(request))
            assert done.adapter == turn.adapter
            if not last:  # the reply stays in the conversation, as generated
                seen.prompt_ids += [int(row.argmax()) for row in seen.logits]
        seen.units = done.tokens["units"]
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != Lyra's {tuple(theirs.shape)}"
    return float((ours.float() - theirs.float()).abs().max()) if ours.numel() else 0.0


# ---- the comparisons --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_engine_answers_as_lyra_does(variant: tuple, case: Case, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    _name, lyra, reference, tensors = variant
    expected = reference[case.name]
    theirs = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.startswith(case.name + ".")}
    seen = run_engine(lyra, case, monkeypatch, tmp_path)

    assert seen.prompt_ids == expected["prompt_ids"]
    prompt_positions = torch.cat(seen.positions[:len(seen.positions) - case.max_new_tokens], dim=1)
    decode_positions = torch.cat(seen.positions[len(seen.positions) - case.max_new_tokens:-1], dim=1)
    assert torch.equal(prompt_positions, theirs["positions"].long())
    assert torch.equal(decode_positions, theirs["decode_positions"].long())
    # Lyra continues decoding at prompt length + rope delta; the engine at the prompt's max position + 1
    assert int(seen.positions[-case.max_new_tokens][0, 0]) == prompt_positions.shape[1] + expected["rope_delta"]

    assert max_diff(torch.stack(seen.logits), theirs["logits"]) <= LOGITS_TOLERANCE
    assert [int(row.argmax()) for row in seen.logits] == expected["greedy_ids"]

    frames = torch.cat(seen.frames, dim=0).argmax(-1)
    assert torch.equal(frames, theirs["frame_argmax"])
    assert ctc_collapse(frames, None, lyra.config.unit_vocab_size)[0] == expected["units"]
    assert seen.units == len(expected["units"])  # the streamed turn emitted the same units

    if "vision" in theirs:
        assert max_diff(seen.vision[0], theirs["vision"]) <= TOWER_TOLERANCE
    if "whisper" in theirs:
        assert max_diff(seen.whisper[0][:, ::WHISPER_EVERY], theirs["whisper"]) <= TOWER_TOLERANCE
        assert max_diff(seen.projector[0].reshape(theirs["projector"].shape), theirs["projector"]) <= TOWER_TOLERANCE


def test_vocoder_matches_fairseq(tmp_path: Path) -> None:
    """Durations exactly and audio within 1e-4 of fairseq's CodeHiFiGANVocoder (dur_prediction=True)."""
    torch.save({"generator": load_file(DATA / "vocoder.safetensors")}, tmp_path / "g_00500000")
    vocoder = load_vocoder(tmp_path / "g_00500000", DATA / "vocoder.config.json")
    reference = load_file(DATA / "vocoder.reference.safetensors")
    for index in range(len(reference) // 3):
        units = reference[f"units_{index}"]
        assert torch.equal(vocoder.durations(units), reference[f"durations_{index}"])
        assert max_diff(vocoder(units, dur_prediction=True), reference[f"audio_{index}"]) <= AUDIO_TOLERANCE
