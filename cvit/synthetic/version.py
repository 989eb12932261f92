"""The synthetic world's version: its benchmark generator and its base model together.

Raised whenever a change to the generator, the tiny model or base training changes the files or the base
weights, so that a benchmark, a base model or a run of another world is recognised and refused.
"""

WORLD_VERSION = 4
