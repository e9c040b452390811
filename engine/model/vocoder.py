"""Unit HiFi-GAN vocoder: discrete speech units (e.g. mHuBERT km1000) -> 16 kHz waveform.

A clean-room PyTorch version of the "code HiFi-GAN" released with fairseq's speech-to-speech
examples (checkpoint `g_00500000` + `config.json`). Module and parameter names follow the released
checkpoint so its state dict loads once the weight norm has been folded into plain weights.

Pipeline: unit ids -> embedding -> (optional) duration predictor, which repeats each unit for a
predicted number of 20 ms frames -> HiFi-GAN generator, 320 samples per frame.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Names of the generator convs that the released checkpoint stores weight-normed
# (`weight_g`/`weight_v`); the embedding and duration predictor hold plain weights.
WEIGHT_NORMED_PREFIXES = ("conv_pre.", "ups.", "resblocks.", "conv_post.")

# HiFi-GAN's leaky-ReLU slope between convs.
LRELU_SLOPE = 0.1

_REQUIRED_FIELDS = (
    "upsample_rates",
    "upsample_kernel_sizes",
    "upsample_initial_channel",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "num_embeddings",
    "embedding_dim",
)


@dataclass(frozen=True)
class VocoderConfig:
    """The model-relevant fields of a vocoder config.json, validated."""

    num_embeddings: int
    embedding_dim: int
    model_in_dim: int
    upsample_initial_channel: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    dur_hidden_dim: int | None  # None: the checkpoint has no duration predictor
    sampling_rate: int

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> VocoderConfig:
        if not isinstance(config, Mapping):
            raise ValueError(f"vocoder config must be a JSON object, got {type(config).__name__}")
        for field in _REQUIRED_FIELDS:
            if field not in config:
                raise ValueError(f"vocoder config is missing the required field '{field}'")
        _reject_unsupported(config)

        rates = _int_list(config["upsample_rates"], "upsample_rates")
        up_kernels = _int_list(config["upsample_kernel_sizes"], "upsample_kernel_sizes")
        channels = _positive_int(config, "upsample_initial_channel")
        rb_kernels = _int_list(config["resblock_kernel_sizes"], "resblock_kernel_sizes")
        dilations = config["resblock_dilation_sizes"]
        if not isinstance(dilations, list) or len(dilations) != len(rb_kernels):
            raise ValueError("vocoder config: 'resblock_dilation_sizes' needs one list per resblock kernel")
        rb_dilations = tuple(_int_list(row, "resblock_dilation_sizes") for row in dilations)
        if len(up_kernels) != len(rates):
            raise ValueError("vocoder config: 'upsample_kernel_sizes' and 'upsample_rates' differ in length")
        # Padding (k - u) / 2 makes every transposed conv stretch its input exactly u times.
        if any((k - u) % 2 or k < u for k, u in zip(up_kernels, rates, strict=True)):
            raise ValueError("vocoder config: each upsample kernel size must be its rate plus an even number")
        if any(k % 2 == 0 for k in rb_kernels):
            raise ValueError("vocoder config: 'resblock_kernel_sizes' must be odd")
        if channels % 2 ** len(rates):
            raise ValueError(
                f"vocoder config: 'upsample_initial_channel' {channels} is not divisible by 2^{len(rates)}"
            )

        embedding_dim = _positive_int(config, "embedding_dim")
        model_in_dim = _positive_int(config, "model_in_dim", default=80)  # fairseq's default
        # Without f0 or speaker conditioning the generator input is the unit embedding itself.
        if model_in_dim != embedding_dim:
            raise ValueError(
                f"vocoder config: 'model_in_dim' {model_in_dim} must equal 'embedding_dim' {embedding_dim}"
            )

        dur_hidden_dim = None
        dur_params = config.get("dur_predictor_params")
        if dur_params is not None:
            if not isinstance(dur_params, Mapping):
                raise ValueError("vocoder config: 'dur_predictor_params' must be an object")
            for field in ("encoder_embed_dim", "var_pred_hidden_dim", "var_pred_kernel_size"):
                if field not in dur_params:
                    raise ValueError(f"vocoder config is missing the field 'dur_predictor_params.{field}'")
            if _positive_int(dur_params, "encoder_embed_dim") != embedding_dim:
                raise ValueError("vocoder config: 'dur_predictor_params' has the wrong 'encoder_embed_dim'")
            # The released predictor hard-codes padding 1 in its second conv, so only k=3 keeps lengths.
            if _positive_int(dur_params, "var_pred_kernel_size") != 3:
                raise ValueError("vocoder config: only 'var_pred_kernel_size' 3 is supported")
            dur_hidden_dim = _positive_int(dur_params, "var_pred_hidden_dim")

        sampling_rate = _positive_int(config, "sampling_rate", default=16000)
        hop = math.prod(rates)
        if config.get("code_hop_size", hop) != hop:
            raise ValueError(f"vocoder config: 'code_hop_size' must be {hop}, the product of the rates")

        return cls(
            num_embeddings=_positive_int(config, "num_embeddings"),
            embedding_dim=embedding_dim,
            model_in_dim=model_in_dim,
            upsample_initial_channel=channels,
            upsample_rates=rates,
            upsample_kernel_sizes=up_kernels,
            resblock_kernel_sizes=rb_kernels,
            resblock_dilation_sizes=rb_dilations,
            dur_hidden_dim=dur_hidden_dim,
            sampling_rate=sampling_rate,
        )


def _reject_unsupported(config: Mapping[str, Any]) -> None:
    """Fail on conditioning this implementation does not build (the LJ vocoder uses none of it)."""
    if str(config.get("resblock", "1")) != "1":
        raise ValueError("vocoder config: only 'resblock' \"1\" is supported (fairseq builds no other)")
    for field in ("f0", "multispkr", "embedder_params", "f0_quant_num_bin"):
        if config.get(field):
            raise ValueError(f"vocoder config: '{field}' conditioning is not supported (unit-only vocoders)")


def _positive_int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"vocoder config: '{key}' must be a positive integer, got {value!r}")
    return value


def _int_list(value: Any, key: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value)
    ):
        raise ValueError(f"vocoder config: '{key}' must be a list of positive integers, got {value!r}")
    return tuple(value)


def lj_vocoder_config() -> dict[str, Any]:
    """The config.json of mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj, training-only keys included.

    The three data paths are placeholders: the released file holds Meta-internal paths.
    """
    return copy.deepcopy(_LJ_CONFIG)


_LJ_CONFIG: dict[str, Any] = {
    "resblock": "1",
    "num_gpus": 0,
    "batch_size": 16,
    "learning_rate": 0.0002,
    "adam_b1": 0.8,
    "adam_b2": 0.99,
    "lr_decay": 0.999,
    "seed": 1234,
    "upsample_rates": [5, 4, 4, 2, 2],
    "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_embeddings": 1000,
    "embedding_dim": 128,
    "model_in_dim": 128,
    "segment_size": 8960,
    "code_hop_size": 320,
    "f0": False,
    "num_mels": 80,
    "num_freq": 1025,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "sampling_rate": 16000,
    "dur_prediction_weight": 1.0,
    "dur_predictor_params": {
        "encoder_embed_dim": 128,
        "var_pred_hidden_dim": 128,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "fmin": 0,
    "fmax": 8000,
    "fmax_for_loss": None,
    "num_workers": 4,
    "dist_config": {"dist_backend": "nccl", "dist_url": "env://"},
    "input_wavs_dir": "/path/to/LJSpeech/wavs_16khz",
    "input_training_file": "/path/to/lj_km1000/train.txt",
    "input_validation_file": "/path/to/lj_km1000/valid.txt",
}


class ResBlock(nn.Module):
    """HiFi-GAN "ResBlock1": three (dilated conv, plain conv) pairs, each added onto its input."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            residual = conv1(F.leaky_relu(x, LRELU_SLOPE))
            x = x + conv2(F.leaky_relu(residual, LRELU_SLOPE))
        return x


