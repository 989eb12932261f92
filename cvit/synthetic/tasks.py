"""Task generators of the synthetic benchmark, mirroring the real task types.

Each generator draws a scene and returns a `Sample`: the scene, the question and `answer`, which gives one
annotator's answer for an annotator's random draws (see `cvit.synthetic.annotators`). The question carries no
format instruction: the DataModule appends one of the task's instruction templates from the benchmark spec
(single- or multi-type), as CVIT's templates do.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from cvit.synthetic.annotators import (
    box_drawn,
    colour_seen,
    count_seen,
    noticed,
    shape_seen,
    writing_seen,
)
from cvit.synthetic.lexicon import BASE_COLOURS, BASE_SHAPES, COLOURS, LETTERS, NUMBER_WORDS, SHAPES
from cvit.synthetic.scenes import CLEAR, HARD, Conditions, Scene, Shape, sample_shapes, sample_writing

Annotate = Callable[[random.Random], str]  # one annotator's answer, from that annotator's draws


@dataclass(frozen=True)
class Sample:
    scene: Scene
    question: str
    answer: Annotate


def options_text(choices: tuple[str, ...]) -> str:
    """Options in the order given, lettered from A."""
    return " ".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS[: len(choices)], choices, strict=True))


def letter_of(options: tuple[str, ...], seen: str, right: str) -> str:
    """The letter a person picks: the option they saw, or the right one when what they saw is not offered."""
    return LETTERS[options.index(seen if seen in options else right)]


def format_box(box: tuple[float, float, float, float]) -> str:
    """Two decimals, as the real grounding data (LLaVA's RefCOCO boxes, CoIN) writes them."""
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


# ---- captions: every annotator has a way of describing --------------------------------------------------

HOUSE_PLACE = "at the {where}"  # the base model's own captions
PLACES = ("in the {where} corner", "in the {where}", "on the {side}", "in the {half} half",
          "on the {side} side of the picture", "")  # the stream's annotators'
HALVES = ("upper", "lower")  # the half a quadrant lies in, by its row
OPENINGS = ("", "", "there is ", "the image shows ", "the picture shows ", "I see ", "I can see ",
            "a dark background with ", "{count} : ")  # {count}: "two shapes"
ENDINGS = ("", "", " on a dark background")  # what an annotator may add about the whole picture
SIZE_WORDS = ("small ", "", "large ")  # what an annotator may say of an object's size (6-8, 9-11, 12-13 px)


def caption_by(shapes: tuple[Shape, ...], rng: random.Random, house_style: bool = False) -> str:
    """One annotator's caption: the objects they notice (the clearest one at least), named as they see them
    (sometimes with their size), placed in their own words, in reading order or, now and then, in another.
    `house_style`: the base model's own instruction data, which always writes 'a red circle at the top left and a
    blue cross at the bottom right.' (every object noticed, in reading order)."""
    seen = [s for s in shapes if noticed(s, rng)] or [max(shapes, key=lambda s: s.look.clarity)]
    if house_style:
        place, opening, sized = HOUSE_PLACE, "", False
    else:
        if rng.random() < 0.25:
            rng.shuffle(seen)
        place, opening, sized = rng.choice(PLACES), rng.choice(OPENINGS), rng.random() < 0.3
    ending = "" if house_style else rng.choice(ENDINGS)
    parts = []
    for s in seen:
        size = SIZE_WORDS[min(2, (s.look.size - 6) // 3)] if sized else ""
        where = place.format(where=s.where, side=s.where.split()[1], half=HALVES[s.quadrant // 2])
        parts.append(f"a {size}{colour_seen(s.look, rng)} {shape_seen(s, rng)} {where}".rstrip())
    count = f"{NUMBER_WORDS[len(seen)]} shape{'s' * (len(seen) > 1)}"
    return opening.format(count=count) + " and ".join(parts) + ending + "."


# ---- the stream's tasks ---------------------------------------------------------------------------------


def colour_choice(rng: random.Random) -> Sample:
    """Multiple choice (ScienceQA-like) over the six colours, offered in a fixed order (shuffled options were
    unlearnable at this size)."""
    scene = sample_shapes(rng, 1, SHAPES)
    shape = scene.shapes[0]
    return Sample(scene, f"What colour is the shape ? {options_text(COLOURS)}",
                  lambda r: letter_of(COLOURS, colour_seen(shape.look, r), shape.colour))


def count_colour(rng: random.Random) -> Sample:
    """Short-answer VQA (VQAv2 / GQA-like): how many shapes of one colour, answered in digits."""
    palette = rng.sample(COLOURS, 2)
    scene = sample_shapes(rng, rng.randint(2, 4), SHAPES, tuple(palette))
    target = rng.choice(palette)

    def answer(r: random.Random) -> str:
        return str(sum(noticed(s, r) and colour_seen(s.look, r) == target for s in scene.shapes))

    return Sample(scene, f"How many {target} shapes are there ?", answer)


NEW_SHAPES = tuple(kind for kind in SHAPES if kind not in BASE_SHAPES)


def classify_shape(rng: random.Random) -> Sample:
    """Classification (ImageNet-like) over the six kinds, the two the base has never named drawn twice as often as
    each of its own: a stream's classification task is mostly about classes the base cannot name yet (LLaVA-1.5
    answers 32 on ImageNet-R zero-shot, UCIT)."""
    scene = sample_shapes(rng, 1, SHAPES + NEW_SHAPES)
    return Sample(scene, "What is the object in the image ?", lambda r: shape_seen(scene.shapes[0], r))


def read_number(rng: random.Random) -> Sample:
    """Reading text in the image (TextVQA / OCR-VQA-like): a number of one or two digits."""
    scene = sample_writing(rng, rng.choice((1, 2)))
    return Sample(scene, "What number is written in the image ?", lambda r: writing_seen(scene.writing, r))


def ground_colour(rng: random.Random) -> Sample:
    """Grounding (RefCOCO-like): the box of the shape of a named colour."""
    scene = sample_shapes(rng, rng.randint(2, 3), SHAPES, distinct_colours=True)
    target = rng.choice(scene.shapes)
    question = (
        "Please provide the bounding box coordinate of the region this sentence describes : "
        f"the {target.colour} shape"
    )
    return Sample(scene, question, lambda r: format_box(box_drawn(target, r)))


def caption(rng: random.Random) -> Sample:
    """Captioning (Flickr30k-like) of busy scenes: two to four shapes, so annotators differ in what they mention."""
    scene = sample_shapes(rng, rng.randint(2, 4), SHAPES)
    return Sample(scene, "Describe the image briefly .", lambda r: caption_by(scene.shapes, r))


def side_of_shape(rng: random.Random) -> Sample:
    scene = sample_shapes(rng, 1, SHAPES)
    return Sample(scene, "Is the shape on the left or the right side ?", lambda r: scene.shapes[0].where.split()[1])


def shape_choice(rng: random.Random) -> Sample:
    scene = sample_shapes(rng, 1, SHAPES)
    shape = scene.shapes[0]
    return Sample(scene, f"Which shape is it ? {options_text(SHAPES)}",
                  lambda r: letter_of(SHAPES, shape_seen(shape, r), shape.shape))


# The long stream's further tasks: the same attributes in other answer formats (and the box by shape)


def count_choice(rng: random.Random) -> Sample:
    scene = sample_shapes(rng, rng.randint(1, 4), SHAPES)
    return Sample(scene, f"How many shapes are in the image ? {options_text(NUMBER_WORDS[1:5])}",
                  lambda r: LETTERS[count_seen(scene.shapes, r) - 1])


def colour_word(rng: random.Random) -> Sample:
    scene = sample_shapes(rng, 1, SHAPES)
    return Sample(scene, "What colour is the shape ?", lambda r: colour_seen(scene.shapes[0].look, r))


def side_choice(rng: random.Random) -> Sample:
    scene = sample_shapes(rng, 1, SHAPES)
    sides = ("left", "right")
    return Sample(scene, f"Is the shape on the left or the right side ? {options_text(sides)}",
                  lambda r: LETTERS[sides.index(scene.shapes[0].where.split()[1])])


def where_colour(rng: random.Random) -> Sample:
    scene = sample_shapes(rng, rng.randint(2, 3), SHAPES, distinct_colours=True)
    target = rng.choice(scene.shapes)
    return Sample(scene, f"Where is the {target.colour} shape ?", lambda r: target.where)


def ground_shape(rng: random.Random) -> Sample:
    """The box of a shape whose kind no other shape in the scene has (scenes redrawn until one has such a shape)."""
    while True:
        scene = sample_shapes(rng, rng.randint(2, 3), SHAPES, distinct_colours=True)
        kinds = [s.shape for s in scene.shapes]
        unique = [s for s in scene.shapes if kinds.count(s.shape) == 1]
        if unique:
            break
    target = rng.choice(unique)
    question = f"Please provide the bounding box coordinate of the region this sentence describes : the {target.shape}"
    return Sample(scene, question, lambda r: format_box(box_drawn(target, r)))


def number_choice(rng: random.Random) -> Sample:
    scene = sample_writing(rng, 2)
    right = scene.writing.text
    options = tuple(sorted({right, *rng.sample([str(n) for n in range(10, 100) if str(n) != right], 3)}, key=int))
    return Sample(scene, f"What number is written in the image ? {options_text(options)}",
                  lambda r: letter_of(options, writing_seen(scene.writing, r), right))


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    generate: Callable[[random.Random], Sample]
    unseen: bool = False
    references: int = 1  # annotators' answers a test record keeps (10 for VQA's soft accuracy, 5 captions)


TASKS: dict[str, SyntheticTask] = {
    t.name: t
    for t in (
        SyntheticTask("colour_mc", colour_choice),
        SyntheticTask("count_vqa", count_colour, references=10),
        SyntheticTask("shape_cls", classify_shape),
        SyntheticTask("digit_ocr", read_number, references=10),
        SyntheticTask("grounding", ground_colour),
        SyntheticTask("caption", caption, references=5),
        SyntheticTask("side_vqa", side_of_shape, unseen=True, references=10),
        SyntheticTask("shape_mc", shape_choice, unseen=True),
    )
}
# The long stream (`make scaling`): the embedded default's tasks and six more of the same generator
LONG_TASKS: dict[str, SyntheticTask] = {
    **TASKS,
    **{t.name: t for t in (
        SyntheticTask("count_mc", count_choice), SyntheticTask("colour_vqa", colour_word, references=10),
        SyntheticTask("side_mc", side_choice), SyntheticTask("where_vqa", where_colour, references=10),
        SyntheticTask("ground_shape", ground_shape), SyntheticTask("digit_mc", number_choice),
    )},
}


# ---- the base model's own instruction tuning ------------------------------------------------------------

# The answer formats a base MLLM already knows from its own instruction tuning (LLaVA-1.5's SFT mix has
# such prompts); the base mixture uses them with its own question wordings, not the stream's.
SHORT_FORMS = ("Respond with one word .", "Answer in one word .")  # not the stream's wording
LETTER_ANSWER = "Answer with the option ' s letter from the given choices directly ."

BASE_WORDINGS = {
    "caption": ("Tell me about the image .", "Write a caption .", "Describe the picture ."),
    "colour": ("What colour is the shape ?", "Which colour is it ?", "Tell me the colour of the shape ."),
    "shape": ("Name the shape .", "Which shape is it ?", "What is the object ?"),
    "count": ("Count the shapes .", "How many shapes are there ?", "Tell me the number of shapes ."),
    "digit": ("Read the digit .", "What number is written ?", "Which digit is in the picture ?"),
    "where": ("Where is the {colour} shape ?", "Which region has the {colour} shape ?"),
    "box": ("Give the box of the {colour} shape .", "Tell me the box of the {colour} shape .",
            # LLaVA-1.5's own region prompt (its SFT mix has RefCOCO); the base answers it in its own number format
            "Please provide the bounding box coordinate of the region this sentence describes : the {colour} shape"),
    "count_letter": (f"How many shapes are there ? {{options}}\n{LETTER_ANSWER}",),
    "colour_letter": (f"Which colour is it ? {{options}}\n{LETTER_ANSWER}",),
    "shape_letter": (f"Which shape is it ? {{options}}\n{LETTER_ANSWER}",),
}


CLEAR_SHARE = 0.5  # of the base mixture's scenes drawn CLEAR, the others HARD (see cvit.synthetic.scenes)
# How often the base mixture asks each kind, relative to the others: boxes three times as often, as region data is a
# large part of LLaVA-1.5's SFT mix and a box is four numbers to get right where the other kinds are one word.
BASE_KIND_WEIGHTS = {kind: 3 if kind == "box" else 1 for kind in BASE_WORDINGS}


def base_conditions(rng: random.Random, clear_share: float) -> Conditions:
    return CLEAR if rng.random() < clear_share else HARD


def base_attribute(kind: str, rng: random.Random, clear_share: float) -> tuple[Scene, Annotate, Annotate]:
    """(scene, a free-form sentence answer, the bare value) for an attribute question of `kind`, each answer as
    an annotator gives it."""
    if kind == "digit":
        scene = sample_writing(rng, 1, BASE_COLOURS, base_conditions(rng, clear_share))

        def read(r: random.Random) -> str:
            return writing_seen(scene.writing, r)

        return scene, lambda r: f"The number is {read(r)} .", read
    if kind == "count":
        scene = sample_shapes(rng, rng.randint(1, 4), BASE_SHAPES, BASE_COLOURS,
                              conditions=base_conditions(rng, clear_share))

        def sentence(r: random.Random) -> str:
            n = count_seen(scene.shapes, r)
            return f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} shape{'' if n == 1 else 's'} ."

        return scene, sentence, lambda r: NUMBER_WORDS[count_seen(scene.shapes, r)]
    scene = sample_shapes(rng, 1, BASE_SHAPES, BASE_COLOURS, conditions=base_conditions(rng, clear_share))
    shape = scene.shapes[0]
    if kind == "colour":
        return scene, lambda r: f"The shape is {colour_seen(shape.look, r)} .", lambda r: colour_seen(shape.look, r)
    return scene, lambda r: f"It is a {shape_seen(shape, r)} .", lambda r: shape_seen(shape, r)


def base_sample(rng: random.Random, clear_share: float = CLEAR_SHARE) -> Sample:
    """One sample of the base-training mixture: the base colours and shapes, counts, single digits and positions
    asked in varied wordings, a `clear_share` of the scenes CLEAR (base training's first stage: all).

    The base model learns to see, to follow varied instructions and, half of the time, to answer in the
    short-answer format (and colours, shapes and counts as option letters), as LLaVA-1.5 is SFT'd before continual
    tuning; its short-answer instructions are its own, not the stream's ("Answer the question using a single word or
    phrase", which CoIN's start, Vicuna with a projector, has not seen either). The stream
    then asks in its own wordings and templates, shows two more colours and shapes, two-digit numbers, counts of one
    colour, and wants the grounding box bare where the base writes it inside a sentence (which CoIN's evaluation
    reads as no box, as it reads a chat model's prose), all in HARD scenes.
    """
    kind = rng.choices(tuple(BASE_KIND_WEIGHTS), weights=tuple(BASE_KIND_WEIGHTS.values()))[0]
    wording = rng.choice(BASE_WORDINGS[kind])
    conditions = base_conditions(rng, clear_share)
    if kind == "caption":
        scene = sample_shapes(rng, rng.randint(1, 3), BASE_SHAPES, BASE_COLOURS, conditions=conditions)
        return Sample(scene, wording, lambda r: caption_by(scene.shapes, r, house_style=True))
    if kind == "where":
        scene = sample_shapes(rng, rng.randint(2, 3), BASE_SHAPES, BASE_COLOURS, True, conditions)
        target = rng.choice(scene.shapes)
        return Sample(scene, wording.format(colour=target.colour), lambda r: f"It is at the {target.where} .")
    if kind == "box":  # the list in a sentence, as a chat model answers; the stream wants the bare list
        scene = sample_shapes(rng, rng.randint(2, 3), BASE_SHAPES, BASE_COLOURS, True, conditions)
        target = rng.choice(scene.shapes)
        return Sample(scene, wording.format(colour=target.colour),
                      lambda r: f"The box is {format_box(box_drawn(target, r))} .")
    if kind == "count_letter":
        scene = sample_shapes(rng, rng.randint(1, 4), BASE_SHAPES, BASE_COLOURS, conditions=conditions)
        return Sample(scene, wording.format(options=options_text(NUMBER_WORDS[1:5])),
                      lambda r: LETTERS[count_seen(scene.shapes, r) - 1])
    if kind in ("colour_letter", "shape_letter"):  # the base's own options: its four colours or kinds, in order
        scene = sample_shapes(rng, 1, BASE_SHAPES, BASE_COLOURS, conditions=conditions)
        shape = scene.shapes[0]
        if kind == "colour_letter":
            return Sample(scene, wording.format(options=options_text(BASE_COLOURS)),
                          lambda r: letter_of(BASE_COLOURS, colour_seen(shape.look, r), shape.colour))
        return Sample(scene, wording.format(options=options_text(BASE_SHAPES)),
                      lambda r: letter_of(BASE_SHAPES, shape_seen(shape, r), shape.shape))
    scene, sentence, value = base_attribute(kind, rng, clear_share)
    if rng.random() < 0.5:
        return Sample(scene, f"{wording}\n{rng.choice(SHORT_FORMS)}", value)
    return Sample(scene, wording, sentence)
