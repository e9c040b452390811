import bitsandbytes as bnb
import pytest
import torch

from engine.errors import OmnivoxError
from engine.prompt import chat_text, mrope_positions, split_prompt
from engine.quantize import Precision, count_quantized, is_quantized_linear, weight_bytes


def first_logits(lyra, text: str) -> torch.Tensor:
    """Logits for the next token after a text-only prompt, through the engine's own layer loop."""
    from transformers.cache_utils import DynamicCache

    from engine.loading import select_adapter

    model = lyra.model
    select_adapter(model, None)  # a spoken turn elsewhere may have left an adapter active
    pieces = split_prompt(lyra.tokenizer, chat_text(text, first_turn=True))
    ids = torch.tensor([i for piece in pieces for i in piece.token_ids])
    positions, _ = mrope_positions(pieces, 0)
    with torch.inference_mode():
        hidden = model.embed_tokens(ids)[None].to(model.dtype)
        rotary = model.rotary(hidden, positions)
        cache = DynamicCache()
        for index in range(len(model.llm.layers)):
            hidden = model.run_layer(index, hidden, rotary, cache)
        return model.logits(model.final_norm(hidden[:, -1]))[0]


def test_nf4_puts_every_block_linear_in_bitsandbytes_4bit(lyra_nf4) -> None:
    model = lyra_nf4.model
    q_proj = model.llm.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)  # under the LoRA wrapper
    assert q_proj.base_layer.weight.quant_type == "nf4"
    assert isinstance(model.vision_tower.blocks[0].attn.qkv, bnb.nn.Linear4bit)
    assert isinstance(model.speech_tower.layers[0].fc1, bnb.nn.Linear4bit)
    assert isinstance(model.speech_generator.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
    # 4 LLM layers × 7 + 2 ViT blocks × 4 + 2 Whisper layers × 6 + 2 generator layers × 7
    assert count_quantized(model) == {"linear4bit_modules": 62, "linear8bit_modules": 1}
    assert isinstance(model.lm_head, bnb.nn.Linear8bitLt)  # LLM.int8 keeps the logits close
    # embeddings, projectors and the vocoder stay unquantized
    assert type(model.llm.embed_tokens) is torch.nn.Embedding
    assert type(model.speech_projectors["speech"].linear1) is torch.nn.Linear


def test_nf4_logits_stay_close_to_fp32(lyra_fp32, lyra_nf4) -> None:
    reference = first_logits(lyra_fp32, "Describe the picture, please.")
    quantized = first_logits(lyra_nf4, "Describe the picture, please.")
    relative_error = (quantized - reference).norm() / reference.norm()
    assert relative_error < 0.2
    assert torch.nn.functional.cosine_similarity(quantized, reference, dim=0) > 0.98


def test_nf4_weights_take_much_less_memory(lyra_fp32, lyra_nf4) -> None:
    fp32 = sum(p.numel() * 4 for n, p in lyra_fp32.model.named_parameters()
               if "layers." in n and "lora" not in n and n.endswith("proj.weight"))
    saved = weight_bytes(lyra_fp32.model) - weight_bytes(lyra_nf4.model)
    assert saved > 0.7 * fp32  # block matrices shrink ~7× from fp32


def test_only_block_matrices_with_whole_nf4_blocks_are_quantized() -> None:
    assert is_quantized_linear("llm.layers.3.mlp.down_proj", 128)
    assert is_quantized_linear("vision_tower.blocks.0.attn.qkv", 64)
    assert not is_quantized_linear("lm_head", 64)
    assert not is_quantized_linear("speech_generator.input_proj", 64)
    assert not is_quantized_linear("llm.layers.3.mlp.down_proj", 96)


def test_precision_choices_and_errors() -> None:
    assert Precision.parse(None, "cpu").mode == "fp32"
    assert Precision.parse("nf4", "cpu").dtype == torch.float32
    assert Precision.parse("bf16", "cpu").dtype == torch.bfloat16
    with pytest.raises(OmnivoxError, match="unknown precision"):
        Precision.parse("int3", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(OmnivoxError, match="no CUDA GPU"):
            Precision.parse("nf4", "cuda")


@pytest.mark.parametrize("mode", ["nf4", "fp32"])
def test_meta_device_estimate_matches_a_real_load(test_model, mode: str) -> None:
    """benchmarks/memory.py prices the real architectures with this computation.

    A fresh load: on the CPU bitsandbytes repacks NF4 weights at their first forward pass.
    """
    from engine.loading import load_lyra
    from engine.memory import build_on_meta, weight_bytes_by_part
    from engine.testing import SIZES

    lyra = load_lyra(test_model, Precision.parse(mode, "cpu"))
    estimate = weight_bytes_by_part(build_on_meta(lyra.config, SIZES["tiny"]), mode, half_bytes=4)
    estimate["vocoder"] = sum(p.numel() * 4 for p in lyra.vocoder.parameters())
    lora = sum(p.numel() * p.element_size() for n, p in lyra.model.named_parameters() if "lora_" in n)
    measured = weight_bytes(lyra.model) - lora + estimate["vocoder"]
    assert sum(estimate.values()) == pytest.approx(measured, rel=0.01)


class FakeGpu:
    """torch.cuda's capability and bf16 queries as a GPU of one generation answers them."""

    def __init__(self, capability: tuple[int, int]) -> None:
        self.capability = capability

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: self.capability)
        # Like torch: with emulation counted every CUDA GPU "supports" bf16; natively only sm 8.0 and later.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: including_emulation or self.capability >= (8, 0))


@pytest.mark.parametrize(("capability", "half"), [
    ((6, 1), torch.float16), ((7, 0), torch.float16), ((7, 5), torch.float16),  # Pascal, Volta, Turing
    ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16), ((12, 0), torch.bfloat16),
])
@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_quantized_modes_use_bf16_only_where_the_gpu_has_it_natively(
        monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], half: torch.dtype, mode: str) -> None:
    FakeGpu(capability).install(monkeypatch)
    assert Precision.parse(mode, "cuda").dtype == half


def test_bf16_on_a_gpu_without_it_is_refused_with_the_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeGpu((7, 5)).install(monkeypatch)
    with pytest.raises(OmnivoxError, match=r"compute capability 7\.5\) has no native bf16; choose fp16"):
        Precision.parse("bf16", "cuda")
    assert Precision.parse("fp16", "cuda").dtype == torch.float16
    FakeGpu((8, 9)).install(monkeypatch)
    assert Precision.parse("bf16", "cuda").dtype == torch.bfloat16
