"""PTB tokenisation of captions with the Stanford CoreNLP 3.4.1 jar that pycocoevalcap ships, as its
`PTBTokenizer.tokenize` does (lower-cased, one caption per line, its PUNCTUATIONS dropped), but with the
temporary input file in the system temp folder: the library writes it beside its installed jar, which fails
from a read-only install (a cluster's shared environment). Written here because the library offers no way to
move that file."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pycocoevalcap.tokenizer import ptbtokenizer

JAR = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)


def ptb_tokenize(captions: dict[Any, list[dict[str, str]]]) -> dict[Any, list[str]]:
    """{key: [{"caption": text}, ...]} -> {key: [tokenised text, ...]}, the contract of PTBTokenizer.tokenize."""
    keys = [key for key, items in captions.items() for _ in items]
    sentences = "\n".join(item["caption"].replace("\n", " ") for items in captions.values() for item in items)
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as handle:
        handle.write(sentences.encode())
    try:
        command = ["java", "-cp", str(JAR), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
                   handle.name]
        lines = subprocess.run(command, capture_output=True, check=True).stdout.decode().split("\n")
    finally:
        os.unlink(handle.name)
    tokenized: dict[Any, list[str]] = {}
    for key, line in zip(keys, lines, strict=False):  # the jar ends its output with a newline
        words = [word for word in line.rstrip().split(" ") if word not in ptbtokenizer.PUNCTUATIONS]
        tokenized.setdefault(key, []).append(" ".join(words))
    return tokenized
