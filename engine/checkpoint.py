"""Finding, checking and loading a Lyra checkpoint in its released layout.

Released names are mapped to engine modules explicitly (`ENGINE_PREFIXES`); anything the map
does not know is reported, anything the engine needs but the files lack is an error naming it.
Weights come through memory-mapped safetensors; the release's two pickles
(`non_lora_trainables.bin`) and the vocoder only through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.errors import OmnivoxError

# released prefix → engine module prefix (None: known, deliberately not loaded)
ENGINE_PREFIXES: tuple[tuple[str, str | None], ...] = (
    ("model.vision_tower.vision_tower.", "vision_tower."),
    ("model.speech_tower.speech_tower.", "speech_tower."),
    # The base projector is superseded by the one each speech adapter ships.
    ("model.mm_speech_projector.", None),
    ("model.embed_tokens.", "llm.embed_tokens."),
    ("model.layers.", "llm.layers."),
    ("model.norm.", "llm.norm."),
    ("lm_head.", "lm_head."),
    ("speech_generator.", "speech_generator."),
)
PROJECTOR_PREFIX = "model.mm_speech_projector."
LORA_KEY = re.compile(r"^base_model\.model\.model\.(layers\.\d+\..+\.lora_[AB])\.weight$")
ADAPTER_FOLDERS = {"speech": "speech_lora", "long_speech": "long_speech_lora"}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
VOCODER_FILES = ("g_00500000", "config.json")


@dataclass(frozen=True)
class TensorInfo:
    shard: Path
    name: str
    shape: tuple[int, ...]


@dataclass
class CheckpointFiles:
    folder: Path
    shards: list[Path]
    adapters: dict[str, Path]
    vocoder: Path

    @property
    def config(self) -> Path:
        return self.folder / "config.json"


@dataclass
class LoadReport:
    """What loading found beyond the expected: shown by `ask --json` and the model manager."""

    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # quantized layers: "loaded" from the weight cache, "written" to it, "rebuilt" (a damaged file); None: no cache
    weight_cache: str | None = None


def locate(folder: Path, vocoder: Path | None = None) -> CheckpointFiles:
    """Check that every file of the released layout is present, naming the first that is not."""
    if not folder.is_dir():
        raise OmnivoxError(f"{folder}: no such model folder; download a model or pass --model DIR.")
    if not (folder / "config.json").is_file():
        raise OmnivoxError(f"{folder}: missing config.json; is this a Lyra model folder?")
    for name in TOKENIZER_FILES:
        if not (folder / name).is_file():
            raise OmnivoxError(f"{folder}: missing tokenizer file {name}; re-download the model.")
    adapters = {}
    for adapter, sub in ADAPTER_FOLDERS.items():
        for name in ("adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin"):
            if not (folder / sub / name).is_file():
                raise OmnivoxError(f"{folder}: missing adapter file {sub}/{name}; re-download the model.")
        adapters[adapter] = folder / sub
    vocoder = vocoder or folder / "vocoder"
    for name in VOCODER_FILES:
        if not (vocoder / name).is_file():
            raise OmnivoxError(
                f"{vocoder}: missing vocoder file {name}; download the unit vocoder into {vocoder} "
                "or pass --vocoder DIR."
            )
    return CheckpointFiles(folder, weight_shards(folder), adapters, vocoder)


def weight_shards(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise OmnivoxError(f"{index}: unreadable shard index ({err}); re-download the model.") from err
        shards = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            raise OmnivoxError(f"{folder}: no *.safetensors weight files; re-download the model.")
    for shard in shards:
        if not shard.is_file():
            raise OmnivoxError(f"{folder}: missing weight shard {shard.name}; re-download the model.")
    return shards


def read_index(files: CheckpointFiles) -> dict[str, TensorInfo]:
    """Every tensor's name and shape from the shard headers, without reading data."""
    tensors: dict[str, TensorInfo] = {}
    for shard in files.shards:
        with open_safetensors(shard) as handle:
            for name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                shape = tuple(handle.get_slice(name).get_shape())
                tensors[name] = TensorInfo(shard, name, shape)
    return tensors


