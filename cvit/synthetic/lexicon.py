"""Every word the synthetic world can say, and the tiny tokenizer's tokens for them.

The tiny tokenizer (see `cvit.model.tiny`) gives each word one token, as a byte-level vocabulary made training
steps 2.5-3x slower at this size, and writes spaces the way Llama's tokenizer does: a word token carries the space
before it ("▁red"), and numbers are split into single digits, a lone "▁" standing for the space before a
number ("37" -> "▁", "3", "7"; "0.25" -> "0", ".", "2", "5"). So every number and box the world writes is made
of the ten digit tokens the base model already produces, as a real LLM's numbers are. `vocabulary()` lists the
tokens.
"""

from __future__ import annotations

import re

from cvit.model.prompting import LLAVA_SYSTEM

# The base model knows the first four colours and shapes (its own instruction tuning showed them); the stream's
# tasks also show the two others, which only continual tuning teaches, as real streams bring new categories.
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
BASE_COLOURS = ("red", "yellow", "green", "blue")
SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
BASE_SHAPES = ("circle", "square", "triangle", "cross")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS = tuple(str(d) for d in range(10))
LETTERS = ("A", "B", "C", "D", "E", "F")

# Words of questions, answers, captions, base-training sentences and every instruction template of
# configs/benchmark/synthetic*.yaml (a test checks the templates tokenize without unknown words).
PHRASES = """
What colour is the shape ? Which shape is it ? How many shapes are in the image there
What is the object in the image What number is written in the image
Please provide the bounding box coordinate of region this sentence describes : a an and at
Describe the image briefly Is on left or right side of picture
Answer with option ' s letter from given choices directly
Answer question using single word phrase Reply Respond only one Give short answer
Use just Write caption sentence Provide coordinates as x1 y1 x2 y2 Output box
Tell me about The shapes It is I see Where Name Count Read digit This shows
[ ] , . number colours its for which choose pick correct picture object written
region has of Pick Which Tell give There
in upper lower corner half with see can image shows on dark background small large
"""
CHAT_WORDS = ("USER", "ASSISTANT")  # the turns of every chat format, and the llava_v1 system sentence below


SPACE = "\u2581"  # the space a token carries, as in Llama's and SentencePiece's vocabularies
# after spaces become SPACE: a word with the space before it, a mark with or without one, a lone space, a digit
TOKEN_PATTERN = rf"{SPACE}?[^\W\d_]+|{SPACE}?[^\w\s{SPACE}]|{SPACE}|\d"


def split_words(text: str) -> list[str]:
    """`text`'s tokens as the tiny tokenizer cuts them (newlines read as spaces, a space put before the first
    word)."""
    spaced = text.replace("\n", " ").replace(" ", SPACE)
    return re.findall(TOKEN_PATTERN, spaced if spaced.startswith(SPACE) else SPACE + spaced)


def vocabulary() -> list[str]:
    """All tokens of the world, sorted and unique (special tokens excluded): every word with its space, every
    punctuation mark with and without one, the lone space and the ten digits."""
    words = COLOURS + SHAPES + NUMBER_WORDS + LETTERS + CHAT_WORDS + QUADRANTS + (PHRASES, LLAVA_SYSTEM)
    tokens = {token for text in words for token in split_words(text)} | set(DIGITS) | {SPACE}
    tokens |= {token.lstrip(SPACE) for token in tokens if not token.lstrip(SPACE).isalpha()}
    return sorted(tokens)
