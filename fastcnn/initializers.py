"""Weight initialisers by Keras's names: ``glorot_uniform`` (the default for kernels),
``glorot_normal``, ``he_uniform``, ``he_normal``, ``lecun_uniform``, ``lecun_normal``,
``random_uniform``, ``random_normal``, ``truncated_normal``, ``zeros`` (biases' default),
``ones``.  Keras's class names (``GlorotUniform``, ``HeNormal``...) are accepted too.

Keras's rules: fans from the kernel's shape (receptive field x input / output channels);
the ``*_normal`` ones draw from a normal truncated at two standard deviations, its
standard deviation divided by 0.8796... so that the kept values have the one asked for;
``random_*`` and ``truncated_normal`` use Keras's defaults (0.05).  Draws come from
fastcnn's generator (``fastcnn.manual_seed``).
"""
from __future__ import annotations

import math

import numpy as np

from .seeding import generator

_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def _fans(shape):
    if len(shape) < 2:
        return shape[0] if shape else 1, shape[0] if shape else 1
    field = int(np.prod(shape[:-2]))
    return field * shape[-2], field * shape[-1]


def _truncated(shape, stddev):
    rng = generator()
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * stddev


def _uniform(shape, limit):
    return generator().uniform(-limit, limit, size=shape)


def _scaled(scale, mode, normal):
    def init(shape):   # variance scale / fan; fan = fan_in, or (fan_in + fan_out) / 2; at least 1
        fan_in, fan_out = _fans(shape)
        num, den = (scale, max(1.0, fan_in)) if mode == "fan_in" else (2.0 * scale, max(2.0, fan_in + fan_out))
        if normal:
            return _truncated(shape, math.sqrt(num / den) / _TRUNCATED_STD)
        return _uniform(shape, math.sqrt(3.0 * num / den))   # Glorot: sqrt(6 / (fan_in + fan_out))
    return init


INITIALIZERS = {
    "glorot_uniform": _scaled(1.0, "fan_avg", False),
    "glorot_normal": _scaled(1.0, "fan_avg", True),
    "he_uniform": _scaled(2.0, "fan_in", False),
    "he_normal": _scaled(2.0, "fan_in", True),
    "lecun_uniform": _scaled(1.0, "fan_in", False),
    "lecun_normal": _scaled(1.0, "fan_in", True),
    "random_uniform": lambda shape: _uniform(shape, 0.05),
    "random_normal": lambda shape: generator().standard_normal(shape) * 0.05,
    "truncated_normal": lambda shape: _truncated(shape, 0.05),
    "zeros": np.zeros,
    "ones": np.ones,
}


_DEFAULTS = {"random_uniform": {"minval": -0.05, "maxval": 0.05}, "random_normal": {"mean": 0.0, "stddev": 0.05},
             "truncated_normal": {"mean": 0.0, "stddev": 0.05}}  # Keras's, as its configs spell them


def canonical(identifier) -> str:
    """The snake-case name of an initialiser given by name ('he_normal', 'HeNormal') or as
    Keras serialises it ({'class_name': 'HeNormal', 'config': {...}}; only a seed may be set)."""
    name = identifier.get("class_name") if isinstance(identifier, dict) else identifier
    if isinstance(name, str):
        snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
        snake = {"zero": "zeros", "one": "ones"}.get(snake, snake)
        if snake in INITIALIZERS:
            if isinstance(identifier, dict):
                config = {k: v for k, v in (identifier.get("config") or {}).items()
                          if k != "seed" and v is not None and _DEFAULTS.get(snake, {}).get(k) != v}
                if config:
                    raise ValueError(f"initializer {name} with {config}: only the defaults of Keras's named "
                                     f"initializers are built")
            return snake
    raise ValueError(f"unknown initializer {identifier!r}; use one of {', '.join(INITIALIZERS)}")


def initialize(name: str, shape) -> np.ndarray:
    """A new float32 array of ``shape`` drawn by the initialiser ``name``."""
    return np.asarray(INITIALIZERS[canonical(name)](tuple(shape)), np.float32)