def open_safetensors(path: Path):  # noqa: ANN201 - safetensors' handle type is private
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise OmnivoxError(f"{path}: corrupt or truncated safetensors file ({err}); re-download it.") from err


def engine_name(released: str) -> str | None:
    """Engine parameter name for a released tensor name; '' for known-but-ignored; None if unknown."""
    for prefix, target in ENGINE_PREFIXES:
        if released.startswith(prefix):
            return "" if target is None else target + released[len(prefix):]
    return None


def iter_tensors(files: CheckpointFiles, names: list[str], index: dict[str, TensorInfo]
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (released name, tensor) shard by shard, one tensor in memory at a time."""
    by_shard: dict[Path, list[str]] = {}
    for name in names:
        by_shard.setdefault(index[name].shard, []).append(name)
    for shard, shard_names in by_shard.items():
        with open_safetensors(shard) as handle:
            for name in shard_names:
                try:
                    tensor = handle.get_tensor(name)
                except (SafetensorError, OSError, RuntimeError) as err:
                    raise OmnivoxError(f"{shard}: cannot read tensor {name} ({err}); re-download it.") from err
                yield name, tensor


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
Layout = dict[str, tuple[torch.dtype, tuple[int, ...]]]  # tensor name → dtype and shape, in file order


def write_safetensors(path: Path, layout: Layout, tensors: Iterable[tuple[str, torch.Tensor]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time: the header comes from `layout`, so the tensors are
    never all in memory (safetensors' own `save_file` serializes every tensor to bytes first)."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in layout.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    with path.open("wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        for (name, tensor), (expected, (dtype, shape)) in zip(tensors, layout.items(), strict=True):
            if name != expected or tensor.dtype != dtype or tuple(tensor.shape) != shape:
                raise ValueError(f"{path}: got {name} {tensor.dtype} {list(tensor.shape)} where the header has "
                                 f"{expected} {dtype} {list(shape)}")
            out.write(tensor_bytes(tensor))


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes as stored on the CPU, without a copy when it is there already."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def load_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A release pickle, accepted only if it holds nothing but tensors."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise OmnivoxError(
            f"{path}: refused, the file holds objects other than plain tensors; re-download it."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise OmnivoxError(f"{path}: corrupt or truncated file ({err}); re-download it.") from err
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise OmnivoxError(f"{path}: expected a dictionary of named tensors; re-download it.")
    return data


def adapter_projector(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter's own speech projector, keys relative to the projector module."""
    tensors = load_pickled_tensors(folder / "non_lora_trainables.bin")
    projector = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("model.")  # the release saves them under the PEFT wrapper
        if name.startswith(PROJECTOR_PREFIX):
            projector[name[len(PROJECTOR_PREFIX):]] = tensor
    for needed in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"):
        if needed not in projector:
            raise OmnivoxError(
                f"{folder / 'non_lora_trainables.bin'}: missing {PROJECTOR_PREFIX}{needed}; re-download it."
            )
    return projector


def adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise OmnivoxError(f"{path}: unreadable LoRA config ({err}); re-download the model.") from err
    return {"r": rank, "lora_alpha": alpha}


def adapter_weights(folder: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """LoRA A/B matrices keyed `layers.N.<module>.lora_A` relative to the LLM, plus unknown keys."""
    path = folder / "adapter_model.safetensors"
    weights, unknown = {}, []
    with open_safetensors(path) as handle:
        for name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            match = LORA_KEY.match(name)
            if match:
                weights[match.group(1)] = handle.get_tensor(name)
            else:
                unknown.append(name)
    if not weights:
        raise OmnivoxError(f"{path}: no LoRA weights for the LLM layers; re-download the model.")
    return weights, unknown
