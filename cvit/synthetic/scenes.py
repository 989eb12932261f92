"""Scenes of the synthetic world and their 32x32 RGB rendering.

A scene holds shapes, one in each of some of the four quadrants, or a number. Every object has a size, a
position inside its cell, a colour that may lie between two named colours and a brightness; the rendered image
carries pixel noise. So perception is not perfectly learnable, as in real images (small, dim, ambiguous
objects), and the annotators of `cvit.synthetic.annotators` disagree where a person would. How hard a scene is to
see is its `Conditions`: the stream's tasks show HARD scenes; the base model's own instruction data shows CLEAR
ones (large, bright, pure colours, no noise) in base training's first stage and half of the time after it (a tiny
vision tower trained from scratch on the mixture alone never learned to see: its answers ignored the image after
1500 steps; a real MLLM starts from a pretrained CLIP).

Rendering uses PIL's primitive shapes and a hand-drawn digit font (PIL's default font changes between Pillow
versions) and numpy's PCG64 noise seeded from the record's key: the same image on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cvit.synthetic.lexicon import COLOURS, QUADRANTS

IMAGE_SIZE = 32
CELL = IMAGE_SIZE // 2
BACKGROUND = (20, 20, 20)
RGB = {
    "red": (230, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (40, 200, 60),
    "blue": (50, 80, 240), "purple": (160, 60, 220),
}
# Each colour's neighbour on the hue circle (red -> orange -> yellow -> green -> blue -> purple -> red): an
# object's hue lies between its colour and one neighbour.
HUE_ORDER = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = range(6, 14)  # object side in pixels, all conditions
DIGIT_SCALES = range(2, 6)  # pixels a dot of the 3x5 glyph: 6x10 to 15x25 pixels a digit


@dataclass(frozen=True)
class Conditions:
    """How hard a scene is to see: object sides, the dimmest brightness, how far a hue may move towards its
    neighbour (at most 0.5: halfway), digit scales and the pixel noise (std in 0..255 units per channel)."""

    sizes: range
    min_brightness: float
    max_blend: float
    digit_scales: range
    noise: float


HARD = Conditions(sizes=range(8, 14), min_brightness=0.5, max_blend=0.5, digit_scales=range(3, 6), noise=8.0)
CLEAR = Conditions(sizes=range(11, 14), min_brightness=1.0, max_blend=0.0, digit_scales=range(3, 6), noise=0.0)

# A 3x5 bitmap font for the ten digits.
DIGIT_GLYPHS = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", "..#", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}


@dataclass(frozen=True)
class Look:
    """How an object appears: its named colour, how far (0..0.5) its hue has moved towards `toward`, its
    brightness (0..1) and its side in pixels."""

    colour: str
    toward: str
    blend: float
    brightness: float
    size: int

    def rgb(self) -> tuple[int, int, int]:
        own, other = RGB[self.colour], RGB[self.toward]
        return tuple(round(self.brightness * ((1 - self.blend) * a + self.blend * b)) for a, b in zip(own, other,
                                                                                                     strict=True))

    @property
    def clarity(self) -> float:
        """0 (smallest and dimmest) .. 1 (largest and brightest): how easy the object is to see."""
        return 0.5 * (self.size - SIZES[0]) / (SIZES[-1] - SIZES[0]) + 0.5 * (self.brightness - 0.45) / 0.55


@dataclass(frozen=True)
class Shape:
    shape: str
    quadrant: int  # index into QUADRANTS: 0 top left, 1 top right, 2 bottom left, 3 bottom right
    x: int  # left pixel
    y: int  # top pixel
    look: Look

    @property
    def colour(self) -> str:
        return self.look.colour

    @property
    def where(self) -> str:
        return QUADRANTS[self.quadrant]

    @property
    def pixels(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the object's square, inclusive."""
        return self.x, self.y, self.x + self.look.size - 1, self.y + self.look.size - 1

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Normalised [x1, y1, x2, y2] of the object's square (edges of its pixels)."""
        x0, y0, x1, y1 = self.pixels
        return x0 / IMAGE_SIZE, y0 / IMAGE_SIZE, (x1 + 1) / IMAGE_SIZE, (y1 + 1) / IMAGE_SIZE


