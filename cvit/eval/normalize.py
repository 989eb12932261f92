"""VQA/EvalAI-style answer normalisation, written after the rules of the official VQA evaluation."""

from __future__ import annotations

import string
import unicodedata

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Apostrophe-less spellings -> the VQA answers' form; ambiguous ones (its, ill, hed, lets) stay as they are.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "im": "i'm", "isnt": "isn't", "itll": "it'll", "ive": "i've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "shant": "shan't", "shes": "she's",
    "shouldnt": "shouldn't", "shouldve": "should've", "thats": "that's", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't",
    "werent": "weren't", "weve": "we've", "whats": "what's", "wheres": "where's", "whos": "who's",
    "wont": "won't", "wouldnt": "wouldn't", "wouldve": "would've", "yall": "y'all", "youd": "you'd",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}


def _punctuation_to_space(text: str) -> str:
    out = []
    for i, char in enumerate(text):
        before, after = text[i - 1:i].isdecimal(), text[i + 1:i + 2].isdecimal()
        if char == "'" or not (char in string.punctuation or unicodedata.category(char).startswith("P")):
            out.append(char)
        elif char == ".":
            out.append("." if after else "")  # 0.5 and .5 keep their point; u.s. -> us
        elif char == "," and before and after:
            continue  # 1,000 -> 1000
        else:
            out.append(":" if char == ":" and before and after else " ")  # 10:30 stays
    return "".join(out)


def normalize_answer(text: str) -> str:
    """Lowercase and strip; read a typographic apostrophe as '; drop commas inside numbers and periods
    not followed by a digit; turn every other punctuation mark (ASCII or Unicode, except apostrophes and
    a colon between digits) into a space; map number words zero..ten (and "none", as the VQA eval does)
    to digits; drop the articles a/an/the; restore common contractions ("dont" -> "don't"); collapse
    whitespace."""
    words = _punctuation_to_space(text.lower().strip().replace("\u2019", "'")).split()
    words = [NUMBER_WORDS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)
