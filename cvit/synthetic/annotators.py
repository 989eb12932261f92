"""Annotators: people who look at a scene and answer, each with their own small errors.

Real instruction data is ambiguous: VQAv2 and TextVQA keep ten annotators' answers per question because people
disagree, and a model trained on one annotator's answer cannot reach zero loss. Each annotator here perceives an
object with noise that grows as the object gets smaller and dimmer (`Look.clarity`): a hue between two colours is
named after either, a small shape is taken for a similar one or missed when counting, a small dim digit is misread
as a similar one, a box is drawn a pixel or two off. Training records hold one annotator's answer, test records
the answers of others (ten where the benchmark's scorer reads ten, as VQA's soft accuracy does).
"""

from __future__ import annotations

import random

from cvit.synthetic.scenes import IMAGE_SIZE, Look, Shape, Writing

# similar kinds a person may name instead, by kind
SIMILAR_SHAPES = {
    "circle": ("ring", "square"), "ring": ("circle",), "square": ("circle", "diamond"),
    "diamond": ("square", "triangle"), "triangle": ("diamond",), "cross": ("diamond",),
}
SIMILAR_DIGITS = {
    "0": ("8", "6"), "1": ("7",), "2": ("7", "3"), "3": ("8", "9"), "4": ("9",), "5": ("6", "9"),
    "6": ("5", "8"), "7": ("1", "2"), "8": ("3", "6", "9"), "9": ("8", "4"),
}
HUE_NOISE = 0.1  # std of a person's reading of the hue blend at full clarity; doubled at none
MISTAKE = 0.3  # chance of naming a similar shape or digit at clarity 0 (falling to 0 at clarity 1, squared)
MISS = 0.3  # chance of overlooking an object at clarity 0 when counting or describing
BOX_NOISE = 0.8  # std of a drawn box edge, in pixels


def colour_seen(look: Look, rng: random.Random) -> str:
    """The colour a person names: the neighbour's when their reading of the blend passes one half."""
    reading = look.blend + rng.gauss(0.0, HUE_NOISE * (2 - look.clarity))
    return look.toward if reading > 0.5 else look.colour


def _difficulty(clarity: float) -> float:
    return max(0.0, 1.0 - clarity) ** 2


def shape_seen(shape: Shape, rng: random.Random) -> str:
    if rng.random() < MISTAKE * _difficulty(shape.look.clarity):
        return rng.choice(SIMILAR_SHAPES[shape.shape])
    return shape.shape


def writing_seen(writing: Writing, rng: random.Random) -> str:
    """The number a person reads: each digit may be taken for a similar one."""
    chance = MISTAKE * _difficulty(writing.clarity)
    return "".join(rng.choice(SIMILAR_DIGITS[d]) if rng.random() < chance else d for d in writing.text)


def noticed(shape: Shape, rng: random.Random) -> bool:
    """Whether a person counting or describing the scene notices the object."""
    return rng.random() >= MISS * _difficulty(shape.look.clarity)


def count_seen(shapes: tuple[Shape, ...], rng: random.Random) -> int:
    """The number of objects a person counts (at least one: a scene always shows something)."""
    return max(1, sum(noticed(shape, rng) for shape in shapes))


def box_drawn(shape: Shape, rng: random.Random) -> tuple[float, float, float, float]:
    """The normalised box a person draws around the object: each edge a little off, kept in order."""
    x0, y0, x1, y1 = (IMAGE_SIZE * v + rng.gauss(0.0, BOX_NOISE) for v in shape.box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    return tuple(min(1.0, max(0.0, v / IMAGE_SIZE)) for v in (x0, y0, x1, y1))
