"""How an image becomes square before the processor sees it (`model.image_aspect`).

  crop  the processor alone: a Hugging Face LLaVA folder's CLIP processor resizes the short side and crops the
        centre, cutting off what lies near the long sides
  pad   LLaVA-1.5's own preprocessing (its training code's `image_aspect_ratio: pad`, which the papers' forks keep):
        the image is centred on a square of the processor's mean colour, then the processor resizes it whole
Written here because the Hugging Face processors offer no padding to a square.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

IMAGE_ASPECTS = ("crop", "pad")


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """`image` centred on a square canvas of side max(width, height) filled with `fill` (RGB, 0..255); a square image
    is returned as it is. On an odd margin the extra pixel goes after the image (right or bottom)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def mean_colour(processor: Any) -> tuple[int, int, int]:
    """The processor's normalisation mean as an RGB colour (0..255): the colour that normalises to zero."""
    return tuple(int(channel * 255) for channel in processor.image_processor.image_mean)


def square_images(aspect: str, processor: Any) -> Callable[[list[Image.Image]], list[Image.Image]]:
    """The step `aspect` applies to a batch's images before `processor` (identity for `crop`)."""
    if aspect not in IMAGE_ASPECTS:
        raise ValueError(f"image aspect must be one of {', '.join(IMAGE_ASPECTS)}, got {aspect!r}")
    if aspect == "crop":
        return list
    fill = mean_colour(processor)
    return lambda images: [pad_to_square(image, fill) for image in images]
