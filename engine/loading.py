"""Build a `LyraModel` from a checkpoint folder at a chosen precision.

The model is first built with parameters on the meta device (no memory), then each released
tensor is read from the memory-mapped shards, checked against the shape the engine expects,
cast or quantized, and put in place — so peak memory stays near the final model size. With a
cache folder, the quantized layers of an `nf4` / `int8` load are kept there (engine/weight_cache.py)
and the next load takes them from it instead of quantizing again.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import PreTrainedTokenizerBase
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

from engine import checkpoint
from engine.checkpoint import CheckpointFiles, LoadReport, TensorInfo
from engine.config import LyraConfig
from engine.errors import OmnivoxError
from engine.model.lyra import ADAPTERS, LyraModel, SpeechEncoderDims
from engine.model.vocoder import UnitVocoder, load_vocoder
from engine.quantize import Precision, prequantized_linear, quantized_linear, storage_format
from engine.weight_cache import CachedLayers, DamagedCache, WeightCache

LORA_TARGETS = r"layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
SPEECH_TOWER = "model.speech_tower.speech_tower."

logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
log = logging.getLogger(__name__)
LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


@dataclass
class LoadedLyra:
    model: LyraModel
    tokenizer: PreTrainedTokenizerBase
    vocoder: UnitVocoder
    config: LyraConfig
    precision: Precision
    report: LoadReport
    folder: Path


def load_lyra(
    folder: Path,
    precision: Precision,
    vocoder: Path | None = None,
    attn_implementation: str = "sdpa",
    cache_dir: Path | None = None,
) -> LoadedLyra:
    """Load a checkpoint; with `cache_dir`, quantized layers come from (or go to) the weight cache there."""
    check_attention(attn_implementation, precision)
    files = checkpoint.locate(folder, vocoder)
    config = LyraConfig.from_file(files.config)
    index = checkpoint.read_index(files)
    config.check_weights({name: info.shape for name, info in index.items()}, str(files.config))
    projectors = {name: checkpoint.adapter_projector(path) for name, path in files.adapters.items()}
    dims = speech_encoder_dims(index, projectors["speech"])

    cache = WeightCache(cache_dir, files, precision) if cache_dir is not None and precision.quantized else None
    damage = None
    try:
        model, report = build_model(config, dims, attn_implementation, files, index, precision, cache)
    except DamagedCache as err:
        damage = str(err)
    if cache is not None and damage is not None:  # outside the handler, whose traceback holds the half-filled model
        log.warning("%s: not used, loading afresh", damage)
        cache.discard()
        model, report = build_model(config, dims, attn_implementation, files, index, precision, cache)
        report.weight_cache = "rebuilt"
    for name, tensors in projectors.items():
        load_module(model.speech_projectors[name], tensors, precision, f"{name} adapter projector")
    load_adapters(model, files, precision, report)
    move_buffers(model, precision.device)
    model.eval().requires_grad_(False)

    tokenizer = load_tokenizer(folder)
    unit_vocoder = load_vocoder_checked(files, precision)
    return LoadedLyra(model, tokenizer, unit_vocoder, config, precision, report, folder)


def build_model(config: LyraConfig, dims: SpeechEncoderDims, attn_implementation: str, files: CheckpointFiles,
                index: dict[str, TensorInfo], precision: Precision, cache: WeightCache | None
                ) -> tuple[LyraModel, LoadReport]:
    """The model with the checkpoint's weights, its quantized layers from the cache when it holds them."""
    cached = cache.open() if cache is not None else None
    with parameters_on_meta():
        model = LyraModel(config, dims, attn_implementation)
    report = load_weights(model, files, index, precision, cached)
    if cache is not None:
        if cached is None:
            cache.write(model)
        report.weight_cache = "loaded" if cached is not None else "written"
    return model, report


