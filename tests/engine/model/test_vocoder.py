"""Tests for the unit HiFi-GAN vocoder: layout, weight-norm folding, loading and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.model.vocoder import (
    UnitVocoder,
    fold_weight_norm,
    lj_vocoder_config,
    load_vocoder,
    write_random_vocoder,
)


class NotATensor:
    """A custom object that a weights_only load must refuse."""


def _released_lj_keys() -> set[str]:
    """The state-dict keys of the released LJ checkpoint, spelled out from the fact sheet."""
    weight_normed = ["conv_pre", "conv_post"] + [f"ups.{i}" for i in range(5)]
    weight_normed += [f"resblocks.{n}.convs{c}.{m}" for n in range(15) for c in (1, 2) for m in range(3)]
    keys = {f"{name}.{suffix}" for name in weight_normed for suffix in ("weight_g", "weight_v", "bias")}
    keys.add("dict.weight")
    for name in ("conv1.0", "ln1", "conv2.0", "ln2", "proj"):
        keys |= {f"dur_predictor.{name}.weight", f"dur_predictor.{name}.bias"}
    return keys


def _unfold_key(key: str) -> list[str]:
    """Map a folded key to the released names (weight-normed convs store weight_g and weight_v)."""
    if key.endswith(".weight") and key.split(".")[0] in ("conv_pre", "ups", "resblocks", "conv_post"):
        return [key.removesuffix("weight") + "weight_g", key.removesuffix("weight") + "weight_v"]
    return [key]


def _assert_one_line_value_error(excinfo: pytest.ExceptionInfo[ValueError], *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vocoder")
    write_random_vocoder(folder, small=True, seed=0)
    return folder


@pytest.fixture(scope="module")
def small_vocoder(small_folder: Path) -> UnitVocoder:
    return load_vocoder(small_folder / "g_00500000", small_folder / "config.json")


def test_lj_layout_matches_release() -> None:
    with torch.device("meta"):
        model = UnitVocoder(lj_vocoder_config())
    folded = model.state_dict()
    released = [name for key in folded for name in _unfold_key(key)]
    assert len(released) == 302
    assert set(released) == _released_lj_keys()
    assert sum(p.numel() for p in model.parameters()) == 13_475_010
    # weight_g holds one value per index of dim 0: the in-channels for the transposed convs.
    g_elements = sum(t.shape[0] for k, t in folded.items() if _unfold_key(k) != [k])
    assert sum(t.numel() for t in folded.values()) + g_elements == 13_485_443
    shapes = {k: tuple(t.shape) for k, t in folded.items()}
    assert shapes["conv_pre.weight"] == (512, 128, 7)
    assert [shapes[f"ups.{i}.weight"] for i in range(5)] == [
        (512, 256, 11),
        (256, 128, 8),
        (128, 64, 8),
        (64, 32, 4),
        (32, 16, 4),
    ]
    assert shapes["ups.0.bias"] == (256,)
    assert shapes["resblocks.2.convs1.2.weight"] == (256, 256, 11)
    assert shapes["resblocks.14.convs2.0.weight"] == (16, 16, 11)
    assert shapes["conv_post.weight"] == (1, 16, 7)
    assert shapes["dict.weight"] == (1000, 128)
    assert shapes["dur_predictor.conv2.0.weight"] == (128, 128, 3)
    assert shapes["dur_predictor.proj.weight"] == (1, 128)
    assert model.hop_length == 320
    assert model.sample_rate == 16000


@pytest.mark.parametrize("conv", [nn.Conv1d(6, 4, 5), nn.ConvTranspose1d(6, 4, 8, stride=4)])
def test_fold_weight_norm_matches_torch(conv: nn.Module) -> None:
    torch.manual_seed(0)
    parametrized = nn.utils.parametrizations.weight_norm(conv)
    g = parametrized.parametrizations.weight.original0
    with torch.no_grad():  # make g differ from ||v|| so the fold really has to rescale
        g.mul_(torch.rand_like(g) + 0.5)
    expected = parametrized.weight.detach()
    new_names = parametrized.state_dict()
    old_names = {
        "bias": new_names["bias"],
        "weight_g": new_names["parametrizations.weight.original0"],
        "weight_v": new_names["parametrizations.weight.original1"],
    }
    for state in (new_names, old_names):
        folded = fold_weight_norm(state)
        assert set(folded) == {"weight", "bias"}
        torch.testing.assert_close(folded["weight"], expected, rtol=1e-6, atol=1e-7)
        assert folded["bias"] is state["bias"]


def test_fold_weight_norm_needs_both_halves() -> None:
    with pytest.raises(ValueError) as excinfo:
        fold_weight_norm({"conv.weight_g": torch.ones(2, 1, 1)})
    _assert_one_line_value_error(excinfo, "conv.weight_g", "conv.weight_v")


def test_written_checkpoint_is_laid_out_as_released(small_folder: Path) -> None:
    path = small_folder / "g_00500000"
    assert path.stat().st_size < 2_000_000
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["generator"]
    assert set(checkpoint["generator"]) == _released_lj_keys()
    assert all(t.dtype == torch.float32 for t in checkpoint["generator"].values())
    config = json.loads((small_folder / "config.json").read_text())
    assert set(config) == set(lj_vocoder_config())
    assert config["upsample_rates"] == [5, 4, 4, 2, 2]


def _wn(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """torch's own weight-norm formula applied to the raw checkpoint tensors."""
    return torch._weight_norm(state[f"{name}.weight_v"], state[f"{name}.weight_g"], 0)


