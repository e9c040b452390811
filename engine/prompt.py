"""ChatML prompts with media placeholders, and their 3-row M-RoPE positions.

A user turn is `<|vision_start|><image><|vision_end|>` for an image or a video, `<speech>` for spoken
audio, then any typed text, exactly as Lyra was trained and evaluated (see `user_content`). `<image>` and
`<speech>` are not tokens: they mark where the vision and speech embeddings are spliced in. Lyra marks a
video with `<image>` too (its training data and CLI); only the grid's first row, the frame pairs, differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE, SPEECH = "<image>", "<speech>"
PLACEHOLDER = re.compile(f"({re.escape(IMAGE)}|{re.escape(SPEECH)})")
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class Piece:
    """A run of prompt positions: text token ids, or a media block of `length` embeddings."""

    kind: str  # "text", "image", "video" or "speech"
    length: int
    token_ids: tuple[int, ...] = ()
    grid: tuple[int, int, int] | None = None  # image or video: (frame pairs, h, w) after the 2×2 merge

    @property
    def is_media(self) -> bool:
        return self.kind != "text"


def user_content(has_image: bool, has_speech: bool, text: str | None) -> str:
    """The user turn's content in Lyra's training format.

    Lyra's training moves `<image>` plus a newline to the front of the turn and replaces both with the
    vision block, so typed text follows `<|vision_end|>` directly; its speech prompts put a newline
    between `<speech>` and typed text. With image, speech and text together (no Lyra reference) both
    rules apply: the vision block, `<speech>`, a newline, the text.
    """
    content = f"<|vision_start|>{IMAGE}<|vision_end|>" if has_image else ""
    if has_speech:
        content += SPEECH + ("\n" if text else "")
    return content + (text or "")


def chat_text(content: str, first_turn: bool) -> str:
    """One user turn and the assistant's opening, with the system prompt before the first."""
    system = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n" if first_turn else ""
    return f"{system}<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def split_prompt(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    image_grid: tuple[int, int, int] | None = None,
    speech_tokens: int = 0,
    video_grid: tuple[int, int, int] | None = None,
) -> list[Piece]:
    """Tokenize `text` around its placeholders; each placeholder becomes a media piece (`<image>` a video
    piece when a video grid is given)."""
    pieces = []
    kind, grid = ("video", video_grid) if video_grid is not None else ("image", image_grid)
    for part in PLACEHOLDER.split(text):
        if part == IMAGE:
            if grid is None:
                raise ValueError("prompt has <image> but no image or video was given")
            pieces.append(Piece(kind, grid[0] * grid[1] * grid[2], grid=grid))
        elif part == SPEECH:
            pieces.append(Piece("speech", speech_tokens))
        elif part:
            ids = tuple(tokenizer(part, add_special_tokens=False)["input_ids"])
            pieces.append(Piece("text", len(ids), token_ids=ids))
    return pieces


def mrope_positions(pieces: list[Piece], start: int) -> tuple[torch.Tensor, int]:
    """(3, T) positions for the pieces starting at `start`, and the next free position.

    Text and speech advance all three rows together. An image's or video's tokens take (t, h, w) grid
    indices offset by the running position (a video's first row counts frame pairs, one per pair, as
    Qwen2-VL's and Lyra's rope index do); the text after it resumes at that block's max + 1.
    """
    rows, position = [], start
    for piece in pieces:
        if piece.grid is not None:
            t, h, w = piece.grid
            grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
            rows.append(grid.reshape(3, -1) + position)
            position += max(t, h, w)
        else:
            rows.append(torch.arange(position, position + piece.length).expand(3, -1))
            position += piece.length
    if not rows:
        return torch.zeros(3, 0, dtype=torch.long), start
    return torch.cat(rows, dim=1), position


def end_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.convert_tokens_to_ids(token) for token in END_TOKENS}
    return {i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id}
