"""Write tests/conformance/data/ by running Lyra's own code (and fairseq's vocoder) on tiny checkpoints.

This script is not part of Omnivox and never runs in the project's venv: it needs Lyra's pins.

    python3.11 -m venv /tmp/lyra-venv
    /tmp/lyra-venv/bin/pip install torch==2.13.0 transformers==4.45.0 tokenizers==0.20.0 peft==0.13.2 \
        accelerate==0.34.0 safetensors numpy pillow scipy
    # the CLI's video path: qwen-vl-utils as of Lyra's commit, and torchvision for its resize
    /tmp/lyra-venv/bin/pip install --no-deps qwen-vl-utils==0.0.8 torchvision==0.28.0
    # Lyra at the pinned commit and fairseq, both outside the repo (PYTHONHASHSEED: peft saves a set):
    git --git-dir=<lyra mirror> archive 166c027ff9cbdc3f85f6e4eca1433f8b2dabc8d1 lyra | tar -x -C /tmp/lyra
    git --git-dir=<fairseq mirror> archive 3d262bb25690e4eb2e7d3c1309b1e9c406ca4b99 fairseq | tar -x -C /tmp/fairseq
    PYTHONHASHSEED=0 /tmp/lyra-venv/bin/python tests/conformance/make_reference.py \
        --lyra /tmp/lyra --fairseq /tmp/fairseq

For each variant (untied embeddings like Lyra-Base, tied like Lyra-Mini) it
1. writes the inputs Lyra's training starts from — a tiny Qwen2-VL LLM, ViT and Whisper (64-wide heads,
   as every Whisper size has) — with weights rounded to values exact in bf16, fp16 and fp32;
2. runs `lyra.train.train.train()` three times with the released scripts' arguments shrunk: the speech
   generator run (the main checkpoint), the speech LoRA run and the long-speech LoRA run. No optimiser
   step is taken (0 epochs): the checkpoints are Lyra's random initialisation, saved by Lyra's code;
   LoRA B matrices are drawn at random instead of zero so the adapters change the answers;
3. lays the runs out as the release does (adapter folders inside the model folder) and answers every
   request of `inputs.CASES` the way Lyra's CLI does (`lyra/serve/cli.py`), in fp32 on the CPU, recording
   prompt ids, M-RoPE positions, rope deltas, tower and projector outputs, every step's logits, the greedy
   ids, the CTC generator's frame argmax and units; then vocodes the units with fairseq's
   `CodeHiFiGANVocoder` on a random vocoder checkpoint.

A video is answered as the CLI answers `--video-file`: qwen-vl-utils' process_vision_info with the CLI's
total_pixels, min_pixels and max_frames (frame sampling and resizing), then the image processor's `videos=`.

Redirections from the CLI, each because the CLI cannot run otherwise on a CPU or would be random:
fp32 instead of its fp16 casts; SDPA instead of flash attention (in the CTC generator each layer's
attention class is swapped to SDPA and the 2-D all-True mask `predict()` passes is dropped: SDPA's
is_causal is flash attention's causal=True); `model.eval()` after loading the adapters (the CLI leaves
the LoRA dropout in training mode). Modules needed only for I/O or training on GPUs (deepspeed,
flash_attn, numba, whisper, torchaudio, timm, fairseq's data and hub modules) are stubbed here, and so
are torchvision's C++ operator registrations (its PyPI build wants CUDA; only its Python resize runs) and
torchvision's video decoder (gone from 0.28): `torchvision.io.read_video` hands qwen-vl-utils the clip's
frames from `inputs.clip_frames()`, as a lossless file would decode. Pickles in the output
(non_lora_trainables.bin, the vocoder) are stored as safetensors; the tests write them back with torch.save.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for tests.conformance.inputs

import transformers  # noqa: E402
import transformers.models.llama.modeling_llama  # noqa: E402,F401 - imported before the stubs below exist
import transformers.models.qwen2.modeling_qwen2 as modeling_qwen2  # noqa: E402
import transformers.models.qwen2_vl.modeling_qwen2_vl  # noqa: E402,F401
import transformers.models.whisper.modeling_whisper  # noqa: E402,F401
import transformers.trainer  # noqa: E402,F401
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.conformance.inputs import (  # noqa: E402
    CASES,
    CLIP_FPS,
    SAMPLE_RATE,
    WHISPER_EVERY,
    Case,
    Turn,
    clip_frames,
    picture,
    speech,
)

LYRA_COMMIT = "166c027ff9cbdc3f85f6e4eca1433f8b2dabc8d1"
FAIRSEQ_COMMIT = "3d262bb25690e4eb2e7d3c1309b1e9c406ca4b99"
VARIANTS = {"Lyra_Base_tiny": False, "Lyra_Mini_tiny": True}  # name → tie_word_embeddings
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
VISION_WIDTH, WHISPER_WIDTH = 32, 64
GENERATOR = "(2,64,4,128)"  # ctc_decoder_config: layers, width, heads, ffn
LORA = {"speech": (8, 2), "long_speech": (16, 32)}  # (r, alpha): the released 64/16 and 128/256, shrunk
TOWER_CASES = ("image_text", "video_text", "speech_text", "long_speech")  # one per tower path and speech adapter
SEED = 3  # chosen so every greedy and CTC frame argmax is > 1e-3 from a tie (see min_margin)
GENERATOR_GAIN = {f"speech_generator.layers.{i}.self_attn.{p}_proj.weight": 4.0 for i in range(2) for p in "qk"}
GENERATOR_GAIN["speech_generator.output_proj.weight"] = 8.0
VOCODER_UNITS = list(range(3, 1000, 37))  # a fixed unit sequence beside the generator's


class _Stub:
    """Stands in for anything of a stubbed module: attributes are stubs, decorators pass through."""

    def __init__(self, *args, **kwargs) -> None:  # also a base "class": subclassing a stub gives a stub
        pass

    def __getattr__(self, name: str) -> _Stub:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub()

    def __call__(self, *args, **kwargs):  # noqa: ANN204
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Stub()


class _StubModule(types.ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        # found by find_spec but without package metadata: transformers and accelerate call it unavailable
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(self, name: str) -> _Stub:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub()


def stub_modules(lyra: Path, fairseq: Path) -> None:
    """Make Lyra's and fairseq's vocoder modules importable without their I/O and GPU dependencies."""
    for name in ("deepspeed", "deepspeed.runtime", "deepspeed.runtime.zero",
                 "deepspeed.runtime.zero.partition_parameters", "numba", "flash_attn", "flash_attn.bert_padding",
                 "whisper", "torchaudio", "torchaudio.transforms", "timm", "timm.models", "timm.models.layers",
                 "soundfile", "torchvision._meta_registrations"):
        sys.modules[name] = _StubModule(name)
    sys.path.insert(0, str(lyra))
    import torchvision.io

    def read_video(path: str, **_kwargs) -> tuple[torch.Tensor, torch.Tensor, dict]:  # TCHW uint8, audio, info
        return torch.from_numpy(clip_frames()).permute(0, 3, 1, 2), torch.zeros(0), {"video_fps": float(CLIP_FPS)}

    torchvision.io.read_video = read_video

    # fairseq: real vocoder files under stub packages, so no package __init__ (and its I/O) runs.
    def package(name: str, path: Path | None) -> types.ModuleType:
        module = _StubModule(name)
        module.__path__ = [str(path)] if path else []
        sys.modules[name] = module
        return module

    package("fairseq", fairseq / "fairseq")
    models = package("fairseq.models", fairseq / "fairseq/models")
    models.BaseFairseqModel = torch.nn.Module
    package("fairseq.models.text_to_speech", fairseq / "fairseq/models/text_to_speech")
    modules = package("fairseq.modules", fairseq / "fairseq/modules")
    for stubbed in ("fairseq.data", "fairseq.data.audio", "fairseq.data.audio.audio_utils",
                    "fairseq.data.audio.speech_to_text_dataset", "fairseq.data.data_utils", "fairseq.utils",
                    "fairseq.models.text_to_speech.hub_interface", "fairseq.models.text_to_speech.tacotron2"):
        sys.modules[stubbed] = _StubModule(stubbed)
    spec = importlib.util.spec_from_file_location("fairseq.modules.fairseq_dropout",
                                                  fairseq / "fairseq/modules/fairseq_dropout.py")
    dropout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dropout)
    modules.FairseqDropout = dropout.FairseqDropout


# ---- 1. the inputs of Lyra's training ---------------------------------------------------------------

def exponent(tensor: torch.Tensor) -> int:
    """Power-of-two scale for `exact`: the largest |x| maps to at most 127, and 2^-k stays an fp16 normal."""
    peak = float(tensor.abs().max())
    return min(14, int(np.floor(np.log2(127.0 / peak)))) if peak > 0 else 14


def exact(tensor: torch.Tensor) -> torch.Tensor:
    """Round to q · 2^-k with |q| ≤ 127: exact in int8 storage, bf16, fp16 and fp32 (as the tensor's dtype)."""
    k = exponent(tensor.float())
    return (torch.round(tensor.float() * 2.0**k).clamp(-127, 127) * 2.0**-k).to(tensor.dtype)


def round_module(module: torch.nn.Module, spread: dict[str, float] | None = None) -> None:
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            scale = next((s for key, s in (spread or {}).items() if key in name), 1.0)
            parameter.copy_(exact(parameter * scale))


def write_zoo(zoo: Path, tied: bool) -> dict[str, str]:
    """model_zoo/ as the training scripts expect it; returns the paths relative to the working folder."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperModel,
    )
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
        Qwen2VLVisionConfig,
    )

    from engine.testing import write_tokenizer  # pure tokenizers + json: the project's tiny BPE

    paths = {"llm": "model_zoo/LLM/Qwen2VL_tiny_LLM", "vision": "model_zoo/vision/Qwen2VL_tiny_ViT",
             "speech": "model_zoo/audio/whisper-tiny-64"}
    llm, vision, whisper = (zoo.parent / paths[k] for k in ("llm", "vision", "speech"))
    for folder in (llm, vision, whisper):
        folder.mkdir(parents=True, exist_ok=True)
    tokens = write_tokenizer(llm, 600)

    torch.manual_seed(SEED)
    vision_config = dict(depth=2, embed_dim=VISION_WIDTH, hidden_size=HIDDEN, num_heads=2, mlp_ratio=4,
                         in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                         initializer_range=0.02)
    config = Qwen2VLConfig(
        vocab_size=tokens, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_window_layers=LAYERS, rms_norm_eps=1e-6,
        rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        tie_word_embeddings=tied, initializer_range=0.08, vision_config=vision_config,
        bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16",
    )
    model = Qwen2VLForConditionalGeneration(config)
    # a wider lm_head spread keeps greedy margins far above fp32 rounding
    round_module(model, {"lm_head": 4.0} if not tied else {"embed_tokens": 2.0})
    del model.visual  # Lyra's LLM folders hold the decoder only; the ViT is its own folder
    model.save_pretrained(llm, safe_serialization=True)

    vit = Qwen2VisionTransformerPretrainedModel(Qwen2VLVisionConfig(**vision_config))
    round_module(vit)
    vit.save_pretrained(vision, safe_serialization=True)
    # transformers reads a ViT folder's config from a whole Qwen2-VL config's vision_config
    (vision / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "vision_config": vision_config}))
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280).save_pretrained(vision)

    whisper_config = WhisperConfig(
        num_mel_bins=128, d_model=WHISPER_WIDTH, encoder_layers=2, encoder_attention_heads=WHISPER_WIDTH // 64,
        encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=1, decoder_ffn_dim=128,
        max_source_positions=1500, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, init_std=0.1,
    )
    speech_model = WhisperModel(whisper_config)
    round_module(speech_model)
    speech_model.save_pretrained(whisper, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(whisper)
    return paths


# ---- 2. Lyra's training entry point ----------------------------------------------------------------

COMMON_ARGS = [
    "--version", "qwen2vl", "--mm_projector_type", "identity", "--mm_speech_projector_type", "simple_mlp",
    "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "qwen2vl",
    "--speech_norm", "False", "--align_norm", "False", "--align_type", "dtw", "--align_temperature", "0.06",
    "--bf16", "True", "--use_cpu", "True", "--num_train_epochs", "0", "--per_device_train_batch_size", "1",
    "--save_strategy", "no", "--learning_rate", "2e-4", "--weight_decay", "0.", "--warmup_ratio", "0.03",
    "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--model_max_length", "16384",
    "--dataloader_num_workers", "0", "--report_to", "none", "--speech_encoder_hidden_size", str(WHISPER_WIDTH),
    "--seed", str(SEED),
]


def lyra_train(work: Path, output: str, paths: dict[str, str], extra: list[str]) -> Path:
    """One `lyra.train.train.train()` run from the working folder, as `deepspeed lyra/train/train.py …`."""
    import lyra.train.train as lyra_train_module
    import peft

    data = work / "data.json"
    data.write_text(json.dumps([{"id": "0", "conversations": [
        {"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi"}]}]))
    argv = ["train.py", "--model_name_or_path", paths["llm"], "--data_path", str(data),
            "--vision_tower", paths["vision"], "--speech_tower", paths["speech"],
            "--image_folder", str(work), "--speech_folder", str(work), "--output_dir", output,
            *COMMON_ARGS, *extra]
    get_peft_model = peft.get_peft_model

    def random_lora(model, config, *args, **kwargs):  # noqa: ANN001,ANN202
        """peft's model with lora_B drawn like lora_A instead of zero, so the adapters change the answers.

        Not via init_lora_weights=False: adapter_config.json would keep it, and at load time transformers'
        load_adapter also wraps Whisper's and the CTC generator's q/k/v/o projections, which must stay zero.
        """
        wrapped = get_peft_model(model, config, *args, **kwargs)
        with torch.no_grad():
            for name, parameter in wrapped.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.kaiming_uniform_(parameter, a=5**0.5)
        return wrapped

    with contextlib.chdir(work), patched(sys, "argv", argv), patched(peft, "get_peft_model", random_lora):
        torch.manual_seed(SEED + len(output))
        lyra_train_module.train(attn_implementation="sdpa")
    return work / output


@contextlib.contextmanager
def patched(owner: object, name: str, value: object):  # noqa: ANN201
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


@contextlib.contextmanager
def recording_calls(owner: object, name: str):  # noqa: ANN201
    """Calls `owner.name` through, keeping (args, result) of each call in the yielded list."""
    original, calls = getattr(owner, name), []

    def recording(*args, **kwargs):  # noqa: ANN202
        result = original(*args, **kwargs)
        calls.append((args, result))
        return result

    with patched(owner, name, recording):
        yield calls


def build_release(work: Path, name: str, paths: dict[str, str]) -> Path:
    """Main checkpoint from the generator run, adapter folders from the LoRA runs, as released."""
    main = lyra_train(work, name, paths, [
        "--generate", "True", "--tune_speech_generator_only", "True", "--ctc_decoder_config", GENERATOR,
        "--freeze_mm_mlp_adapter", "True", "--freeze_mm_speech_mlp_adapter", "True", "--speech_learn", "False",
        "--asr_align", "False", "--weight_lambda", "0.0", "--group_by_modality_length", "True",
    ])
    for adapter, (rank, alpha) in LORA.items():
        run = lyra_train(work, f"{name}_{adapter}_lora_run", paths, [
            "--lora_enable", "True", "--lora_r", str(rank), "--lora_alpha", str(alpha),
            "--freeze_mm_mlp_adapter", "True", "--speech_learn", "True", "--train_modality", "text_image_speech",
            "--asr_align", "True", "--weight_lambda", "0.5", "--group_by_modality_length", "False",
            "--lazy_preprocess", "True",
        ])
        folder = main / f"{adapter}_lora"
        folder.mkdir(exist_ok=True)
        for file in ("adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin", "config.json"):
            shutil.copy(run / file, folder / file)
    return main


def round_saved_weights(folder: Path) -> None:
    """Round what Lyra's training saved to `exact` values, in place and in Lyra's own formats and dtypes.

    The towers and the LLM were written rounded already; this covers what train() drew itself (the CTC
    generator, the speech projectors, the LoRA matrices), so the committed data can hold every tensor in
    8 bits without changing a value. The generator's attention and output are sharpened first (GENERATOR_GAIN):
    with torch's default init every frame of a token gets the same unit, which would test little.
    """
    for path in folder.rglob("*.safetensors"):
        tensors = load_file(path)
        save_file({name: exact(tensor * GENERATOR_GAIN.get(name, 1.0)) for name, tensor in tensors.items()}, path,
                  metadata={"format": "pt"})
    for path in folder.rglob("non_lora_trainables.bin"):
        torch.save({name: exact(tensor) for name, tensor in torch.load(path, weights_only=True).items()}, path)


# ---- 3. Lyra's CLI on every request --------------------------------------------------------------

def load_like_cli(folder: Path):  # noqa: ANN201 - Lyra's classes
    """`lyra/serve/cli.py` main(): the builder, then both adapters; fp32 and SDPA instead of fp16 and flash."""
    from lyra.model.builder import load_pretrained_model
    from lyra.model.language_model.lyra_qwen2vl_speechgenerator import Lyra2SQwen2VLForCausalLM

    load = Lyra2SQwen2VLForCausalLM.from_pretrained.__func__

    def fp32_sdpa(cls, *args, **kwargs):  # noqa: ANN001,ANN202
        return load(cls, *args, **{**kwargs, "torch_dtype": torch.float32, "attn_implementation": "sdpa"})

    with patched(Lyra2SQwen2VLForCausalLM, "from_pretrained", classmethod(fp32_sdpa)):
        tokenizer, model, image_processor, _, speech_processor = load_pretrained_model(
            str(folder), None, folder.name, device="cpu")
    for adapter in LORA:
        model.load_adapter(str(folder / f"{adapter}_lora"), adapter_name=adapter)
    model.to(torch.float32)
    model.eval()  # the CLI never does: its LoRA dropout (p=0.05) stays in training mode
    for layer in model.speech_generator.layers:  # flash_attention_2 is hard-coded there; CUDA only
        layer.self_attn.__class__ = modeling_qwen2.Qwen2SdpaAttention
        layer.register_forward_pre_hook(lambda _module, args, kwargs: (args, {**kwargs, "attention_mask": None}),
                                        with_kwargs=True)
    return tokenizer, model, image_processor, speech_processor


def cli_speech(speech_processor, samples: np.ndarray) -> torch.Tensor:  # noqa: ANN001
    """The CLI's clips: len // 480000 + 1 windows of 30 s, Whisper features, stacked and squeezed."""
    wav, window = torch.from_numpy(samples), SAMPLE_RATE * 30
    clips = [speech_processor(raw_speech=wav[i * window:(i + 1) * window], sampling_rate=SAMPLE_RATE,
                              return_tensors="pt", return_attention_mask=True)["input_features"].squeeze()
             for i in range(wav.shape[0] // window + 1)]
    return torch.stack(clips, dim=0).squeeze()


def cli_video(image_processor) -> dict:  # noqa: ANN001
    """`--video-file` as lyra/serve/cli.py main() reads it: these limits, qwen-vl-utils, the processor's videos=."""
    from qwen_vl_utils import process_vision_info

    total_pixels = 28 * 28 * 2048 * 32
    min_pixels = 28 * 28 * 4
    max_frames = 16
    messages = [{"role": "user", "content": [{"type": "video", "video": "clip.mkv", "total_pixels": total_pixels,
                                              "min_pixels": min_pixels, "max_frames": max_frames}]}]
    _, video_inputs = process_vision_info(messages)
    return image_processor(images=None, videos=video_inputs[0], return_tensors="pt")


def user_message(turn: Turn) -> str:
    """The CLI's user message: `<speech>` (+ newline + typed text), after the vision block when there is one."""
    from lyra.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_SPEECH_TOKEN

    if turn.image and turn.speech and turn.text:  # no Lyra reference: Omnivox's choice (README, Fidelity)
        return f"<|vision_start|>{DEFAULT_IMAGE_TOKEN}<|vision_end|>{DEFAULT_SPEECH_TOKEN}\n{turn.text}"
    if turn.image or turn.video:  # the CLI marks a video with <image> too
        return f"<|vision_start|>{DEFAULT_IMAGE_TOKEN}<|vision_end|>" + (DEFAULT_SPEECH_TOKEN if turn.speech else
                                                                          turn.text or "")
    if turn.speech:
        return DEFAULT_SPEECH_TOKEN + (f"\n{turn.text}" if turn.text else "")
    return turn.text or ""


def prompt_ids(tokenizer, messages: list[str], replies: list[list[int]], image: bool) -> list[int]:  # noqa: ANN001
    """The conversation in Lyra's qwen2vl template, tokenised as the CLI does; earlier replies as generated ids."""
    from lyra.conversation import conv_templates
    from lyra.mm_utils import tokenizer_image_speech_token, tokenizer_speech_token

    tokenize = tokenizer_image_speech_token if image else tokenizer_speech_token

    conversation = conv_templates["qwen2vl"].copy()
    marker = "\x00REPLY\x00"
    for index, message in enumerate(messages):
        conversation.append_message(conversation.roles[0], message)
        conversation.append_message(conversation.roles[1], marker if index < len(replies) else None)
    parts = conversation.get_prompt().split(marker)
    ids: list[int] = []
    for index, part in enumerate(parts):
        ids += tokenize(part, tokenizer)
        if index < len(replies):
            ids += replies[index]
    return ids


class Recorder:
    """Captures what Lyra computes inside generate(): tower and projector outputs, positions, rope deltas."""

    def __init__(self, model) -> None:  # noqa: ANN001
        self.values: dict[str, list] = {"vision": [], "whisper": [], "projector": [], "positions": [], "deltas": []}
        lyra_model = model.get_model()
        keep = self.keep
        self.hooks = [
            lyra_model.get_vision_tower().register_forward_hook(lambda _m, _i, out: keep("vision", out)),
            lyra_model.get_speech_tower().register_forward_hook(lambda _m, _i, out: keep("whisper", out)),
            lyra_model.mm_speech_projector.register_forward_hook(lambda _m, _i, out: keep("projector", out)),
            # the positions the decoder really rotates by, prefill and every decode step
            lyra_model.rotary_emb.register_forward_pre_hook(lambda _m, args: keep("positions", args[1][:, 0])),
        ]
        prepare = model.prepare_inputs_labels_for_text_image_speech_qwen2vl

        def recording_prepare(*args, **kwargs):  # noqa: ANN202
            out = prepare(*args, **kwargs)
            if out[4] is not None:  # a prefill with media: its rope deltas
                keep("deltas", int(out[7][0]))
            return out

        model.prepare_inputs_labels_for_text_image_speech_qwen2vl = recording_prepare
        self.model = model

    def keep(self, name: str, value: object) -> None:
        self.values[name].append(value.clone() if isinstance(value, torch.Tensor) else value)

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        del self.model.prepare_inputs_labels_for_text_image_speech_qwen2vl


def top2_gap(scores: torch.Tensor) -> float:
    top = scores.topk(2, dim=-1).values
    return round(float((top[..., 0] - top[..., 1]).min()), 6)


def run_case(case: Case, folder: Path, loaded, lyra_cli) -> dict:  # noqa: ANN001
    """Answer `case` as Lyra's CLI does; the last turn's values (earlier turns only give their replies)."""
    from lyra.model.multimodal_generator.generation import GenerationWithCTC

    tokenizer, model, image_processor, speech_processor = loaded
    replies: list[list[int]] = []
    for number in range(1, len(case.turns) + 1):
        turns = case.turns[:number]
        last = turns[-1]
        speeches = [cli_speech(speech_processor, speech(*t.speech)) for t in turns if t.speech]
        images = None
        if any(t.image for t in turns):
            batch = image_processor(images=lyra_cli.preprocess_image_qwen2vl(picture(), image_resolution=2880),
                                    return_tensors="pt")
            images = [batch]
        if any(t.video for t in turns):
            images = [cli_video(image_processor)]
        if last.adapter is None:
            model.disable_adapters()
        else:
            model.enable_adapters()
            model.set_adapter([last.adapter])
            projector = torch.load(folder / f"{last.adapter}_lora/non_lora_trainables.bin", map_location="cpu",
                                   weights_only=True)
            model.load_state_dict({k[6:]: v.float() for k, v in projector.items()}, strict=False)
        ids = prompt_ids(tokenizer, [user_message(t) for t in turns], replies, images is not None)
        recorder = Recorder(model)
        with recording_calls(GenerationWithCTC, "generate") as generations, \
                recording_calls(model.speech_generator.output_proj, "forward") as frame_logits, torch.inference_mode():
            sequences, frames = model.generate(
                torch.tensor([ids]), images=images, speeches=speeches or None, do_sample=False,
                max_new_tokens=case.max_new_tokens, bos_token_id=151643, eos_token_id=[151645, 151643],
                pad_token_id=151643, use_cache=True, output_logits=True)
        recorder.close()
        replies.append(sequences[0].tolist())
    units = [int(u) for u in lyra_cli.ctc_postprocess(frames, blank=model.config.unit_vocab_size).split()]
    values = recorder.values
    logits = torch.cat(generations[-1][1].logits, dim=0).float()
    out = {
        "prompt_ids": ids, "greedy_ids": replies[-1], "units": units, "adapter": last.adapter,
        # how far the argmaxes are from a tie: the tolerances must stay well below these
        "min_margin": {"greedy": top2_gap(logits), "frames": top2_gap(frame_logits[-1][1][0].float())},
        "rope_delta": values["deltas"][0] if values["deltas"] else 0,
        "tensors": {
            "positions": values["positions"][0].int(),
            "decode_positions": torch.cat(values["positions"][1:], dim=1).int(),
            "logits": logits,
            "frame_argmax": frames[0],
        },
    }
    if case.name not in TOWER_CASES:  # their tower outputs are those of other cases; the logits still cover them
        return out
    if values["vision"]:
        out["tensors"]["vision"] = values["vision"][0][0].float()
    if values["whisper"]:
        out["tensors"]["whisper"] = values["whisper"][0][..., ::WHISPER_EVERY, :].float()
        out["tensors"]["projector"] = values["projector"][0].float()
    return out


# ---- fairseq's vocoder --------------------------------------------------------------------------

def fairseq_vocode(folder: Path, unit_lists: list[list[int]]) -> dict[str, torch.Tensor]:
    """fairseq's CodeHiFiGANVocoder on a random checkpoint in the released format, as Lyra's CLI calls it."""
    from fairseq.models.text_to_speech.vocoder import CodeHiFiGANVocoder

    from engine.model.vocoder import write_random_vocoder  # writes g_00500000 + config.json (torch.save)

    write_random_vocoder(folder, small=True, seed=SEED)
    vocoder = CodeHiFiGANVocoder(str(folder / "g_00500000"), json.loads((folder / "config.json").read_text()))
    out = {}
    for index, units in enumerate(unit_lists):
        # the frame counts fairseq expands the unit embeddings by: repeat_interleave's `repeats`
        with recording_calls(torch, "repeat_interleave") as expansions, torch.inference_mode():
            audio = vocoder({"code": torch.tensor(units).view(1, -1)}, True)
        out[f"units_{index}"] = torch.tensor(units)
        out[f"durations_{index}"] = expansions[0][0][1].view(-1)
        out[f"audio_{index}"] = audio.float()
    return out


# ---- the committed data ----------------------------------------------------------------------------

TEXT_FILES = ("config.json", "generation_config.json", "added_tokens.json", "merges.txt", "special_tokens_map.json",
              "tokenizer.json", "tokenizer_config.json", "vocab.json", "adapter_config.json")


def pack_tensors(tensors: dict[str, torch.Tensor], blobs: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Each tensor as int8 q with q · 2^-k = value (lossless after `exact`), stored once however often it occurs."""
    import hashlib

    manifest = {}
    for name, tensor in tensors.items():
        k = exponent(tensor.float())
        q = torch.round(tensor.float() * 2.0**k).to(torch.int8)
        assert torch.equal((q.float() * 2.0**-k).to(tensor.dtype), tensor), f"{name} is not 8-bit exact"
        digest = hashlib.sha1(q.numpy().tobytes() + str(k).encode()).hexdigest()[:16]
        blobs[digest] = q.flatten()
        manifest[name] = {"blob": digest, "k": k, "dtype": str(tensor.dtype).removeprefix("torch."),
                          "shape": list(tensor.shape)}
    return manifest


def pack_checkpoint(folder: Path, blobs: dict[str, torch.Tensor]) -> dict[str, dict]:
    """The release layout as a manifest: text files verbatim, weight files as packed tensors."""
    files: dict[str, dict] = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.name in TEXT_FILES:
            files[name] = {"text": path.read_text(encoding="utf-8")}
        elif path.suffix == ".safetensors":
            files[name] = {"safetensors": pack_tensors(load_file(path), blobs)}
        elif path.name == "non_lora_trainables.bin":
            files[name] = {"torch_save": pack_tensors(torch.load(path, weights_only=True), blobs)}
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lyra", type=Path, required=True, help=f"Lyra's source at {LYRA_COMMIT}")
    parser.add_argument("--fairseq", type=Path, required=True, help=f"fairseq's source at {FAIRSEQ_COMMIT}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lyra-conformance"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=HERE / "data")
    args = parser.parse_args()
    stub_modules(args.lyra.resolve(), args.fairseq.resolve())
    import lyra.serve.cli as lyra_cli

    shutil.rmtree(args.work, ignore_errors=True)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    blobs: dict[str, torch.Tensor] = {}
    speech_units: list[list[int]] = []
    for name, tied in VARIANTS.items():
        work = args.work / name
        paths = write_zoo(work / "model_zoo", tied)
        folder = build_release(work, name, paths)
        round_saved_weights(folder)
        with contextlib.chdir(work):  # Lyra re-reads the towers from the relative model_zoo/ paths
            loaded = load_like_cli(folder)
            results = {case.name: run_case(case, folder, loaded, lyra_cli) for case in CASES}
        # the longest reply of the cases without video, which the vocoder data was made from before those came
        speech_units.append(max((results[case.name]["units"] for case in CASES
                                 if not any(turn.video for turn in case.turns)), key=len))
        tensors = {f"{case}.{key}": value.contiguous() for case, result in results.items()
                   for key, value in result.pop("tensors").items()}
        save_file(tensors, args.out / f"{name}.reference.safetensors")
        (args.out / f"{name}.reference.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / f"{name}.checkpoint.json").write_text(json.dumps(pack_checkpoint(folder, blobs)) + "\n")
    vocoder = args.work / "vocoder"
    save_file(fairseq_vocode(vocoder, [*speech_units, VOCODER_UNITS]), args.out / "vocoder.reference.safetensors")
    save_file(torch.load(vocoder / "g_00500000", weights_only=True)["generator"], args.out / "vocoder.safetensors")
    shutil.copy(vocoder / "config.json", args.out / "vocoder.config.json")
    save_file(blobs, args.out / "blobs.safetensors")
    (args.out / "provenance.json").write_text(json.dumps(
        {"lyra": LYRA_COMMIT, "fairseq": FAIRSEQ_COMMIT, "transformers": transformers.__version__,
         "torch": torch.__version__}, indent=1) + "\n")


if __name__ == "__main__":
    main()