def _reference_waveform(state: dict[str, torch.Tensor], units: torch.Tensor) -> torch.Tensor:
    """The forward pass of the fact sheet (section 2), written out with functional ops."""
    x = state["dict.weight"][units].T[None]  # (1, E, T)
    hidden = state["dur_predictor.ln1.weight"].shape[0]
    h = x
    for conv, ln in (("conv1.0", "ln1"), ("conv2.0", "ln2")):
        h = F.relu(
            F.conv1d(h, state[f"dur_predictor.{conv}.weight"], state[f"dur_predictor.{conv}.bias"], padding=1)
        )
        h = F.layer_norm(
            h.transpose(1, 2),
            (hidden,),
            state[f"dur_predictor.{ln}.weight"],
            state[f"dur_predictor.{ln}.bias"],
        ).transpose(1, 2)
    log_dur = F.linear(
        h.transpose(1, 2), state["dur_predictor.proj.weight"], state["dur_predictor.proj.bias"]
    )
    durations = torch.clamp(torch.round(torch.exp(log_dur[0, :, 0]) - 1).long(), min=1)
    x = x.repeat_interleave(durations, dim=2)

    x = F.conv1d(x, _wn(state, "conv_pre"), state["conv_pre.bias"], padding=3)
    for i, (rate, kernel) in enumerate(zip([5, 4, 4, 2, 2], [11, 8, 8, 4, 4], strict=True)):
        x = F.leaky_relu(x, 0.1)
        x = F.conv_transpose1d(
            x, _wn(state, f"ups.{i}"), state[f"ups.{i}.bias"], stride=rate, padding=(kernel - rate) // 2
        )
        branches = []
        for j, k in enumerate([3, 7, 11]):
            y, n = x, 3 * i + j
            for m, d in enumerate([1, 3, 5]):
                name1, name2 = f"resblocks.{n}.convs1.{m}", f"resblocks.{n}.convs2.{m}"
                t = F.conv1d(
                    F.leaky_relu(y, 0.1),
                    _wn(state, name1),
                    state[f"{name1}.bias"],
                    dilation=d,
                    padding=d * (k - 1) // 2,
                )
                y = y + F.conv1d(
                    F.leaky_relu(t, 0.1), _wn(state, name2), state[f"{name2}.bias"], padding=(k - 1) // 2
                )
            branches.append(y)
        x = sum(branches) / 3
    x = F.conv1d(F.leaky_relu(x, 0.01), _wn(state, "conv_post"), state["conv_post.bias"], padding=3)
    return torch.tanh(x).reshape(-1)


