"""A tiny Qwen2-VL built offline from config (no download), saved like a real checkpoint.

The model is a real `Qwen2VLForConditionalGeneration` (ViT with 2D RoPE + patch merger, Qwen2 text
model with M-RoPE). Its tokenizer is the tiny LLaVA's word-level tokenizer plus the chat words and
Qwen's special tokens of the `qwen2_vl` chat format; the processor is `Qwen2VLImageOnlyProcessor`.
A 32x32 image becomes (32/4)^2 = 64 patches, merged 2x2 into 16 image tokens (as the tiny LLaVA's 16).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLTextConfig,
    Qwen2VLVisionConfig,
)

from cvit.model.qwen_processor import IMAGE_TOKEN, Qwen2VLImageOnlyProcessor
from cvit.model.tiny import build_word_tokenizer, save_model
from cvit.synthetic.scenes import IMAGE_SIZE

QWEN_SPECIAL_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", IMAGE_TOKEN, "<|video_pad|>",
)
CHAT_ROLES = ("user", "assistant")
PATCH_SIZE = 4
MERGE_SIZE = 2


def build_qwen_word_tokenizer() -> PreTrainedTokenizerFast:
    """`build_word_tokenizer()` plus the role words and Qwen's special tokens (skipped when decoding)."""
    tokenizer = build_word_tokenizer()
    tokenizer.add_tokens([AddedToken(word, single_word=True) for word in CHAT_ROLES])
    tokenizer.add_tokens(list(QWEN_SPECIAL_TOKENS), special_tokens=True)
    return tokenizer


def build_tiny_qwen2vl(seed: int = 0) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLImageOnlyProcessor]:
    """A ~0.9M-parameter Qwen2-VL (text: 128x4, head 32, mrope 4/6/6; vision: 64x2, patch 4 on 32 px)."""
    import torch

    tokenizer = build_qwen_word_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config=Qwen2VLVisionConfig(
            depth=2, embed_dim=64, hidden_size=128, mlp_ratio=2, num_heads=4,
            patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE, temporal_patch_size=2,
        ),
        text_config=Qwen2VLTextConfig(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
            # M-RoPE sections (temporal, height, width) must sum to head_dim / 2 = 16.
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=token_id("<|im_end|>"),
        ),
        image_token_id=token_id(IMAGE_TOKEN),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = token_id("<|im_end|>")
    model.generation_config.bos_token_id = None
    # min_pixels = max_pixels: every image is resized to ~IMAGE_SIZE^2 pixels (multiples of 8 px a side),
    # so a 32x32 image stays 32x32 instead of being upscaled to Qwen's default 56x56 minimum.
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=2,
        min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE,
    )
    return model, Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny_qwen2vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny Qwen2-VL (model + processor) atomically to OUT_DIR."""
    return save_model(out_dir, *build_tiny_qwen2vl(seed))