@dataclass(frozen=True)
class Writing:
    """A number written in the image: glyphs of `scale` pixels a dot, a dot apart, from (x, y)."""

    text: str
    x: int
    y: int
    scale: int
    look: Look  # its `size` is the glyph's width in pixels

    @property
    def clarity(self) -> float:
        return 0.5 * (self.scale - DIGIT_SCALES[0]) / (DIGIT_SCALES[-1] - DIGIT_SCALES[0]) + \
            0.5 * (self.look.brightness - 0.45) / 0.55


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...] = ()
    writing: Writing | None = None
    noise: float = HARD.noise  # pixel noise std

    def render(self, noise: np.random.Generator) -> Image.Image:
        """The scene as a 32x32 RGB image with Gaussian pixel noise (std `self.noise`) drawn from `noise`."""
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for shape in self.shapes:
            draw_shape(draw, shape)
        if self.writing is not None:
            draw_writing(draw, self.writing)
        pixels = np.asarray(image, dtype=np.float64) + noise.normal(0.0, self.noise, (IMAGE_SIZE, IMAGE_SIZE, 3))
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x0, y0, x1, y1 = shape.pixels
    fill = shape.look.rgb()
    mid_x, mid_y = (x0 + x1) / 2, (y0 + y1) / 2
    bar = max(1, shape.look.size // 4)
    if shape.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape.shape == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=fill, width=max(1, shape.look.size // 5))
    elif shape.shape == "square":
        draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=fill)
    elif shape.shape == "diamond":
        draw.polygon((mid_x, y0, x1, mid_y, mid_x, y1, x0, mid_y), fill=fill)
    elif shape.shape == "triangle":
        draw.polygon((mid_x, y0, x1, y1, x0, y1), fill=fill)
    else:  # cross
        draw.rectangle((round(mid_x - bar / 2), y0, round(mid_x + bar / 2), y1), fill=fill)
        draw.rectangle((x0, round(mid_y - bar / 2), x1, round(mid_y + bar / 2)), fill=fill)


def draw_writing(draw: ImageDraw.ImageDraw, writing: Writing) -> None:
    fill, scale = writing.look.rgb(), writing.scale
    for index, digit in enumerate(writing.text):
        left = writing.x + index * 4 * scale
        for row, line in enumerate(DIGIT_GLYPHS[digit]):
            for col, cell in enumerate(line):
                if cell == "#":
                    x, y = left + col * scale, writing.y + row * scale
                    draw.rectangle((x, y, x + scale - 1, y + scale - 1), fill=fill)


def sample_look(rng: random.Random, colours: tuple[str, ...], conditions: Conditions, size: int | None = None) -> Look:
    """A look of one of `colours` under `conditions`: the hue moved towards a neighbour by up to `max_blend` (most
    objects near their colour: blend = max_blend u^2), brightness from `min_brightness` to 1, a side from `sizes`."""
    colour = rng.choice(colours)
    index = HUE_ORDER.index(colour)
    toward = HUE_ORDER[(index + rng.choice((-1, 1))) % len(HUE_ORDER)]
    blend = conditions.max_blend * rng.random() ** 2
    brightness = conditions.min_brightness + (1 - conditions.min_brightness) * rng.random()
    return Look(colour, toward, round(blend, 4), round(brightness, 4),
                size if size is not None else rng.choice(conditions.sizes))


def sample_shapes(rng: random.Random, count: int, shapes: tuple[str, ...], colours: tuple[str, ...] = COLOURS,
                  distinct_colours: bool = False, conditions: Conditions = HARD) -> Scene:
    """A scene of `count` shapes of kinds `shapes` in distinct random quadrants, each at a random place inside its
    cell, listed in reading order; with `distinct_colours` no two share a named colour."""
    quadrants = sorted(rng.sample(range(4), count))
    named = rng.sample(colours, count) if distinct_colours else [rng.choice(colours) for _ in quadrants]
    result = []
    for quadrant, colour in zip(quadrants, named, strict=True):
        look = sample_look(rng, (colour,), conditions)
        col, row = quadrant % 2, quadrant // 2
        span = CELL - 1 - look.size  # the object keeps a pixel from the cell's edges
        x = col * CELL + 1 + rng.randint(0, span - 1)
        y = row * CELL + 1 + rng.randint(0, span - 1)
        result.append(Shape(rng.choice(shapes), quadrant, x, y, look))
    return Scene(tuple(result), noise=conditions.noise)


def sample_writing(rng: random.Random, digits: int, colours: tuple[str, ...] = COLOURS,
                   conditions: Conditions = HARD) -> Scene:
    """A scene with a number of `digits` digits (no leading zero) at a random scale and place."""
    scale = rng.choice([s for s in conditions.digit_scales if (4 * digits - 1) * s <= IMAGE_SIZE])
    width, height = (4 * digits - 1) * scale, 5 * scale
    look = sample_look(rng, colours, conditions, size=3 * scale)
    x, y = rng.randint(0, IMAGE_SIZE - width), rng.randint(0, IMAGE_SIZE - height)
    low = 10 ** (digits - 1) if digits > 1 else 0
    return Scene(writing=Writing(str(rng.randrange(low, 10 ** digits)), x, y, scale, look), noise=conditions.noise)
