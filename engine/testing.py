"""Random-weight Lyra checkpoints in the exact released layout, for tests and benchmarks.

`write_test_model(folder)` writes what a download of `zszhong/Lyra_Mini_3B` holds — config.json
with every field, sharded safetensors under the released key names, slow Qwen2 tokenizer files
(a real byte-level BPE with the Qwen special tokens), both LoRA adapter folders with their
`non_lora_trainables.bin`, and the unit vocoder — at sizes small enough for a CPU, or at the real
architectures of the catalogue (`mini-real`, `base-real`: full vocabulary, real-size vocoder, small
tokenizer). Tensors are drawn and written one at a time, so even Lyra-Base (~19 GB) is never in memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.checkpoint import Layout, write_safetensors
from engine.model.vocoder import write_random_vocoder

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
TRAINING_TEXT = (
    "You are a helpful assistant. What is in this picture? Describe the image. The cat sits on the "
    "mat next to a red chair. Read the text on the screen, please. How many people are in the room? "
    "The chart shows sales rising from January to June. Hello, how can I help you today? It is "
    "sunny outside and the window is open. Can you hear me? Yes, I can see your screen and your "
    "camera. Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ! ? : ; ' \" ( ) - are common. "
)
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelSize:
    """Every dimension a Lyra checkpoint has; the presets below scale the real ones down."""

    hidden: int = 64
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    vision_width: int = 64  # bitsandbytes' CPU kernels need in-features in multiples of 64
    vision_depth: int = 2
    vision_heads: int = 2
    whisper_width: int = 64
    whisper_layers: int = 2
    whisper_ffn: int = 128
    projector_hidden: int = 128
    generator_width: int = 128
    generator_heads: int = 4
    generator_ffn: int = 256
    lora_rank: int = 4
    long_lora_rank: int = 8
    bpe_vocab: int = 600

    @property
    def mrope_section(self) -> list[int]:
        """Qwen2-VL's [16, 24, 24] split of head_dim / 2, scaled to this head size."""
        half = self.hidden // self.heads // 2
        temporal = half // 4
        spatial = (half - temporal) // 2
        return [temporal, half - temporal - spatial, spatial]


SIZES = {
    "tiny": ModelSize(),
    # issue 3's CPU-realistic shape for the extraction benchmark
    "bench": ModelSize(hidden=512, layers=16, heads=8, kv_heads=2, ffn=1408, generator_width=256,
                       generator_heads=4, generator_ffn=512),
    # Lyra-Mini's LLM : generator width ratio (1536 : 4096) at a CPU-friendly scale
    "mini-proportions": ModelSize(hidden=384, layers=6, heads=6, kv_heads=2, ffn=1024, generator_width=1024,
                                  generator_heads=8, generator_ffn=2752),
}
# The catalogue's architectures at their true shapes (engine/catalog.py), for benchmarks: ~6.6 / ~19 GB.
REAL_SIZES = {"mini-real": "Lyra-Mini-3B", "base-real": "Lyra-Base-9B"}
SIZE_NAMES = (*SIZES, *REAL_SIZES)
SHARD_BYTES = 4_000_000_000  # the release's shards hold a few GB each


def lyra_config(size: ModelSize, vocab_size: int, tie_word_embeddings: bool = False) -> dict:
    """config.json as the release writes it (flat transformers-4.45 Qwen2-VL text config + Lyra)."""
    return {
        "_name_or_path": "Lyra_Mini_3B",
        "architectures": ["Lyra_Qwen2VLForCausalLM_SpeechGenerator"],
        "model_type": "Lyra_Qwen2VL_SpeechGenerator",
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": size.hidden,
        "initializer_range": 0.02,
        "intermediate_size": size.ffn,
        "max_position_embeddings": 32768,
        "max_window_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_hidden_layers": size.layers,
        "num_key_value_heads": size.kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "default", "mrope_section": size.mrope_section},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        "vision_config": {
            "depth": size.vision_depth, "embed_dim": size.vision_width, "mlp_ratio": 4,
            "num_heads": size.vision_heads, "in_chans": 3, "hidden_size": size.hidden, "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2,
        },
        "mm_vision_tower": "model_zoo/vision/Qwen2-VL-2B-Instruct-Vision",
        "mm_speech_tower": "model_zoo/audio/whisper-large-v3-turbo",
        "mm_projector_type": "identity",
        "mm_speech_projector_type": "simple_mlp",
        "mm_hidden_size": size.hidden,
        "mm_speech_hidden_size": size.whisper_width,
        "speech_encoder_ds_rate": 5,
        "speech_norm": False,
        "image_aspect_ratio": "qwen2vl",
        "mm_use_mrope": True,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tune_mm_mlp_adapter": False,
        "compress": False,
        "compress_gap": 7,
        "keep_rate": 1.0,
        "generate": True,
        "tune_speech_generator_only": True,
        "speech_generator_type": "ctc",
        "ctc_decoder_config": f"(2,{size.generator_width},{size.generator_heads},{size.generator_ffn})",
        "ctc_upsample_factor": 25,
        "ctc_loss_weight": 1.0,
        "unit_vocab_size": 1000,
        "tokenizer_model_max_length": 16384,
        "tokenizer_padding_side": "right",
    }