def test_matches_functional_reference(small_folder: Path, small_vocoder: UnitVocoder) -> None:
    state = _raw_state(small_folder)
    units = torch.randint(0, 1000, (25,), generator=torch.Generator().manual_seed(3))
    expected = _reference_waveform(state, units)
    torch.testing.assert_close(small_vocoder(units), expected, rtol=0, atol=1e-5)
    assert not small_vocoder.training


def test_output_length_and_level(small_vocoder: UnitVocoder) -> None:
    units = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(1))
    durations = small_vocoder.durations(units)
    assert durations.dtype == torch.long and durations.shape == (40,)
    assert int(durations.min()) >= 1
    assert int(durations.max()) > 1  # the random predictor really predicts durations
    audio = small_vocoder(units)
    assert audio.dim() == 1 and audio.dtype == torch.float32
    assert audio.numel() == 320 * int(durations.sum())
    assert 0.05 < float(audio.std()) < 0.5
    assert float(audio.abs().max()) < 1.0
    assert small_vocoder(units, dur_prediction=False).numel() == 320 * 40
    assert small_vocoder(torch.zeros(0, dtype=torch.long)).numel() == 0


def test_frames_as_ids_or_embeddings_agree(small_vocoder: UnitVocoder) -> None:
    units = torch.randint(0, 1000, (12,), generator=torch.Generator().manual_seed(2))
    frames = units.repeat_interleave(small_vocoder.durations(units))
    from_ids = small_vocoder.synthesize_frames(frames)
    from_embeddings = small_vocoder.synthesize_frames(small_vocoder.dict.weight[frames].detach())
    torch.testing.assert_close(from_ids, from_embeddings, rtol=0, atol=0)
    torch.testing.assert_close(small_vocoder(units), from_ids, rtol=0, atol=0)


def test_duration_rounding_and_floor() -> None:
    config = lj_vocoder_config()
    config.update(upsample_initial_channel=32, embedding_dim=16, model_in_dim=16)
    config["dur_predictor_params"].update(encoder_embed_dim=16, var_pred_hidden_dim=16)
    model = UnitVocoder(config).eval()
    # A constant prediction log(1 + d) per unit, steered through the projection bias.
    targets = [0.2, 0.7, 1.0, 2.6, 7.0, -0.5]
    expected = [1, 1, 1, 3, 7, 1]
    units = torch.tensor([1, 2, 3])
    with torch.no_grad():
        model.dur_predictor.proj.weight.zero_()
    for target, frames in zip(targets, expected, strict=True):
        with torch.no_grad():
            model.dur_predictor.proj.bias.fill_(math.log1p(target))
        assert model.durations(units).tolist() == [frames] * 3


def test_low_precision_load(small_folder: Path) -> None:
    model = load_vocoder(small_folder / "g_00500000", small_folder / "config.json", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    units = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(4))
    assert model(units).dtype == torch.bfloat16


def test_rejects_out_of_range_units(small_vocoder: UnitVocoder) -> None:
    with pytest.raises(ValueError) as excinfo:
        small_vocoder(torch.tensor([3, 1000]))
    _assert_one_line_value_error(excinfo, "1000", "0..999")
    with pytest.raises(ValueError):
        small_vocoder(torch.tensor([[3, 4]]))


def test_missing_config_field() -> None:
    config = lj_vocoder_config()
    del config["upsample_rates"]
    with pytest.raises(ValueError) as excinfo:
        UnitVocoder(config)
    _assert_one_line_value_error(excinfo, "upsample_rates")


