"""Evaluation: answer normalisation, per-task scorers and continual-learning metrics."""