def released_tensor_shapes(size: ModelSize, vocab_size: int, tied: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of the main shards, by its released name (no lm_head when it is the embedding)."""
    h, f = size.hidden, size.ffn
    head_dim = h // size.heads
    kv = size.kv_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, h)}
    for i in range(size.layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        }
    shapes["model.norm.weight"] = (h,)
    if not tied:
        shapes["lm_head.weight"] = (vocab_size, h)

    v, vp = size.vision_width, "model.vision_tower.vision_tower."
    shapes[vp + "patch_embed.proj.weight"] = (v, 3, 2, 14, 14)
    for i in range(size.vision_depth):
        p = f"{vp}blocks.{i}."
        shapes |= {
            p + "norm1.weight": (v,), p + "norm1.bias": (v,), p + "norm2.weight": (v,), p + "norm2.bias": (v,),
            p + "attn.qkv.weight": (3 * v, v), p + "attn.qkv.bias": (3 * v,),
            p + "attn.proj.weight": (v, v), p + "attn.proj.bias": (v,),
            p + "mlp.fc1.weight": (4 * v, v), p + "mlp.fc1.bias": (4 * v,),
            p + "mlp.fc2.weight": (v, 4 * v), p + "mlp.fc2.bias": (v,),
        }
    merged = 4 * v
    shapes |= {vp + "merger.ln_q.weight": (v,), vp + "merger.ln_q.bias": (v,),
               vp + "merger.mlp.0.weight": (merged, merged), vp + "merger.mlp.0.bias": (merged,),
               vp + "merger.mlp.2.weight": (h, merged), vp + "merger.mlp.2.bias": (h,)}

    w, sp = size.whisper_width, "model.speech_tower.speech_tower."
    shapes |= {sp + "conv1.weight": (w, 128, 3), sp + "conv1.bias": (w,), sp + "conv2.weight": (w, w, 3),
               sp + "conv2.bias": (w,), sp + "embed_positions.weight": (1500, w)}
    for i in range(size.whisper_layers):
        p = f"{sp}layers.{i}."
        shapes |= {
            p + "self_attn.k_proj.weight": (w, w),
            p + "self_attn.v_proj.weight": (w, w), p + "self_attn.v_proj.bias": (w,),
            p + "self_attn.q_proj.weight": (w, w), p + "self_attn.q_proj.bias": (w,),
            p + "self_attn.out_proj.weight": (w, w), p + "self_attn.out_proj.bias": (w,),
            p + "self_attn_layer_norm.weight": (w,), p + "self_attn_layer_norm.bias": (w,),
            p + "fc1.weight": (size.whisper_ffn, w), p + "fc1.bias": (size.whisper_ffn,),
            p + "fc2.weight": (w, size.whisper_ffn), p + "fc2.bias": (w,),
            p + "final_layer_norm.weight": (w,), p + "final_layer_norm.bias": (w,),
        }
    shapes |= {sp + "layer_norm.weight": (w,), sp + "layer_norm.bias": (w,)}
    shapes |= projector_shapes(size, "model.mm_speech_projector.")

    g, gp = size.generator_width, "speech_generator."
    shapes |= {gp + "input_proj.weight": (g, h), gp + "input_proj.bias": (g,)}
    for i in range(2):
        p = f"{gp}layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (g, g), p + "self_attn.q_proj.bias": (g,),
            p + "self_attn.k_proj.weight": (g, g), p + "self_attn.k_proj.bias": (g,),
            p + "self_attn.v_proj.weight": (g, g), p + "self_attn.v_proj.bias": (g,),
            p + "self_attn.o_proj.weight": (g, g),
            p + "mlp.gate_proj.weight": (size.generator_ffn, g), p + "mlp.up_proj.weight": (size.generator_ffn, g),
            p + "mlp.down_proj.weight": (g, size.generator_ffn),
            p + "input_layernorm.weight": (g,), p + "post_attention_layernorm.weight": (g,),
        }
    shapes |= {gp + "output_proj.weight": (1001, g), gp + "output_proj.bias": (1001,)}
    return shapes


def projector_shapes(size: ModelSize, prefix: str) -> dict[str, tuple[int, ...]]:
    stacked = size.whisper_width * 5
    hidden = size.projector_hidden
    return {prefix + "linear1.weight": (hidden, stacked), prefix + "linear1.bias": (hidden,),
            prefix + "linear2.weight": (size.hidden, hidden), prefix + "linear2.bias": (size.hidden,)}


def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Norm weights 1, biases small, matrices scaled by fan-in so activations stay O(1)."""
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight")) or "layernorm" in name \
            or "layer_norm.weight" in name:
        return torch.ones(shape)
    if len(shape) == 1:
        return torch.randn(shape, generator=generator) * 0.02
    fan_in = math.prod(shape[1:])
    scale = 1.0 if "embed" in name else 1.0 / math.sqrt(fan_in)
    return torch.randn(shape, generator=generator) * scale


def write_tokenizer(folder: Path, vocab_size: int) -> int:
    """Train a byte-level BPE like Qwen2's and write the slow-tokenizer files; returns its length."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator([TRAINING_TEXT] * 4, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    added = {token: len(vocab) + i for i, token in enumerate(QWEN_SPECIAL_TOKENS)}
    (folder / "added_tokens.json").write_text(json.dumps(added, indent=2), encoding="utf-8")
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for t, i in added.items()}
    tokenizer_config = {
        "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "chat_template": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 16384, "pad_token": "<|endoftext|>", "padding_side": "right",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    special = {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return len(vocab) + len(QWEN_SPECIAL_TOKENS)


def write_adapter(folder: Path, size: ModelSize, config: dict, rank: int, alpha: float,
                  generator: torch.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "Lyra_Mini_3B", "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "layers_pattern": None,
        "layers_to_transform": None, "lora_alpha": alpha, "lora_dropout": 0.05, "modules_to_save": None,
        "peft_type": "LORA", "r": rank, "rank_pattern": {}, "revision": None,
        "target_modules": list(LORA_MODULES), "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False,
    }, indent=2), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "Lyra_Qwen2VL"}, indent=2),
                                        encoding="utf-8")
    layout: Layout = {}
    for name, shape in released_tensor_shapes(size, config["vocab_size"]).items():
        module = name.removesuffix(".weight").rsplit(".", 1)[-1]
        if name.startswith("model.layers.") and name.endswith(".weight") and module in LORA_MODULES:
            out_features, in_features = shape
            base = "base_model.model." + name.removesuffix(".weight")
            layout[base + ".lora_A.weight"] = (torch.bfloat16, (rank, in_features))
            layout[base + ".lora_B.weight"] = (torch.bfloat16, (out_features, rank))

    def draw() -> Iterator[tuple[str, torch.Tensor]]:
        for name, (_, shape) in layout.items():
            if name.endswith("lora_A.weight"):
                tensor = torch.randn(shape, generator=generator) / math.sqrt(shape[1])
            else:
                tensor = torch.randn(shape, generator=generator) * 0.05
            yield name, tensor.to(torch.bfloat16)

    write_safetensors(folder / "adapter_model.safetensors", layout, draw(), metadata={"format": "pt"})
    projector = {"model." + name: random_tensor(name, shape, generator).to(torch.bfloat16)
                 for name, shape in projector_shapes(size, "model.mm_speech_projector.").items()}
    torch.save(projector, folder / "non_lora_trainables.bin")


def sharpen_generator_attention(tensors: dict[str, torch.Tensor], scale: float = 4.0) -> None:
    """Peakier attention in the CTC generator, so the 25 frames of one token differ.

    With fan-in-scaled random weights every frame of a token attends almost uniformly and comes
    out the same, giving about one unit per token; a trained generator emits several. Scaling the
    query and key projections makes the frames attend differently: about five units per token.
    """
    for name, tensor in tensors.items():
        if name.startswith("speech_generator.layers.") and name.endswith(("q_proj.weight", "k_proj.weight")):
            tensor *= scale


def calibrate_blank_bias(tensors: dict[str, torch.Tensor], size: ModelSize) -> None:
    """Make blank win most CTC frames, as in a trained generator (a few units per token, not 25)."""
    from engine.loading import parameters_on_meta
    from engine.model.speech_generator import CTCSpeechGenerator

    with parameters_on_meta():  # the drawn tensors become its weights: no second copy (1.6 GB at real size)
        generator = CTCSpeechGenerator(size.hidden, layers=2, width=size.generator_width,
                                       heads=size.generator_heads, ffn=size.generator_ffn)
    prefix = "speech_generator."
    generator.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, assign=True)
    with torch.inference_mode():
        logits = generator(torch.randn(8, size.hidden, generator=torch.Generator().manual_seed(1)))
    units = logits[:, :1000]
    # at the median of the per-frame maximum unit logit about half the frames are non-blank
    tensors[prefix + "output_proj.bias"][1000] += units.max(-1).values.quantile(0.5) - logits[:, 1000].mean()


def draw_weights(shapes: dict[str, tuple[int, ...]], size: ModelSize,
                 generator: torch.Generator) -> Iterator[tuple[str, torch.Tensor]]:
    """Random bf16 tensors in `shapes` order, drawn one at a time; the CTC generator's (last in the order)
    are held until all are drawn, since its attention and blank bias are tuned together."""
    held: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        tensor = random_tensor(name, shape, generator)
        if name.startswith("speech_generator."):
            held[name] = tensor
        else:
            yield name, tensor.to(torch.bfloat16)
    sharpen_generator_attention(held)
    calibrate_blank_bias(held, size)
    for name, tensor in held.items():
        yield name, tensor.to(torch.bfloat16)


def shard_layouts(shapes: dict[str, tuple[int, ...]]) -> list[Layout]:
    """bf16 tensors split in order into shards of about equal bytes: two at least, each under ~SHARD_BYTES."""
    sizes = {name: math.prod(shape) * 2 for name, shape in shapes.items()}
    count = max(2, math.ceil(sum(sizes.values()) / SHARD_BYTES))
    target = sum(sizes.values()) / count
    shards: list[Layout] = [{} for _ in range(count)]
    written = 0
    for name, shape in shapes.items():
        shards[min(int(written // target), count - 1)][name] = (torch.bfloat16, shape)
        written += sizes[name]
    return [shard for shard in shards if shard]


def write_test_model(folder: Path, size: str | ModelSize = "tiny", seed: int = 0) -> Path:
    """Write a complete random-weight Lyra checkpoint into `folder` and return it."""
    vocab_size, tied, small_vocoder = None, False, True
    if isinstance(size, ModelSize):
        dims = size
    elif size in REAL_SIZES:
        from engine.catalog import CATALOG  # the catalogue builds on this module

        entry = CATALOG[REAL_SIZES[size]]
        dims, vocab_size, tied, small_vocoder = entry.size, entry.vocab_size, entry.tie_word_embeddings, False
    else:
        dims = SIZES[size]
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tokens = write_tokenizer(folder, dims.bpe_vocab)
    vocab_size = vocab_size or 64 * math.ceil(tokens / 64)  # padded like Qwen's 151936
    config = lyra_config(dims, vocab_size, tied)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    shapes = released_tensor_shapes(dims, vocab_size, tied)
    layouts = shard_layouts(shapes)
    tensors = draw_weights(shapes, dims, generator)
    weight_map = {}
    for number, layout in enumerate(layouts, start=1):
        shard = f"model-{number:05d}-of-{len(layouts):05d}.safetensors"
        write_safetensors(folder / shard, layout, islice(tensors, len(layout)), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(layout, shard)
    total = sum(math.prod(shape) * 2 for shape in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2), encoding="utf-8")

    write_adapter(folder / "speech_lora", dims, config, dims.lora_rank, dims.lora_rank / 4, generator)
    write_adapter(folder / "long_speech_lora", dims, config, dims.long_lora_rank, dims.long_lora_rank * 2,
                  generator)
    write_random_vocoder(folder / "vocoder", small=small_vocoder, seed=seed)
    return folder