def test_unsupported_conditioning_is_refused() -> None:
    config = lj_vocoder_config()
    config["f0"] = True
    with pytest.raises(ValueError) as excinfo:
        UnitVocoder(config)
    _assert_one_line_value_error(excinfo, "'f0'")


def _save_generator(path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save({"generator": state}, path)


def test_missing_files(small_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    _assert_one_line_value_error(excinfo, "not found", "g_00500000")
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(small_folder / "g_00500000", tmp_path / "config.json")
    _assert_one_line_value_error(excinfo, "not found", "config.json")


def test_truncated_checkpoint(small_folder: Path, tmp_path: Path) -> None:
    data = (small_folder / "g_00500000").read_bytes()
    (tmp_path / "g_00500000").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    _assert_one_line_value_error(excinfo, "not a readable PyTorch file")


def test_not_a_torch_file(small_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "g_00500000").write_text("hello, I am a text file\n")
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    _assert_one_line_value_error(excinfo, "not a readable PyTorch file")


def test_pickled_object_is_refused(small_folder: Path, tmp_path: Path) -> None:
    torch.save({"generator": {"dict.weight": torch.zeros(2)}, "extra": NotATensor()}, tmp_path / "g_00500000")
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    _assert_one_line_value_error(excinfo, "refused", "NotATensor")


def test_no_generator_entry(small_folder: Path, tmp_path: Path) -> None:
    torch.save({"model": {}}, tmp_path / "g_00500000")
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    _assert_one_line_value_error(excinfo, "'generator'")


def _raw_state(folder: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(folder / "g_00500000", map_location="cpu", weights_only=True)["generator"])


def test_missing_and_unexpected_keys(small_folder: Path, tmp_path: Path) -> None:
    state = _raw_state(small_folder)
    del state["conv_post.bias"]
    state["spkr.weight"] = torch.zeros(3)
    _save_generator(tmp_path / "g_00500000", state)
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    _assert_one_line_value_error(excinfo, "missing 'conv_post.bias'", "unexpected 'spkr.weight'")


def test_many_missing_keys_are_summarised(small_folder: Path, tmp_path: Path) -> None:
    state = {k: v for k, v in _raw_state(small_folder).items() if not k.startswith("resblocks.")}
    _save_generator(tmp_path / "g_00500000", state)
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    _assert_one_line_value_error(excinfo, "missing", "and 177 more")


def test_shape_mismatch(small_folder: Path, tmp_path: Path) -> None:
    state = _raw_state(small_folder)
    state["dict.weight"] = torch.zeros(1000, 8)
    _save_generator(tmp_path / "g_00500000", state)
    with pytest.raises(ValueError) as excinfo:
        load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    _assert_one_line_value_error(excinfo, "'dict.weight'", "(1000, 8)", "(1000, 16)")


def test_new_parametrization_names_load(
    small_folder: Path, tmp_path: Path, small_vocoder: UnitVocoder
) -> None:
    state = {
        k.replace("weight_g", "parametrizations.weight.original0").replace(
            "weight_v", "parametrizations.weight.original1"
        ): v
        for k, v in _raw_state(small_folder).items()
    }
    _save_generator(tmp_path / "g_00500000", state)
    model = load_vocoder(tmp_path / "g_00500000", small_folder / "config.json")
    units = torch.tensor([5, 6, 7, 8])
    torch.testing.assert_close(model(units), small_vocoder(units), rtol=0, atol=0)


def test_convolutions_run_in_true_fp32_and_the_flag_is_restored(small_vocoder: UnitVocoder) -> None:
    """This torch lets cuDNN use TF32 for fp32 convolutions unless told otherwise."""
    seen = []
    hooks = [module.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.conv.fp32_precision))
             for module in (small_vocoder.conv_pre, small_vocoder.dur_predictor.conv1)]
    before = torch.backends.cudnn.conv.fp32_precision
    try:
        small_vocoder(torch.tensor([5, 9, 9, 300]))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {"ieee"}
    assert torch.backends.cudnn.conv.fp32_precision == before