class DurationPredictor(nn.Module):
    """Predicts log(1 + frames) per unit from its embedding and two neighbours on each side.

    Dropout (p=0.5) was used in training only and is left out. Submodule names (`conv1.0`) follow the
    released checkpoint, where each conv sat in a Sequential with its ReLU.
    """

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(in_dim, hidden_dim, 3, padding=1), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden_dim)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden_dim, hidden_dim, 3, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden_dim)
        self.proj = nn.Linear(hidden_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, in_dim) -> (B, T) log(1 + duration)."""
        x = self.ln1(self.conv1(x.transpose(1, 2)).transpose(1, 2))
        x = self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2))
        return self.proj(x).squeeze(-1)


class HiFiGANGenerator(nn.Module):
    """HiFi-GAN generator body: frame features (B, model_in_dim, F) -> waveform (B, 1, F * hop)."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        channels = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.model_in_dim, channels, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            in_ch, out_ch = channels >> i, channels >> (i + 1)
            # Padding (k - u) / 2 makes the output exactly u times as long as the input.
            self.ups.append(
                nn.ConvTranspose1d(in_ch, out_ch, kernel, stride=rate, padding=(kernel - rate) // 2)
            )
            self.resblocks.extend(
                ResBlock(out_ch, k, d)
                for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
            )
        self.conv_post = nn.Conv1d(channels >> len(cfg.upsample_rates), 1, 7, padding=3)
        self.kernels_per_stage = len(cfg.resblock_kernel_sizes)

    def generate(self, x: Tensor) -> Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            # Multi-receptive-field fusion: parallel resblocks with different kernels, averaged.
            stage = self.resblocks[i * self.kernels_per_stage : (i + 1) * self.kernels_per_stage]
            x = sum(block(x) for block in stage) / self.kernels_per_stage
        # The default slope (0.01), not 0.1: a quirk of the original HiFi-GAN the weights were trained with.
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x)


