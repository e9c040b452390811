"""A conversation with a loaded Lyra model: one KV cache across turns, streamed replies.

`Session.respond` runs a turn: encode media → build the ChatML prompt → prefill → greedy decode,
yielding text deltas and audio chunks as they are ready and a `TurnDone` with timings at the end.
The cache keeps every earlier turn, so a follow-up question can refer to the first.
`Session.transcribe` asks the model what was said in a clip, beside the conversation, not in it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from PIL import Image

from engine import extraction
from engine.errors import OmnivoxError
from engine.events import AudioChunk, Event, TextDelta, TurnDone
from engine.extraction import ExtractionSettings
from engine.loading import LoadedLyra, select_adapter
from engine.media import (
    DEFAULT_MAX_IMAGE_SIDE,
    Speech,
    Video,
    check_text_budget,
    prepare_image,
    prepare_video,
    speech_features,
)
from engine.model.kv_cache import GrowingCache
from engine.prompt import IMAGE, Piece, chat_text, end_token_ids, mrope_positions, split_prompt, user_content
from engine.speech_out import SpeechOutput

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_EXTRACTION = ExtractionSettings(blocks=4, keep_rate=0.7)  # see README "Token extraction"
TURN_END = "<|im_end|>\n"  # closes the assistant's reply in the cache before the next turn
# Lyra's own ASR evaluation prompt (lyra/eval/model_lyra_text_speech.py), behind the paper's WER:
# `<speech>\n\nRecord the spoken words as text.` — user_content adds the first newline after <speech>.
TRANSCRIBE = "\nRecord the spoken words as text."


@dataclass(frozen=True)
class TurnRequest:
    speech: Speech | None = None
    image: Image.Image | None = None
    text: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    speak: bool = True
    video: Video | None = None  # sampled and sized already (engine.media.read_video, video_from_frames)

    def validate(self) -> None:
        if self.speech is None and self.image is None and self.video is None and not (self.text and self.text.strip()):
            raise OmnivoxError("nothing to answer: give speech, an image, a video or text.")
        if self.image is not None and self.video is not None:
            raise OmnivoxError("a turn shows an image or a video, not both.")
        visual = "an image" if self.image is not None else "a video" if self.video is not None else None
        if visual and self.speech is None and not (self.text and self.text.strip()):
            raise OmnivoxError(f"{visual} needs a question: add speech or text.")
        if self.max_new_tokens < 1:
            raise OmnivoxError(f"max new tokens must be at least 1, got {self.max_new_tokens}.")


@dataclass(frozen=True)
class Prefetched:
    image: bytes  # image_key of the picture
    pieces: list[Piece]  # the prompt up to and including the image
    state: extraction.PrefixState
    rollback: tuple[list[int], int]  # cache lengths and next position before the prefetch


def image_key(image: Image.Image) -> bytes:
    """Identifies a picture by its pixels (the same frame decoded twice gives the same key)."""
    return hashlib.sha1(image.tobytes() + repr((image.size, image.mode)).encode()).digest()


def adapter_for(speech: Speech | None) -> str | None:
    """No speech → base model; one 30 s clip → `speech`; longer → `long_speech`."""
    if speech is None:
        return None
    return "speech" if speech.clips == 1 else "long_speech"


def active_adapter(model: torch.nn.Module) -> str | None:
    """The LoRA adapter the LLM runs with now (None: the base model); see loading.select_adapter."""
    layer = next((module for module in model.llm.modules() if isinstance(module, LoraLayer)), None)
    if layer is None or layer.disable_adapters:
        return None
    return layer.active_adapters[0]


class Session:
    def __init__(
        self,
        lyra: LoadedLyra,
        max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
        extraction: ExtractionSettings | None = DEFAULT_EXTRACTION,
    ) -> None:
        if extraction is not None:
            extraction.validate(lyra.config.text.num_layers)
        self.lyra = lyra
        self.max_image_side = max_image_side
        self.extraction = extraction
        self.end_ids = end_token_ids(lyra.tokenizer)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation."""
        self.cache = GrowingCache()
        self.next_position = 0
        self.turns = 0
        self.prefetched: Prefetched | None = None
        self.turn_tokens = 0  # cached + new tokens of the turn running now

    @torch.inference_mode()
    def prefetch(self, image: Image.Image) -> None:
        """While the user is still talking: encode the image and prefill the prompt up to it.

        The next `respond` about the same picture continues from there; any other turn first
        rolls the cache back, so a prefetch never changes an answer, only how soon it comes.
        """
        self.drop_prefetch()
        embeds, grid = self.encode_image(image)
        prefix_text = self.turn_prompt(user_content(True, False, None))
        prefix_text = prefix_text[: prefix_text.index(IMAGE) + len(IMAGE)]
        pieces = split_prompt(self.lyra.tokenizer, prefix_text, grid)
        start = (self.cache.lengths(), self.next_position)
        positions, self.next_position = mrope_positions(pieces, self.next_position)
        media_mask = torch.tensor([piece.is_media for piece in pieces for _ in range(piece.length)])
        model = self.lyra.model
        try:
            state = extraction.prefill_prefix(model, self.embed_pieces(pieces, {"image": embeds})[None].to(model.dtype),
                                              positions, media_mask, self.cache, self.extraction)
        except Exception as err:  # the layers below the failing one hold the prefix: take it out again
            self.cache.truncate(start[0])
            self.cache.release_spare()
            self.next_position = start[1]
            if isinstance(err, torch.OutOfMemoryError):
                raise out_of_memory(self.cached_tokens + len(media_mask)) from err
            raise
        self.prefetched = Prefetched(image_key(image), pieces, state, start)

    def drop_prefetch(self) -> None:
        if self.prefetched is not None:
            lengths, self.next_position = self.prefetched.rollback
            self.cache.truncate(lengths)
            self.prefetched = None

    def take_prefetch(self, image: Image.Image | None, pieces: list[Piece]) -> extraction.PrefixState | None:
        """The prefilled prefix if this turn's prompt starts with it; otherwise roll it back."""
        prefetched, matches = self.prefetched, False
        if prefetched is not None and image is not None:
            count = len(prefetched.pieces)
            matches = pieces[:count] == prefetched.pieces and image_key(image) == prefetched.image
        if not matches:
            self.drop_prefetch()
            return None
        self.prefetched = None
        return prefetched.state  # type: ignore[union-attr]

    def transcribe(self, speech: Speech, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                   cancel: threading.Event | None = None) -> TurnDone:
        """What was said in `speech`, as the reply's text; the conversation is exactly as before."""
        request = TurnRequest(speech=speech, text=TRANSCRIBE, max_new_tokens=max_new_tokens, speak=False)
        with self.aside():
            done, _ = collect(self.respond(request, cancel))
        return done

    @contextmanager
    def aside(self) -> Iterator[None]:
        """A one-off exchange in a fresh context; afterwards the conversation's cache, positions, pending
        prefetch and active adapter are restored (a prefetch is computed with whichever adapter is active)."""
        saved = (self.cache, self.next_position, self.turns, self.prefetched, self.extraction)
        adapter = active_adapter(self.lyra.model)
        self.reset()
        self.extraction = None  # every speech token matters to a transcript, and there is no image to thin out
        try:
            yield
        finally:
            self.cache, self.next_position, self.turns, self.prefetched, self.extraction = saved
            select_adapter(self.lyra.model, adapter)

    def encode_image(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int, int]]:
        prepared = prepare_image(image, self.max_image_side)
        embeds = self.lyra.model.encode_image(prepared.pixel_values, prepared.grid_thw)
        t, h, w = (int(v) for v in prepared.grid_thw[0])
        return embeds, (t, h // 2, w // 2)

    def encode_video(self, video: Video) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One ViT pass over the clip: Qwen2-VL's ViT takes frame pairs through the image path's weights."""
        prepared = prepare_video(video)
        embeds = self.lyra.model.encode_image(prepared.pixel_values, prepared.grid_thw)
        t, h, w = (int(v) for v in prepared.grid_thw[0])
        return embeds, (t, h // 2, w // 2)

    def turn_prompt(self, content: str) -> str:
        return (TURN_END if self.turns else "") + chat_text(content, first_turn=self.turns == 0)

    @property
    def cached_tokens(self) -> int:
        return self.cache.get_seq_length(0) if len(self.cache.layers) else 0

    def respond(self, request: TurnRequest, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Run one turn. When it fails part-way (out of GPU memory at some layer, overflowing numbers),
        the conversation is put back as it was before the turn — positions, turn count, every layer's
        cache — and a prefetch the turn took is dropped, since the failed prompt may have overwritten it."""
        request.validate()
        check_text_budget(request.text, self.lyra.tokenizer, self.lyra.config.max_prompt_tokens)
        before = self.checkpoint()
        try:
            yield from self.run_turn(request, cancel or threading.Event())
        except torch.OutOfMemoryError as err:
            tokens = self.turn_tokens
            self.restore(before)
            raise out_of_memory(tokens) from err
        except Exception:
            self.restore(before)
            raise

    def checkpoint(self) -> tuple[list[int], int, int]:
        """Where the conversation stands without any pending prefetch: what a failed turn returns to."""
        if self.prefetched is not None:
            lengths, position = self.prefetched.rollback
        else:
            lengths, position = self.cache.lengths(), self.next_position
        return lengths, position, self.turns

    def restore(self, saved: tuple[list[int], int, int]) -> None:
        if self.prefetched is not None:
            return  # the turn failed before it took or dropped the prefetch: nothing has changed yet
        lengths, self.next_position, self.turns = saved
        self.cache.truncate(lengths)  # layers below the failing one already hold the new prompt
        self.cache.release_spare()

    @torch.inference_mode()
    def run_turn(self, request: TurnRequest, cancel: threading.Event) -> Iterator[Event]:
        model = self.lyra.model
        self.turn_tokens = self.cached_tokens
        start = time.perf_counter()
        timings: dict[str, float] = {}

        def mark(name: str) -> None:
            timings.setdefault(name, round((time.perf_counter() - start) * 1000, 2))

        adapter = adapter_for(request.speech)
        select_adapter(model, adapter)
        media: dict[str, torch.Tensor] = {}
        image_grid = None
        prefetched = self.prefetched
        if request.image is not None and prefetched is not None and prefetched.image == image_key(request.image):
            image_grid = next(piece.grid for piece in prefetched.pieces if piece.kind == "image")
        elif request.image is not None:
            media["image"], image_grid = self.encode_image(request.image)
        video_grid = None
        if request.video is not None:
            media["video"], video_grid = self.encode_video(request.video)
        if request.speech is not None:
            features = speech_features(request.speech, model.speech_tower.config.num_mel_bins)
            media["speech"] = model.encode_speech(features, adapter)  # type: ignore[arg-type]
        mark("encode")

        visual = request.image is not None or request.video is not None
        content = user_content(visual, request.speech is not None, request.text)
        speech_tokens = media["speech"].shape[0] if "speech" in media else 0
        pieces = split_prompt(self.lyra.tokenizer, self.turn_prompt(content), image_grid, speech_tokens, video_grid)
        image_tokens = sum(piece.length for piece in pieces if piece.kind == "image")
        video_tokens = sum(piece.length for piece in pieces if piece.kind == "video")
        prompt_tokens = sum(piece.length for piece in pieces)
        self.check_length(prompt_tokens + request.max_new_tokens)
        prefix = self.take_prefetch(request.image, pieces)
        if prefix is None and request.image is not None and "image" not in media:
            media["image"], _ = self.encode_image(request.image)  # prefetched, but for another prompt
        rest = pieces[len(prefetched.pieces):] if prefix is not None else pieces  # type: ignore[union-attr]
        embeds = self.embed_pieces(rest, media)
        positions, self.next_position = mrope_positions(rest, self.next_position)
        media_mask = torch.tensor([piece.is_media for piece in rest for _ in range(piece.length)])
        self.turns += 1
        self.turn_tokens = self.cached_tokens + embeds.shape[0]  # for the out-of-memory message

        hidden, kept = self.forward(embeds, positions, media_mask, self.extraction, prefix)
        kv_tokens = extraction.kv_cache_tokens(self.cache)
        mark("prefill")
        speech_out = SpeechOutput(model.speech_generator, self.lyra.vocoder) if request.speak else None
        generated: list[int] = []
        text, audio_samples, cancelled = "", 0, False
        steps, first_audio_step = 0, None  # decode forward passes; how many preceded the first audio

        def audio_out(pcm: np.ndarray) -> AudioChunk:
            nonlocal audio_samples, first_audio_step
            mark("first_audio")
            if first_audio_step is None:
                first_audio_step = steps
            audio_samples += pcm.size
            return AudioChunk(pcm)

        while True:
            logits = model.logits(hidden).reshape(-1)
            token_id = logits.argmax()  # argmax picks a NaN or +inf if there is one
            finite = logits[token_id].isfinite()
            # One copy to the host per token: the token, whether it is finite, and the speech frames.
            frames = speech_out.frames(hidden[0]) if speech_out is not None else token_id.new_zeros(0)
            token, is_finite, *frame_ids = torch.cat([token_id.view(1), finite.view(1).long(), frames]).tolist()
            if not is_finite:
                raise OmnivoxError(
                    f"the model's numbers overflowed in {str(model.dtype).removeprefix('torch.')} at reply token "
                    f"{len(generated) + 1}; choose fp32, or bf16 on a GPU with compute capability 8.0 or later."
                )
            if token in self.end_ids:
                break
            generated.append(token)
            decoded = self.lyra.tokenizer.decode(generated, skip_special_tokens=True)
            if len(decoded) > len(text) and not decoded.endswith("\ufffd"):  # hold back split UTF-8
                mark("first_text")
                yield TextDelta(decoded[len(text):])
                text = decoded
            if speech_out is not None:
                audio = speech_out.push_frames(frame_ids)
                if audio.size:
                    yield audio_out(audio)
            if cancel.is_set():
                cancelled = True
                break
            position = torch.full((3, 1), self.next_position, dtype=torch.long, device=model.device)
            self.next_position += 1
            self.turn_tokens += 1
            steps += 1
            hidden, _ = self.forward(model.embed_tokens(token_id.view(1)), position)
            if len(generated) >= request.max_new_tokens or cancel.is_set():
                cancelled = cancel.is_set()
                break
        if speech_out is not None and not cancelled:
            tail = speech_out.flush()
            if tail.size:
                yield audio_out(tail)
        mark("total")
        yield TurnDone(
            text=text,
            audio_seconds=audio_samples / 16000,
            timings_ms=timings,
            tokens={
                "prompt": prompt_tokens,
                "speech": speech_tokens,
                "image": image_tokens,
                "video": video_tokens,
                "prefetched": prefix is not None,
                "generated": len(generated),
                "units": speech_out.unit_count if speech_out else 0,
                "first_audio_step": first_audio_step,
                "media_in": kept.media_in,
                "media_kept_per_block": kept.media_kept_per_block,
                "kv_cache_tokens": kv_tokens,
            },
            adapter=adapter,
            cancelled=cancelled,
        )

    def embed_pieces(self, pieces: list[Piece], media: dict[str, torch.Tensor]) -> torch.Tensor:
        model = self.lyra.model
        parts = [
            model.embed_tokens(torch.tensor(piece.token_ids)) if not piece.is_media else media[piece.kind]
            for piece in pieces
        ]
        return torch.cat(parts, dim=0)

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        media_mask: torch.Tensor | None = None,
        settings: ExtractionSettings | None = None,
        prefix: extraction.PrefixState | None = None,
    ) -> tuple[torch.Tensor, extraction.ExtractionStats]:
        """Run new positions through every layer; returns the last position's normed hidden (1, 1, H)."""
        model = self.lyra.model
        if media_mask is None:
            media_mask = torch.zeros(embeds.shape[0], dtype=torch.bool)
        hidden, stats = extraction.prefill(model, embeds[None].to(model.dtype), positions, media_mask, self.cache,
                                           settings, prefix)
        return model.final_norm(hidden), stats

    def check_length(self, needed: int) -> None:
        limit = self.lyra.config.max_prompt_tokens
        if self.cached_tokens + needed > limit:
            raise OmnivoxError(
                f"the conversation would reach {self.cached_tokens + needed} tokens, over the model's "
                f"{limit}; start a new conversation or send shorter audio."
            )


def out_of_memory(tokens: int) -> OmnivoxError:
    """The one line a turn or prefetch that ran out of GPU memory ends with, once its blocks are given back."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the failed work's cached blocks back to the driver
    return OmnivoxError(
        f"out of GPU memory at {tokens} tokens in the conversation; send shorter audio or a smaller image, "
        "start a new conversation, or choose a smaller model (the conversation is as before this turn)."
    )


def collect(events: Iterator[Event]) -> tuple[TurnDone, np.ndarray]:
    """Run a turn to the end; returns its TurnDone and the whole reply audio."""
    chunks, done = [], None
    for event in events:
        if isinstance(event, AudioChunk):
            chunks.append(event.pcm)
        elif isinstance(event, TurnDone):
            done = event
    assert done is not None
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return done, audio
