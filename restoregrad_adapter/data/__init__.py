"""Paired training data: built-in example data generated in code (nothing downloaded) and readers.

Needs the `images` or `audio` extra (numpy, scipy, Pillow, scikit-image, soundfile)."""

import numpy as np


def check_rng(rng) -> np.random.Generator:
    """Raise a ValueError unless ``rng`` is a ``numpy.random.Generator``."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            "rng must be a numpy.random.Generator "
            f"(e.g. numpy.random.default_rng(0)), got {type(rng).__name__}"
        )
    return rng