@contextmanager
def exact_fp32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in true fp32 while the vocoder runs.

    This torch lets cuDNN run fp32 convolutions in TF32 (a 10-bit mantissa) on Ampere and later by
    default, which moves predicted durations and the waveform the way half precision does. Only the
    new flag is touched: mixing it with the legacy `allow_tf32` makes torch raise.
    """
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


class UnitVocoder(HiFiGANGenerator):
    """Unit ids -> 16 kHz waveform; built from the vocoder config.json dict."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        cfg = VocoderConfig.from_dict(config)
        super().__init__(cfg)
        self.config = cfg
        self.dict = nn.Embedding(cfg.num_embeddings, cfg.embedding_dim)
        self.dur_predictor: DurationPredictor | None = None
        if cfg.dur_hidden_dim is not None:
            self.dur_predictor = DurationPredictor(cfg.embedding_dim, cfg.dur_hidden_dim)

    @property
    def hop_length(self) -> int:
        """Output samples per frame (320 for the released vocoders: 20 ms at 16 kHz)."""
        return math.prod(self.config.upsample_rates)

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @torch.inference_mode()
    def durations(self, units: Tensor) -> Tensor:
        """Predicted frame count per unit, at least 1: LongTensor[T] -> LongTensor[T]."""
        units = self._check_units(units)
        if self.dur_predictor is None:
            raise ValueError("this vocoder has no duration predictor; pass one unit per frame instead")
        if units.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=units.device)
        with exact_fp32_convolutions():
            log_dur = self.dur_predictor(self.dict(units)[None])[0].float()
        # torch.round rounds halves to even, as the reference does.
        return torch.round(torch.exp(log_dur) - 1).long().clamp(min=1)

    @torch.inference_mode()
    def synthesize_frames(self, frames: Tensor) -> Tensor:
        """Vocode frames given as unit ids (LongTensor[F]) or embeddings (float (F, model_in_dim)).

        Returns the 1-D waveform of F * hop_length samples.
        """
        if frames.is_floating_point():
            width = self.config.model_in_dim
            if frames.dim() != 2 or frames.shape[1] != width:
                raise ValueError(f"frame embeddings must have shape (F, {width}), got {tuple(frames.shape)}")
            features = frames.to(device=self.conv_pre.weight.device, dtype=self.conv_pre.weight.dtype)
        else:
            features = self.dict(self._check_units(frames))
        if features.shape[0] == 0:
            return features.new_zeros(0)
        with exact_fp32_convolutions():
            return self.generate(features.T[None]).reshape(-1)

    @torch.inference_mode()
    def forward(self, units: Tensor, dur_prediction: bool = True) -> Tensor:
        """Unit ids LongTensor[T] -> waveform (1-D float).

        Use dur_prediction=True for reduced (deduplicated / CTC-collapsed) units and False for full
        50 Hz unit sequences, where every unit is already one frame.
        """
        units = self._check_units(units)
        if dur_prediction:
            units = units.repeat_interleave(self.durations(units))
        return self.synthesize_frames(units)

    def _check_units(self, units: Tensor) -> Tensor:
        if units.dim() != 1 or units.is_floating_point() or units.is_complex() or units.dtype == torch.bool:
            raise ValueError(f"units must be a 1-D integer tensor, got {units.dtype} {tuple(units.shape)}")
        limit = self.config.num_embeddings
        if units.numel() and (units.min() < 0 or units.max() >= limit):
            bad = units[(units < 0) | (units >= limit)][0].item()
            raise ValueError(f"unit id {bad} is outside 0..{limit - 1} (remove CTC blanks before vocoding)")
        # non_blocking: a plain host-to-GPU copy would also wait for all queued GPU work to finish
        return units.to(device=self.dict.weight.device, dtype=torch.long, non_blocking=True)