def check_attention(attn_implementation: str, precision: Precision) -> None:
    if attn_implementation in ("sdpa", "eager"):
        return
    if attn_implementation != "flash_attention_2":
        raise OmnivoxError(f"unknown attention {attn_implementation!r}; choose sdpa, eager or flash_attention_2.")
    if precision.device.type != "cuda" or importlib.util.find_spec("flash_attn") is None:
        raise OmnivoxError("flash_attention_2 needs a CUDA GPU and the flash-attn package; use sdpa.")


class EmptyOnMeta(TorchFunctionMode):
    """`torch.empty` without a device makes meta tensors: weight matrices are never allocated, not even for a moment."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device from the start but buffers (rotary tables) for real."""
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        with EmptyOnMeta():  # modules make their weights with torch.empty; the few made otherwise are small
            yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def speech_encoder_dims(index: dict[str, TensorInfo], projector: dict[str, torch.Tensor]) -> SpeechEncoderDims:
    def shape(name: str) -> tuple[int, ...]:
        info = index.get(SPEECH_TOWER + name)
        if info is None:
            raise OmnivoxError(f"weights: missing tensor {SPEECH_TOWER + name}; re-download the model.")
        return info.shape

    layer_prefix = SPEECH_TOWER + "layers."
    layers = {name[len(layer_prefix):].split(".")[0] for name in index if name.startswith(layer_prefix)}
    width, n_mels, _ = shape("conv1.weight")
    return SpeechEncoderDims(
        n_mels=n_mels,
        width=width,
        layers=len(layers),
        ffn=shape("layers.0.fc1.weight")[0],
        positions=shape("embed_positions.weight")[0],
        projector_hidden=projector["linear1.weight"].shape[0],
    )


