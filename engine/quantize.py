"""Precision modes and the bitsandbytes layers that implement them.

In `nf4` and `int8` the large matrices of every transformer block — the LLM's attention and MLP,
the ViT blocks, the Whisper layers and the CTC generator's layers — become bitsandbytes
`Linear4bit` / `Linear8bitLt`. In `nf4` an untied lm_head (1.1 GB in Lyra-Base) becomes
LLM.int8 (outlier columns stay in fp16, so the logits barely move); that is what brings Base
under 6.5 GB. Everything else stays in half precision on CUDA: the embedding table (a lookup,
no matmul), norms, convolutions, the ViT patch merger and the speech projectors (small, and their
errors compound through the whole sequence). Half is bf16 only where the GPU computes it natively
(compute capability 8.0+), else fp16. The vocoder runs in fp32 in every mode (engine/loading.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import OmnivoxError

PRECISIONS = ("nf4", "int8", "bf16", "fp16", "fp32")

# Linear layers that live inside repeated transformer blocks, by their engine module name.
QUANTIZED_LINEAR = re.compile(
    r"^(llm\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    r"|vision_tower\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])"
    r"|speech_tower\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc[12])"
    r"|speech_generator\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj))$"
)


@dataclass(frozen=True)
class Precision:
    mode: str
    device: torch.device

    @classmethod
    def parse(cls, mode: str | None, device: str | None = None) -> Precision:
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if target.type == "cuda" and not torch.cuda.is_available():
            raise OmnivoxError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
        chosen = mode or ("nf4" if target.type == "cuda" else "fp32")
        if chosen not in PRECISIONS:
            raise OmnivoxError(f"unknown precision {chosen!r}; choose one of {', '.join(PRECISIONS)}.")
        if chosen == "bf16" and target.type == "cuda" and not native_bf16(target):
            major, minor = torch.cuda.get_device_capability(target)
            raise OmnivoxError(f"this GPU (compute capability {major}.{minor}) has no native bf16; "
                               "choose fp16, nf4 or int8.")
        return cls(chosen, target)

    @property
    def quantized(self) -> bool:
        return self.mode in ("nf4", "int8")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of every tensor that is not quantized."""
        if self.mode == "fp32":
            return torch.float32
        if self.mode == "fp16":
            return torch.float16
        if self.mode == "bf16":
            return torch.bfloat16
        # Quantized modes: half precision on the GPU; on the CPU half-precision matmuls are slow
        # and memory is not the constraint, so the unquantized rest runs in fp32 there.
        if self.device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if native_bf16(self.device) else torch.float16


def native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bf16 itself (Ampere, compute capability 8.0, and later).

    `torch.cuda.is_bf16_supported()` also counts emulation, which Pascal and Turing offer: every op
    slower, and SDPA without a fused kernel for bf16 there falls back to its math kernel (fp32 scores).
    """
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.cuda.is_bf16_supported(including_emulation=False)


NF4_BLOCK = 64  # bitsandbytes quantizes rows in blocks of 64 inputs


def is_quantized_linear(name: str, in_features: int) -> bool:
    """True for block matrices whose input width bitsandbytes can split into whole blocks."""
    return QUANTIZED_LINEAR.match(name) is not None and in_features % NF4_BLOCK == 0


def storage_format(name: str, in_features: int, mode: str) -> str | None:
    """"nf4" or "int8" for a Linear the loader should quantize in this precision mode, else None."""
    if mode in ("nf4", "int8") and is_quantized_linear(name, in_features):
        return mode
    if mode == "nf4" and name == "lm_head":
        return "int8"
    return None


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, fmt: str, precision: Precision) -> nn.Module:
    """A bitsandbytes layer holding `weight`, quantized on its way to the target device."""
    import bitsandbytes as bnb  # imported late: it probes the GPU at import time

    out_features, in_features = weight.shape
    if fmt == "nf4":
        layer = bnb.nn.Linear4bit(
            in_features, out_features, bias=bias is not None, compute_dtype=precision.dtype,
            compress_statistics=True, quant_type="nf4", device="meta",
        )
        layer.weight = bnb.nn.Params4bit(
            weight.to(precision.dtype), requires_grad=False, quant_type="nf4", compress_statistics=True
        )
    else:
        layer = bnb.nn.Linear8bitLt(
            in_features, out_features, bias=bias is not None, has_fp16_weights=False, threshold=6.0,
            device="meta",
        )
        layer.weight = bnb.nn.Int8Params(weight.to(precision.dtype), requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(precision.dtype), requires_grad=False)
    return layer.to(precision.device)


def prequantized_linear(state: dict[str, torch.Tensor], fmt: str, precision: Precision, in_features: int,
                        out_features: int) -> nn.Module:
    """A bitsandbytes layer rebuilt from its own `state_dict` (a cached one), exactly as it was quantized."""
    import bitsandbytes as bnb

    weight, bias = state["weight"], state.get("bias")
    if fmt == "nf4":
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias is not None, compute_dtype=precision.dtype,
                                  compress_statistics=True, quant_type="nf4", device="meta")
        stats = {key.removeprefix("weight."): value for key, value in state.items() if key.startswith("weight.")}
        layer.weight = bnb.nn.Params4bit.from_prequantized(weight, stats, device=precision.device, module=layer)
    else:
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias is not None, has_fp16_weights=False,
                                    threshold=6.0, device="meta")
        codes = weight.to(precision.device)
        layer.weight = bnb.nn.Int8Params(codes, requires_grad=False, has_fp16_weights=False, CB=codes,
                                         SCB=state["SCB"].to(precision.device))
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(precision.device), requires_grad=False)
    return layer


def count_quantized(model: nn.Module) -> dict[str, int]:
    """How many bitsandbytes layers of each kind the model holds."""
    import bitsandbytes as bnb

    return {
        "linear4bit_modules": sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()),
        "linear8bit_modules": sum(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules()),
    }


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by parameters, quantization statistics included."""
    import bitsandbytes as bnb

    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():  # the bitsandbytes layers themselves, not wrappers exposing their weight
        if isinstance(module, bnb.nn.Linear4bit) and module.weight.quant_state is not None:
            total += quant_state_bytes(module.weight.quant_state)
        elif isinstance(module, bnb.nn.Linear8bitLt) and getattr(module.weight, "SCB", None) is not None:
            total += module.weight.SCB.numel() * module.weight.SCB.element_size()
    return total


def quant_state_bytes(state: object) -> int:
    total = 0
    for name in ("absmax", "code", "offset"):
        tensor = getattr(state, name, None)
        if isinstance(tensor, torch.Tensor):
            total += tensor.numel() * tensor.element_size()
    nested = getattr(state, "state2", None)
    return total + (quant_state_bytes(nested) if nested is not None else 0)