# Weight-norm tensor names: old `weight_g`/`weight_v` and torch.nn.utils.parametrizations' names.
_WEIGHT_NORM_KEY = re.compile(
    r"(?P<prefix>(?:.*\.)?)(?P<part>weight_[gv]|parametrizations\.weight\.original[01])"
)
_G_AND_V = {
    "weight_g": ("weight_g", "weight_v"),
    "weight_v": ("weight_g", "weight_v"),
    "parametrizations.weight.original0": (
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    ),
    "parametrizations.weight.original1": (
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    ),
}


def fold_weight_norm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Replace each weight-norm pair by the plain weight w = g * v / ||v|| (norm over all dims but 0).

    Accepts the old `<name>.weight_g`/`<name>.weight_v` naming and the newer
    `<name>.parametrizations.weight.original0`/`original1`. Folded weights are computed and returned in
    fp32; every other tensor is passed through unchanged.
    """
    folded: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        match = _WEIGHT_NORM_KEY.fullmatch(key)
        if match is None:
            folded[key] = tensor
            continue
        g_key, v_key = (match["prefix"] + part for part in _G_AND_V[match["part"]])
        partner = v_key if key == g_key else g_key
        if partner not in state_dict:
            raise ValueError(f"weight-norm tensor '{key}' has no matching '{partner}'")
        if key == g_key:
            g, v = tensor.float(), state_dict[v_key].float()
            norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
            folded[match["prefix"] + "weight"] = v * (g / norm)
    return folded


def read_vocoder_config(config_path: Path) -> dict[str, Any]:
    """Read a vocoder config.json, with one-line errors for a missing or malformed file."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise ValueError(f"vocoder config not found: {config_path}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"vocoder config {config_path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"vocoder config {config_path} must hold a JSON object")
    return config


