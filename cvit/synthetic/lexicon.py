"""Every word the synthetic world can say, so the tiny model's closed vocabulary covers it.

The tiny tokenizer is word-level (one token per word, see `cvit.model.tiny`): a byte-level
vocabulary made training steps 2.5-3x slower at this size. `vocabulary()` lists its words.
"""

from __future__ import annotations

import re

from cvit.model.prompting import LLAVA_SYSTEM

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS = tuple(str(d) for d in range(10))
BOX_VALUES = ("0.00", "0.50", "1.00")
LETTERS = ("A", "B", "C", "D")

# Words of questions, answers, captions, base-training sentences and every instruction template of
# configs/benchmark/synthetic.yaml (a test checks the templates tokenize without unknown words).
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
"""
CHAT_WORDS = ("USER", "ASSISTANT")  # the turns of every chat format, and the llava_v1 system sentence below


def vocabulary() -> list[str]:
    """All words of the world, sorted and unique (special tokens excluded)."""
    words = set(COLOURS + SHAPES + NUMBER_WORDS + DIGITS + BOX_VALUES + LETTERS + CHAT_WORDS)
    for quadrant in QUADRANTS:
        words.update(quadrant.split())
    words.update(split_words(PHRASES) + split_words(LLAVA_SYSTEM))
    return sorted(words)


WORD_PATTERN = r"\d\.\d+|\w+|[^\w\s]"


def split_words(text: str) -> list[str]:
    """Split text the way the tiny tokenizer's pre-tokenizer does (decimals stay whole)."""
    return re.findall(WORD_PATTERN, text)
