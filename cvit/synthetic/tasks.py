"""Task generators of the synthetic benchmark, mirroring the real task types.

Each generator draws a scene and returns `(scene, question, answer)`. The question carries no
format instruction: the DataModule appends one of the task's instruction templates from the
benchmark spec (single- or multi-type), as CVIT's templates do.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from cvit.synthetic.lexicon import COLOURS, DIGITS, LETTERS, NUMBER_WORDS, SHAPES
from cvit.synthetic.scenes import Scene, Shape, sample_digit, sample_shapes

Sample = tuple[Scene, str, str]


def options_text(choices: tuple[str, ...]) -> str:
    """Options in a fixed order (shuffled options were unlearnable for the tiny model), lettered from A."""
    return " ".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS[: len(choices)], choices, strict=True))


def format_box(box: tuple[float, float, float, float]) -> str:
    """Two decimals, as the real grounding data (LLaVA's RefCOCO boxes, CoIN) writes them."""
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def caption_of(shapes: tuple[Shape, ...]) -> str:
    """Objects listed in reading order, e.g. 'a red circle at the top left and a blue cross at ...'."""
    parts = [f"a {s.colour} {s.shape} at the {s.where}" for s in shapes]
    return " and ".join(parts) + "."


def colour_choice(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, 1))
    answer = LETTERS[COLOURS.index(scene.shapes[0].colour)]
    return scene, f"What colour is the shape ? {options_text(COLOURS)}", answer


def count_shapes(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, rng.randint(1, 4)))
    return scene, "How many shapes are in the image ?", NUMBER_WORDS[len(scene.shapes)]


def classify_shape(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, 1))
    return scene, "What is the object in the image ?", scene.shapes[0].shape


def read_digit(rng: random.Random) -> Sample:
    scene = sample_digit(rng)
    return scene, "What number is written in the image ?", scene.digit


def ground_colour(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, rng.randint(2, 3), distinct_colours=True))
    target = rng.choice(scene.shapes)
    question = (
        "Please provide the bounding box coordinate of the region this sentence describes : "
        f"the {target.colour} shape"
    )
    return scene, question, format_box(target.box)


def caption(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, rng.randint(1, 3)))
    return scene, "Describe the image briefly .", caption_of(scene.shapes)


def side_of_shape(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, 1))
    return scene, "Is the shape on the left or the right side ?", scene.shapes[0].where.split()[1]


def shape_choice(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, 1))
    answer = LETTERS[SHAPES.index(scene.shapes[0].shape)]
    return scene, f"Which shape is it ? {options_text(SHAPES)}", answer


# The long stream's further tasks: the same attributes in other answer formats (and the box by shape)


def count_choice(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, rng.randint(1, 4)))
    question = f"How many shapes are in the image ? {options_text(NUMBER_WORDS[1:5])}"
    return scene, question, LETTERS[len(scene.shapes) - 1]


def colour_word(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, 1))
    return scene, "What colour is the shape ?", scene.shapes[0].colour


def side_choice(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, 1))
    sides = ("left", "right")
    answer = LETTERS[sides.index(scene.shapes[0].where.split()[1])]
    return scene, f"Is the shape on the left or the right side ? {options_text(sides)}", answer


def where_colour(rng: random.Random) -> Sample:
    scene = Scene(sample_shapes(rng, rng.randint(2, 3), distinct_colours=True))
    target = rng.choice(scene.shapes)
    return scene, f"Where is the {target.colour} shape ?", target.where


def ground_shape(rng: random.Random) -> Sample:
    """The box of a shape whose kind no other shape in the scene has (scenes redrawn until one has such a shape)."""
    while True:
        scene = Scene(sample_shapes(rng, rng.randint(2, 3), distinct_colours=True))
        kinds = [s.shape for s in scene.shapes]
        unique = [s for s in scene.shapes if kinds.count(s.shape) == 1]
        if unique:
            break
    target = rng.choice(unique)
    question = f"Please provide the bounding box coordinate of the region this sentence describes : the {target.shape}"
    return scene, question, format_box(target.box)


def digit_choice(rng: random.Random) -> Sample:
    scene = sample_digit(rng)
    options = tuple(sorted({scene.digit, *rng.sample([d for d in DIGITS if d != scene.digit], 3)}))
    return scene, f"What number is written in the image ? {options_text(options)}", LETTERS[options.index(scene.digit)]


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    generate: Callable[[random.Random], Sample]
    unseen: bool = False


