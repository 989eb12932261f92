from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from cvit.data.collate import Collator
from cvit.data.images import mean_colour, pad_to_square
from cvit.errors import ConfigError
from cvit.run.loop import ContinualRun

BACKGROUND = (0, 0, 0)
MARK = (255, 255, 255)


def marked_wide_image() -> Image.Image:
    """64 x 32, black, with a white 4 x 4 mark in the top-left corner."""
    image = Image.new("RGB", (64, 32), BACKGROUND)
    image.paste(Image.new("RGB", (4, 4), MARK), (0, 0))
    return image


def pixels(processor, aspect: str) -> torch.Tensor:
    """The processor's [3, 32, 32] input for the marked image, through the collator with `aspect`."""
    items = [{"image": marked_wide_image(), "instruction": "Describe the image .", "template": "", "task": "t"}]
    return Collator(processor, "llava", 512, image_aspect=aspect).encode_prompts(items)["pixel_values"][0]


def test_a_corner_mark_survives_pad_and_is_cut_by_crop(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    white = (1 - mean) / std  # what a white pixel normalises to
    cropped, padded = pixels(processor, "crop"), pixels(processor, "pad")
    assert cropped.shape == padded.shape == (3, 32, 32)
    # crop: the short side is already 32, the centre 32 columns are kept, the mark's columns 0-3 are gone
    assert (cropped - white).abs().amax(0).min() > 0.5
    # pad: 64 x 64 with the mark at rows 16-19, halved to 32 x 32: the mark lands at rows 8-9, columns 0-1 (bright
    # after resampling; black and the mean colour normalise to <= 0)
    assert padded[:, 8:10, 0:2].min() > 1.0 and (padded[:, 8:10, 0:2] - white).abs().min() < 0.1
    # the padding above the image is the processor's mean colour (truncated to 0..255), which normalises to about 0
    assert padded[:, 0:6].abs().max() < 0.02


def test_pad_to_square_centres_the_image_on_the_mean_colour(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    fill = mean_colour(processor)
    tall = pad_to_square(Image.new("RGB", (3, 8), MARK), fill)
    assert tall.size == (8, 8)
    assert tall.getpixel((0, 0)) == fill and tall.getpixel((7, 7)) == fill  # margins 2 left, 3 right
    assert tall.getpixel((2, 0)) == MARK and tall.getpixel((4, 7)) == MARK and tall.getpixel((5, 0)) == fill
    square = Image.new("RGB", (5, 5))
    assert pad_to_square(square, fill) is square


def test_image_aspect_is_checked_before_loading(small_config, qwen_config_dir):
    cfg, sources = small_config("model.image_aspect=stretch")
    with pytest.raises(ConfigError, match="key 'model.image_aspect': 'stretch' is not one of crop, pad"):
        ContinualRun(cfg, sources).prepare()
    cfg, sources = small_config("model.family=qwen2_vl", f"model.path={qwen_config_dir}", "model.image_aspect=pad")
    with pytest.raises(ConfigError, match="key 'model.image_aspect': 'pad' is LLaVA-1.5's preprocessing"):
        ContinualRun(cfg, sources).prepare()
