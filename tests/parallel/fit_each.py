"""`cvit fit` once per argument list, in turn, inside one pair of processes: Lightning's launcher re-runs this
script for rank 1, which then goes through the same lists, so the two-process checks of every method pay for
starting two Python processes (about 8 s each on 2 cores, mostly imports) once instead of once per method.

Usage: python tests/parallel/fit_each.py RUNS_JSON, where the file holds a list of `cvit fit` argument lists
(without the leading `fit`); exits with the first non-zero code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cvit.cli import main


def fit_each(runs_file: str) -> int:
    for arguments in json.loads(Path(runs_file).read_text()):
        code = main(["fit", *arguments])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(fit_each(sys.argv[1]))