TASKS: dict[str, SyntheticTask] = {
    t.name: t
    for t in (
        SyntheticTask("colour_mc", colour_choice),
        SyntheticTask("count_vqa", count_shapes),
        SyntheticTask("shape_cls", classify_shape),
        SyntheticTask("digit_ocr", read_digit),
        SyntheticTask("grounding", ground_colour),
        SyntheticTask("caption", caption),
        SyntheticTask("side_vqa", side_of_shape, unseen=True),
        SyntheticTask("shape_mc", shape_choice, unseen=True),
    )
}
# The long stream (`make scaling`): the embedded default's tasks and six more of the same generator
LONG_TASKS: dict[str, SyntheticTask] = {
    **TASKS,
    **{t.name: t for t in (
        SyntheticTask("count_mc", count_choice), SyntheticTask("colour_vqa", colour_word),
        SyntheticTask("side_mc", side_choice), SyntheticTask("where_vqa", where_colour),
        SyntheticTask("ground_shape", ground_shape), SyntheticTask("digit_mc", digit_choice),
    )},
}


# The answer formats a base MLLM already knows from its own instruction tuning (LLaVA-1.5's SFT mix has
# such prompts); the base mixture uses them with its own question wordings, not the stream's.
SHORT_FORMS = ("Answer the question using a single word or phrase .", "Respond with one word .")
LETTER_ANSWER = "Answer with the option ' s letter from the given choices directly ."

BASE_WORDINGS = {
    "caption": ("Tell me about the image .", "Write a caption .", "Describe the picture ."),
    "colour": ("What colour is the shape ?", "Which colour is it ?", "Tell me the colour of the shape ."),
    "shape": ("Name the shape .", "Which shape is it ?", "What is the object ?"),
    "count": ("Count the shapes .", "How many shapes are there ?", "Tell me the number of shapes ."),
    "digit": ("Read the digit .", "What number is written ?", "Which digit is in the picture ?"),
    "where": ("Where is the {colour} shape ?", "Which region has the {colour} shape ?"),
    "count_letter": (f"How many shapes are there ? {{options}}\n{LETTER_ANSWER}",),
}


def base_attribute(kind: str, rng: random.Random) -> tuple[Scene, str, str]:
    """(scene, free-form sentence answer, bare value) for an attribute question of `kind`."""
    if kind == "digit":
        scene = sample_digit(rng)
        return scene, f"The number is {scene.digit} .", scene.digit
    if kind == "count":
        scene = Scene(sample_shapes(rng, rng.randint(1, 4)))
        n = len(scene.shapes)
        sentence = f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} shape{'' if n == 1 else 's'} ."
        return scene, sentence, NUMBER_WORDS[n]
    scene = Scene(sample_shapes(rng, 1))
    shape = scene.shapes[0]
    if kind == "colour":
        return scene, f"The shape is {shape.colour} .", shape.colour
    return scene, f"It is a {shape.shape} .", shape.shape


def base_sample(rng: random.Random) -> Sample:
    """One sample of the base-training mixture: the world's attributes asked in varied wordings.

    The base model learns to see (colour, shape, count, digit, position), to follow varied
    instructions and, half of the time, to answer in the short-answer format (and counts as option
    letters), as LLaVA-1.5 is SFT'd before continual tuning. The stream then asks in its own wordings
    and templates, and for one format the base never saw (the grounding box).
    """
    kind = rng.choice(tuple(BASE_WORDINGS))
    wording = rng.choice(BASE_WORDINGS[kind])
    if kind == "caption":
        scene = Scene(sample_shapes(rng, rng.randint(1, 3)))
        return scene, wording, caption_of(scene.shapes)
    if kind == "where":
        scene = Scene(sample_shapes(rng, rng.randint(2, 3), distinct_colours=True))
        target = rng.choice(scene.shapes)
        return scene, wording.format(colour=target.colour), f"It is at the {target.where} ."
    if kind == "count_letter":
        scene = Scene(sample_shapes(rng, rng.randint(1, 4)))
        return scene, wording.format(options=options_text(NUMBER_WORDS[1:5])), LETTERS[len(scene.shapes) - 1]
    scene, sentence, value = base_attribute(kind, rng)
    if rng.random() < 0.5:
        return scene, f"{wording}\n{rng.choice(SHORT_FORMS)}", value
    return scene, wording, sentence
