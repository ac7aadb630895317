"""One process-wide random generator: initial weights, shuffling, dropout seeds."""
import numpy as np

_generator = [np.random.default_rng()]


def manual_seed(seed: int) -> None:
    """Make weight initialisation, shuffling and dropout masks reproducible."""
    _generator[0] = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator[0]


def next_seed() -> int:
    """A fresh 64-bit seed drawn from the generator (for a dropout layer's Philox key)."""
    return int(_generator[0].integers(0, 2**63 - 1))
