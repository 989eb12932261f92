"""Tiny models of the real architectures, built offline from config (no download).

The tiny LLaVA is a real `LlavaForConditionalGeneration` (CLIP vision tower, Llama language model)
with a word-level closed-vocabulary tokenizer over the synthetic world's lexicon and a real
`LlavaProcessor`; it is saved with `save_pretrained` and loaded by the same code path as a real model.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from cvit.run.atomic import atomic_path
from cvit.synthetic.lexicon import SPACE, TOKEN_PATTERN, vocabulary
from cvit.synthetic.scenes import IMAGE_SIZE

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PATCH_SIZE = 8


def build_word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per word of the lexicon, spaces carried as Llama's are and numbers split into digits (see
    `cvit.synthetic.lexicon`); decoding turns the carried spaces back into spaces."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(vocabulary()))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Replace("\n", " ")
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
        pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated"),
    ])
    core.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    return tokenizer


def build_tiny_llava(seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A ~0.8M-parameter LLaVA-1.5-shaped model (text: Llama 128x4, vision: CLIP 64x2 on 32 px)."""
    import torch

    tokenizer = build_word_tokenizer()
    image_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=64,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    # "default" feature strategy drops the CLS token: with one additional token the processor's
    # image_seq_length is (image/patch)^2, matching the model's image features.
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    return model, processor


def save_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny LLaVA (model + processor) atomically to OUT_DIR."""
    return save_model(out_dir, *build_tiny_llava(seed))


def save_model(out_dir: str | Path, model, processor) -> Path:
    """`save_pretrained` of model and processor into OUT_DIR, atomically."""
    with atomic_path(out_dir) as staged:
        model.save_pretrained(staged)
        processor.save_pretrained(staged)
    return Path(out_dir)
