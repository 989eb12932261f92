"""The embedded synthetic CVIT benchmark: a procedural world of coloured shapes and digits."""