def load_vocoder(
    checkpoint_path: Path,
    config_path: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UnitVocoder:
    """Load a released unit vocoder (`g_00500000` + `config.json`) in eval mode on `device`/`dtype`."""
    checkpoint_path = Path(checkpoint_path)
    config = read_vocoder_config(config_path)
    if not checkpoint_path.is_file():
        raise ValueError(f"vocoder checkpoint not found: {checkpoint_path}")
    state = fold_weight_norm(_read_generator_state(checkpoint_path))

    # Build on the meta device: no time is spent on a random init that the checkpoint replaces.
    with torch.device("meta"):
        model = UnitVocoder(config)
    _check_state_matches(model.state_dict(), state, checkpoint_path)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def _read_generator_state(path: Path) -> dict[str, Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        message = str(err)
        if "Weights only load failed" in message:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
            what = f"a pickled '{found.group(1)}' object" if found else "pickled data"
            raise ValueError(
                f"vocoder checkpoint {path} was refused: it holds {what}, not only tensors (weights_only)"
            ) from err
        raise ValueError(
            f"vocoder checkpoint {path} is not a readable PyTorch file (corrupt or truncated?)"
        ) from err
    if not isinstance(checkpoint, Mapping) or "generator" not in checkpoint:
        raise ValueError(f"vocoder checkpoint {path} has no 'generator' entry (is it the g_* file?)")
    generator = checkpoint["generator"]
    if not isinstance(generator, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in generator.items()
    ):
        raise ValueError(f"vocoder checkpoint {path}: 'generator' is not a mapping of names to tensors")
    return dict(generator)


def _check_state_matches(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], path: Path) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise ValueError(f"vocoder checkpoint {path} does not match its config: {'; '.join(parts)}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ValueError(
                f"vocoder checkpoint {path}: '{key}' has shape {tuple(state[key].shape)} "
                f"but the config needs {tuple(tensor.shape)}"
            )


def _few(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def write_random_vocoder(folder: Path, *, small: bool = True, seed: int = 0) -> None:
    """Write `g_00500000` and `config.json` with random weights, laid out exactly as released.

    small=True shrinks the channel widths (file well under 2 MB) but keeps the upsampling rates and
    kernel sizes, so the hop (320) and the receptive field are those of the real vocoder. The weights
    are scaled so the output is audible noise-like audio, neither silent nor clipped.
    """
    config = lj_vocoder_config()
    if small:
        config.update(upsample_initial_channel=32, embedding_dim=16, model_in_dim=16)
        config["dur_predictor_params"].update(encoder_embed_dim=16, var_pred_hidden_dim=16)
    with torch.device("meta"):  # only the module tree is needed; the weights are drawn below
        model = UnitVocoder(config)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            state[f"{name}.weight"] = torch.randn(module.weight.shape, generator=generator)
        elif isinstance(module, nn.LayerNorm):
            state[f"{name}.weight"] = torch.ones(module.weight.shape)
            state[f"{name}.bias"] = torch.zeros(module.bias.shape)
        elif isinstance(module, nn.Linear):
            # log(1 + d) around log(3) with some spread: durations of roughly 1..4 frames.
            spread = 0.4 / module.in_features**0.5
            state[f"{name}.weight"] = torch.randn(module.weight.shape, generator=generator) * spread
            state[f"{name}.bias"] = torch.full(module.bias.shape, math.log(3.0))
        elif isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
            weight = _random_conv_weight(name, module, generator)
            state[f"{name}.bias"] = torch.randn(module.bias.shape, generator=generator) * 0.01
            if (name + ".").startswith(WEIGHT_NORMED_PREFIXES):
                # Split into g * v / ||v|| with v rescaled per row, so a loader that skips the fold fails.
                g = torch.linalg.vector_norm(weight, dim=(1, 2), keepdim=True)
                row_scale = torch.rand(g.shape, generator=generator) * 1.5 + 0.5
                state[f"{name}.weight_g"], state[f"{name}.weight_v"] = g, weight * row_scale
            else:
                state[f"{name}.weight"] = weight
    _calibrate_output_level(model, state, generator)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": state}, folder / "g_00500000")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _calibrate_output_level(model: UnitVocoder, state: dict[str, Tensor], generator: torch.Generator) -> None:
    """Rescale conv_post so its output (the tanh input) has std 0.25 on a random utterance.

    Narrow random nets vary a lot from seed to seed; this keeps every seed audible but unclipped.
    """
    model.load_state_dict(fold_weight_norm(state), assign=True)
    captured: list[Tensor] = []
    hook = model.conv_post.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    model(torch.randint(0, model.config.num_embeddings, (50,), generator=generator))
    hook.remove()
    scale = 0.25 / captured[0].std().item()
    state["conv_post.weight_g"] *= scale
    state["conv_post.bias"] *= scale


def _random_conv_weight(
    name: str, conv: nn.Conv1d | nn.ConvTranspose1d, generator: torch.Generator
) -> Tensor:
    """Gaussian weights: variance-preserving on the main path, weaker on the residual branches."""
    if isinstance(conv, nn.ConvTranspose1d):
        fan_in = conv.in_channels * conv.kernel_size[0] / conv.stride[0]
    else:
        fan_in = conv.in_channels * conv.kernel_size[0]
    gain = 1.0 if name.startswith("resblocks.") else 2.0**0.5
    return torch.randn(conv.weight.shape, generator=generator) * gain / fan_in**0.5