def load_weights(model: LyraModel, files: CheckpointFiles, index: dict[str, TensorInfo],
                 precision: Precision, cached: CachedLayers | None = None) -> LoadReport:
    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if not n.startswith("speech_projectors.")}
    report = LoadReport()
    wanted: dict[str, str] = {}  # released → engine
    for released, info in index.items():
        target = checkpoint.engine_name(released)
        if target is None or (target and target not in expected):
            report.unexpected.append(released)
        elif target == "":
            report.ignored.append(released)
        elif info.shape != expected[target]:
            raise OmnivoxError(
                f"weights: tensor {released} has shape {list(info.shape)} but this config.json needs "
                f"{list(expected[target])}; the weights and config do not belong together."
            )
        else:
            wanted[released] = target
    tied = model.config.text.tie_word_embeddings and "lm_head.weight" not in wanted.values()
    if tied:  # Qwen2-VL-2B shares its input embedding with the output head
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(wanted.values()))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise OmnivoxError(f"weights: missing {shown}; the checkpoint is incomplete, re-download it.")

    formats: dict[str, str] = {}  # module → "nf4" / "int8" for the layers bitsandbytes holds
    for target in wanted.values():
        module_name = target.rsplit(".", 1)[0]
        fmt = storage_format(module_name, getattr(model.get_submodule(module_name), "in_features", 0), precision.mode)
        if fmt is not None:
            formats[module_name] = fmt
    if cached is not None:  # those layers as quantized before; their released tensors are not read
        for module_name, fmt in formats.items():
            linear = model.get_submodule(module_name)
            replace_module(model, module_name, prequantized_linear(cached.state(module_name), fmt, precision,
                                                                   linear.in_features, linear.out_features))
        wanted = {released: target for released, target in wanted.items() if target.rsplit(".", 1)[0] not in formats}

    pending: dict[str, dict[str, torch.Tensor]] = {}  # quantized modules waiting for weight + bias
    for released, tensor in checkpoint.iter_tensors(files, list(wanted), index):
        target = wanted[released]
        module_name, leaf = target.rsplit(".", 1)
        linear = model.get_submodule(module_name)
        fmt = formats.get(module_name)
        if fmt is not None:
            parts = pending.setdefault(module_name, {})
            parts[leaf] = tensor
            if "weight" in parts and ("bias" in parts or linear.bias is None):
                quantized = quantized_linear(parts["weight"], parts.get("bias"), fmt, precision)
                replace_module(model, module_name, quantized)
                del pending[module_name], parts
                release_freed_memory()
        else:
            set_parameter(model, target, tensor.to(precision.device, precision.dtype))
    if tied:
        model.lm_head.weight = model.llm.embed_tokens.weight
    return report


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc only; elsewhere nothing to do).

    Quantizing a layer makes temporaries several times its fp32 size (bitsandbytes' CPU kernel computes
    in fp32); glibc keeps the freed blocks between the small packed weights it allocated meanwhile,
    so without this a load's resident memory drifts above its weights layer after layer.
    """
    trim = getattr(LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def load_module(module: nn.Module, tensors: dict[str, torch.Tensor], precision: Precision, what: str) -> None:
    for name, param in module.named_parameters():
        tensor = tensors.get(name)
        if tensor is None:
            raise OmnivoxError(f"{what}: missing tensor {name}; re-download the model.")
        if tuple(tensor.shape) != tuple(param.shape):
            raise OmnivoxError(
                f"{what}: tensor {name} has shape {list(tensor.shape)}, expected {list(param.shape)}; "
                "re-download the model."
            )
        set_parameter(module, name, tensor.to(precision.device, precision.dtype))


def move_buffers(model: nn.Module, device: torch.device) -> None:
    """Put the rotary tables (built on the CPU with the module tree) beside the weights: left on the CPU,
    every rotary call would copy them to the GPU and wait for that copy, once per layer stack and step."""
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = buffer.to(device)


def set_parameter(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = root.get_submodule(module_name) if module_name else root
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name), leaf, new)


def load_adapters(model: LyraModel, files: CheckpointFiles, precision: Precision, report: LoadReport) -> None:
    """Inject both LoRA adapters into the LLM layers (only there) and fill their matrices."""
    for name in ADAPTERS:
        folder = files.adapters[name]
        settings = checkpoint.adapter_config(folder)
        lora = LoraConfig(r=settings["r"], lora_alpha=settings["lora_alpha"], lora_dropout=0.0,
                          target_modules=LORA_TARGETS, bias="none")
        with warnings.catch_warnings():  # peft warns that a second adapter joins the first: intended
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(lora, model.llm, adapter_name=name)
        weights, unknown = checkpoint.adapter_weights(folder)
        report.unexpected += [f"{folder.name}/{key}" for key in unknown]
        params = dict(model.llm.named_parameters())
        for key, tensor in weights.items():
            target = f"{key}.{name}.weight"
            if target not in params:
                report.unexpected.append(f"{folder.name}/{key}")
                continue
            if tuple(tensor.shape) != tuple(params[target].shape):
                raise OmnivoxError(
                    f"{folder.name}: tensor {key} has shape {list(tensor.shape)}, expected "
                    f"{list(params[target].shape)}; the adapter does not belong to this model."
                )
            params[target].data = tensor.to(precision.device, precision.dtype)
    select_adapter(model, None)


def select_adapter(model: LyraModel, name: str | None) -> None:
    """Activate one LoRA adapter on every LLM layer, or none (a turn without speech)."""
    for module in model.llm.modules():
        if isinstance(module, LoraLayer):
            if name is None:
                module.enable_adapters(False)
            else:
                module.enable_adapters(True)
                module.set_adapter(name)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    try:
        return Qwen2Tokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise OmnivoxError(f"{folder}: the tokenizer files cannot be read ({err}); re-download the model.") from err


# The vocoder (13 M parameters) runs in fp32 in every precision mode: in bf16 its duration predictor
# rounds 8 of 200 durations differently from the reference and the waveform gets a 37.5 dB noise floor
# (fp16: 1 of 200, 55 dB). Its convolutions also run without TF32 (see vocoder.exact_fp32_convolutions).
VOCODER_DTYPE = torch.float32


def load_vocoder_checked(files: CheckpointFiles, precision: Precision) -> UnitVocoder:
    try:
        return load_vocoder(files.vocoder / "g_00500000", files.vocoder / "config.json", precision.device,
                            VOCODER_DTYPE)
    except ValueError as err:
        raise OmnivoxError(str(err)) from err
