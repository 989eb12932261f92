"""A Qwen2-VL processor for images only, usable without torchvision (DESIGN §7).

The stock `Qwen2VLProcessor` requires a video processor, and `Qwen2VLVideoProcessor` needs
torchvision. `Qwen2VLImageOnlyProcessor` has no video sub-processor (its attributes come from its
`__init__` signature) and otherwise behaves like the stock one: each `<|image_pad|>` in the text is
expanded to `t*h*w / merge_size^2` tokens and `mm_token_type_ids` (needed for M-RoPE) is returned.

AutoProcessor cannot be used: on a folder saved with this class it does not know the `processor_class` and
silently returns the bare tokenizer; on a stock Qwen2-VL folder it builds `Qwen2VLProcessor` and raises
ImportError (torchvision). `load_qwen2vl_processor` loads either kind of folder.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

IMAGE_TOKEN = "<|image_pad|>"


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without the video processor: `images=` and `text=` only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The tokenizer's own `image_token` (if any) is not trusted: Qwen2-VL's placeholder is fixed.
        self.image_token = IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_qwen2vl_processor(path: str | Path) -> Qwen2VLImageOnlyProcessor:
    """The image-only Qwen2-VL processor from a local folder (tokenizer files + image processor config)."""
    return Qwen2VLImageOnlyProcessor.from_pretrained(str(path))
