"""Scenes (shapes in the four quadrants, or one large digit) and their 32x32 RGB rendering."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from cvit.synthetic.lexicon import COLOURS, QUADRANTS, SHAPES

IMAGE_SIZE = 32
CELL = IMAGE_SIZE // 2
RGB = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240), "yellow": (240, 220, 40)}
BACKGROUND = (20, 20, 20)

# A 3x5 bitmap font for the ten digits. Drawn by hand because PIL's default font changes between
# Pillow versions (bitmap vs. FreeType), which would break the benchmark's determinism.
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
class Shape:
    colour: str
    shape: str
    quadrant: int  # index into QUADRANTS: 0 top left, 1 top right, 2 bottom left, 3 bottom right

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Normalised [x1, y1, x2, y2] of the shape's quadrant."""
        col, row = self.quadrant % 2, self.quadrant // 2
        return (col * 0.5, row * 0.5, col * 0.5 + 0.5, row * 0.5 + 0.5)

    @property
    def where(self) -> str:
        return QUADRANTS[self.quadrant]


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...] = ()
    digit: str | None = None
    digit_colour: str = "yellow"

    def render(self) -> Image.Image:
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for shape in self.shapes:
            draw_shape(draw, shape)
        if self.digit is not None:
            draw_digit(draw, self.digit, RGB[self.digit_colour])
        return image


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x0 = (shape.quadrant % 2) * CELL + 2
    y0 = (shape.quadrant // 2) * CELL + 2
    x1, y1 = x0 + CELL - 5, y0 + CELL - 5
    fill = RGB[shape.colour]
    if shape.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape.shape == "square":
        draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=fill)
    elif shape.shape == "triangle":
        draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
    else:  # cross
        mid_x, mid_y = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((mid_x - 2, y0, mid_x + 2, y1), fill=fill)
        draw.rectangle((x0, mid_y - 2, x1, mid_y + 2), fill=fill)


def draw_digit(draw: ImageDraw.ImageDraw, digit: str, fill: tuple[int, int, int]) -> None:
    """Draw the glyph scaled 5x, centred (15x25 px)."""
    scale = 5
    left, top = (IMAGE_SIZE - 3 * scale) // 2, (IMAGE_SIZE - 5 * scale) // 2
    for row, line in enumerate(DIGIT_GLYPHS[digit]):
        for col, cell in enumerate(line):
            if cell == "#":
                x, y = left + col * scale, top + row * scale
                draw.rectangle((x, y, x + scale - 1, y + scale - 1), fill=fill)


def sample_shapes(rng: random.Random, count: int, distinct_colours: bool = False) -> tuple[Shape, ...]:
    """`count` shapes in distinct random quadrants, listed in reading order."""
    quadrants = sorted(rng.sample(range(4), count))
    colours = rng.sample(COLOURS, count) if distinct_colours else [rng.choice(COLOURS) for _ in quadrants]
    return tuple(Shape(c, rng.choice(SHAPES), q) for c, q in zip(colours, quadrants, strict=True))


def sample_digit(rng: random.Random) -> Scene:
    return Scene(digit=str(rng.randrange(10)), digit_colour=rng.choice(COLOURS))
