"""The released Lyra models: where they live on the hub and the shape of their architecture; the unit
vocoder: where it is fetched from and what each of its files must be."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import LyraConfig
from engine.testing import ModelSize, lyra_config

# Whisper large-v3 (and its turbo variant's encoder): 128 mels, width 1280, 32 layers, FFN 5120.
WHISPER_LARGE_V3 = {"whisper_width": 1280, "whisper_layers": 32, "whisper_ffn": 5120, "projector_hidden": 2048}
# Qwen2-VL ViT (675 M parameters) and Lyra's CTC generator "(2,4096,32,11008)".
QWEN2VL_VIT = {"vision_width": 1280, "vision_depth": 32, "vision_heads": 16}
CTC_GENERATOR = {"generator_width": 4096, "generator_heads": 32, "generator_ffn": 11008}
LORA_RANKS = {"lora_rank": 64, "long_lora_rank": 128}


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch and what it must be. None where the value is not known: such a file is never installed."""

    name: str
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class VocoderSource:
    """Where the unit vocoder comes from (it is not on the hub) and its files (`models --vocoder-source` reads one)."""

    url: str
    files: tuple[RemoteFile, ...]


# fairseq's unit HiFi-GAN (mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj, ~54 MB). Its exact sizes and
# SHA-256 digests were not available where this catalogue was written (no network): they are left
# unknown rather than guessed, so the model manager refuses to install the vocoder until they are filled
# in here — or given with `models --vocoder-source FILE` — instead of trusting whatever bytes arrive.
VOCODER = VocoderSource(
    url="https://dl.fbaipublicfiles.com/fairseq/speech_to_speech/vocoder/code_hifigan/"
        "mhubert_vp_en_es_fr_it3_400k_layer11_km1000_lj",
    files=(RemoteFile("g_00500000", size=None, sha256=None), RemoteFile("config.json", size=None, sha256=None)),
)


@dataclass(frozen=True)
class CatalogModel:
    name: str
    repo: str
    parameters: str
    size: ModelSize
    vocab_size: int
    tie_word_embeddings: bool
    download_bytes: int

    def config(self) -> LyraConfig:
        return LyraConfig.from_dict(lyra_config(self.size, self.vocab_size, self.tie_word_embeddings),
                                    source=self.name)


CATALOG = {
    model.name: model
    for model in (
        CatalogModel(
            name="Lyra-Mini-3B", repo="zszhong/Lyra_Mini_3B", parameters="3.28 B",
            size=ModelSize(hidden=1536, layers=28, heads=12, kv_heads=2, ffn=8960,
                           **QWEN2VL_VIT, **WHISPER_LARGE_V3, **CTC_GENERATOR, **LORA_RANKS),
            vocab_size=151936, tie_word_embeddings=True, download_bytes=6_600_000_000,
        ),
        CatalogModel(
            name="Lyra-Base-9B", repo="zszhong/Lyra_Base_9B", parameters="9.37 B",
            size=ModelSize(hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944,
                           **QWEN2VL_VIT, **WHISPER_LARGE_V3, **CTC_GENERATOR, **LORA_RANKS),
            vocab_size=152064, tie_word_embeddings=False, download_bytes=18_700_000_000,
        ),
    )
}
