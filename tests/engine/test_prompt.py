import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

from engine.prompt import Piece, chat_text, mrope_positions, split_prompt, user_content
from engine.session import TRANSCRIBE, TURN_END

VISION = "<|vision_start|><image><|vision_end|>"


def test_user_content_follows_lyras_training_format_on_every_path() -> None:
    # Lyra's training replaces "<image>\n" with the vision block: typed text follows it directly.
    assert user_content(True, False, "What is this?") == VISION + "What is this?"
    assert user_content(True, True, None) == VISION + "<speech>"
    assert user_content(True, True, "and this?") == VISION + "<speech>\nand this?"
    assert user_content(False, True, "and this?") == "<speech>\nand this?"
    assert user_content(False, True, None) == "<speech>"
    assert user_content(False, False, "hi") == "hi"


def test_transcripts_use_lyras_asr_evaluation_prompt() -> None:
    assert user_content(False, True, TRANSCRIBE) == "<speech>\n\nRecord the spoken words as text."


def test_a_follow_up_turn_continues_the_chatml_conversation() -> None:
    """Turn two closes the reply left in the cache and opens a user turn, with no second system prompt."""
    first = chat_text(user_content(False, True, None), first_turn=True) + "Hello there."
    follow_up = TURN_END + chat_text(user_content(True, False, "And now?"), first_turn=False)
    assert first + follow_up == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<speech><|im_end|>\n<|im_start|>assistant\nHello there.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><image><|vision_end|>And now?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_text_has_system_prompt_only_on_the_first_turn() -> None:
    first = chat_text("<speech>", first_turn=True)
    assert first == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                     "<|im_start|>user\n<speech><|im_end|>\n<|im_start|>assistant\n")
    assert "system" not in chat_text("hi", first_turn=False)


def test_split_prompt_makes_media_pieces_of_the_right_length(lyra_fp32) -> None:
    text = chat_text(user_content(True, True, None), first_turn=True)
    pieces = split_prompt(lyra_fp32.tokenizer, text, image_grid=(1, 3, 4), speech_tokens=300)
    kinds = [p.kind for p in pieces]
    assert kinds == ["text", "image", "text", "speech", "text"]
    assert pieces[1].length == 12 and pieces[3].length == 300
    vision_start = lyra_fp32.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert pieces[0].token_ids[-1] == vision_start


def reference_rope_index(token_types: torch.Tensor, **grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Qwen2VLModel.get_rope_index on tokens typed 0 (text), 1 (image) or 2 (video)."""
    config = Qwen2VLConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "intermediate_size": 64, "vocab_size": 200,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 1},
        image_token_id=151, video_token_id=152,
    )
    input_ids = torch.where(token_types == 0, 5, 150 + token_types)
    return Qwen2VLModel(config).get_rope_index(input_ids, token_types, **grids)


def test_mrope_positions_match_transformers_qwen2vl_for_image_then_speech() -> None:
    """Our positions for [text, image, text, speech, text] equal Qwen2VLModel.get_rope_index."""
    merged_grid = (1, 3, 5)  # 6 × 10 patches before the 2×2 merge
    pieces = [Piece("text", 7, tuple(range(7))), Piece("image", 15, grid=merged_grid), Piece("text", 1, (1,)),
              Piece("speech", 300), Piece("text", 5, tuple(range(5)))]
    ours, next_position = mrope_positions(pieces, start=0)

    token_types = torch.tensor([[0] * 7 + [1] * 15 + [0] * 306])
    theirs, deltas = reference_rope_index(token_types, image_grid_thw=torch.tensor([[1, 6, 10]]))
    assert torch.equal(ours, theirs[:, 0])
    assert next_position == int(theirs.max()) + 1 == ours.shape[1] + int(deltas)


def test_positions_continue_from_a_start_offset() -> None:
    pieces = [Piece("text", 3, (1, 2, 3))]
    positions, following = mrope_positions(pieces, start=40)
    assert positions[:, 0].tolist() == [40, 40, 40] and following == 43
