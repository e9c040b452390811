"""Quantized weights kept between starts, so that a model's second start at a precision skips quantizing.

The first `nf4` / `int8` load of a model writes the state of every bitsandbytes layer — bitsandbytes' own
serialization, its `state_dict`: packed codes, absmax, quantization maps, the packed quant state — into
one safetensors file under the user data folder (`cache/weights/<model>/<mode>-<device>.safetensors`);
later loads take those layers from it and everything else from the model folder as always.

The file is trusted only when everything that made it is unchanged: its metadata holds the key it was
made for (format, precision, compute dtype, device type, the versions of the libraries that quantized
and serialized it, the size and mtime of config.json, the shard index and every shard, and a SHA-256 of
the index and the config) and a SHA-256 of every tensor (its dtype, shape and bytes), checked as each
tensor is read. A file that does not parse, was made for another key or holds other bytes raises
`DamagedCache`; the loader then loads afresh and writes a new file. Files are written under a temporary
name and renamed into place, so a crash never leaves half a file under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from engine.checkpoint import CheckpointFiles, Layout, tensor_bytes, write_safetensors
from engine.quantize import Precision

FORMAT = 1  # raise when what the file holds changes
LIBRARIES = ("torch", "bitsandbytes", "safetensors", "transformers", "peft")
INDEX = "model.safetensors.index.json"

log = logging.getLogger(__name__)


class DamagedCache(Exception):
    """The cache file cannot be trusted; the message says why."""


def cache_dir(data_dir: Path) -> Path:
    return data_dir / "cache" / "weights"


def model_entry(cache_root: Path, model_folder: Path) -> Path:
    """One model's cached precisions: named after its folder, and the folder's full path hashed in."""
    resolved = model_folder.resolve()
    return cache_root / f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"


def remove(cache_root: Path, model_folder: Path) -> None:
    """Delete every cached precision of a model (with the model itself)."""
    shutil.rmtree(model_entry(cache_root, model_folder), ignore_errors=True)


def library_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in LIBRARIES}


def file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def cache_key(files: CheckpointFiles, precision: Precision) -> str:
    """Everything the cached layers depend on, as one string."""
    sources = [files.config, files.folder / INDEX, *files.shards]
    stats = {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in sources if path.is_file()}
    return json.dumps({
        "format": FORMAT, "mode": precision.mode, "dtype": str(precision.dtype), "device": precision.device.type,
        "libraries": library_versions(), "files": stats,
        "index_sha256": file_sha256(files.folder / INDEX), "config_sha256": file_sha256(files.config),
    }, sort_keys=True)


def tensor_digest(tensor: torch.Tensor) -> str:
    digest = hashlib.sha256(f"{tensor.dtype} {list(tensor.shape)}".encode())
    digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def is_quantized_layer(module: nn.Module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt)


class CachedLayers:
    """An open cache file whose key matched: each layer's state, every tensor checked as it is read."""

    def __init__(self, path: Path, handle, layers: dict[str, dict[str, str]]) -> None:  # noqa: ANN001 - safetensors'
        self.path = path
        self.handle = handle
        self.layers = layers  # layer name → state key → digest

    def state(self, layer: str) -> dict[str, torch.Tensor]:
        digests = self.layers.get(layer)
        if digests is None:
            raise DamagedCache(f"{self.path}: no entry for {layer}")
        state = {}
        for key, digest in digests.items():
            try:  # copied out of the file's mapping: the bytes checked are the bytes used, whatever the file does next
                tensor = self.handle.get_tensor(f"{layer}.{key}").clone()
            except (SafetensorError, OSError, RuntimeError) as err:
                raise DamagedCache(f"{self.path}: {layer}.{key} unreadable ({err})") from err
            if tensor_digest(tensor) != digest:
                raise DamagedCache(f"{self.path}: {layer}.{key} does not hold the bytes it was written with")
            state[key] = tensor
        return state


class WeightCache:
    """The cache file of one model folder at one precision."""

    def __init__(self, cache_root: Path, files: CheckpointFiles, precision: Precision) -> None:
        self.path = model_entry(cache_root, files.folder) / f"{precision.mode}-{precision.device.type}.safetensors"
        self.key = cache_key(files, precision)

    def open(self) -> CachedLayers | None:
        """The cached layers; None when there is no file; DamagedCache when there is one that cannot be trusted."""
        if not self.path.is_file():
            return None
        try:
            handle = safe_open(str(self.path), framework="pt", device="cpu")
            metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise DamagedCache(f"{self.path}: unreadable ({err})") from err
        if metadata.get("key") != self.key:
            raise DamagedCache(f"{self.path}: made from other model files or library versions")
        try:
            layers = json.loads(metadata["layers"])
            names = set(handle.keys())
        except (KeyError, ValueError) as err:
            raise DamagedCache(f"{self.path}: unreadable layer list ({err})") from err
        listed = {f"{layer}.{key}" for layer, digests in layers.items() for key in digests}
        if listed != names:
            raise DamagedCache(f"{self.path}: its tensors are not the ones its layer list names")
        return CachedLayers(self.path, handle, layers)

    def write(self, model: nn.Module) -> None:
        """Keep the state of every bitsandbytes layer of `model` (before any forward pass: on the CPU bitsandbytes
        repacks weights at the first one). A failure to write is logged, not raised: the cache only saves time."""
        states = {name: module.state_dict() for name, module in model.named_modules() if is_quantized_layer(module)}
        layout: Layout = {f"{name}.{key}": (tensor.dtype, tuple(tensor.shape))
                          for name, state in states.items() for key, tensor in state.items()}
        layers = {name: {key: tensor_digest(tensor) for key, tensor in state.items()} for name, state in states.items()}
        tensors = ((f"{name}.{key}", tensor) for name, state in states.items() for key, tensor in state.items())
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_safetensors(temporary, layout, tensors, metadata={"key": self.key, "layers": json.dumps(layers)})
            with temporary.open("rb") as written:
                os.fsync(written.fileno())
            os.replace(temporary, self.path)
        except OSError as err:
            log.warning("could not keep the quantized weights in %s (%s); the next start quantizes again",
                        self.path, err)
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
