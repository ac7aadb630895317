"""Losses with Keras's names.  Both are computed fused with the softmax of the last layer.

A model whose last layer ends in softmax is trained on its logits with one fused
softmax + cross-entropy kernel: the same value as cross-entropy on the softmax
output, without its overflow, and one launch instead of three.
"""
from __future__ import annotations

import numpy as np

from .functional import check_labels


class CategoricalCrossentropy:
    """Labels one-hot (batch, classes)."""
    name = "categorical_crossentropy"
    sparse = False

    def __init__(self, from_logits=False):
        self.from_logits = from_logits

    def prepare_labels(self, y, n: int, classes: int) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 2:
            raise ValueError(f"categorical_crossentropy needs one-hot labels of shape ({n}, {classes}), "
                             f"got shape {y.shape}; use to_categorical(y) or 'sparse_categorical_crossentropy'")
        return check_labels(y, n, classes)


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Labels are class indices (batch,)."""
    name = "sparse_categorical_crossentropy"
    sparse = True

    def prepare_labels(self, y, n: int, classes: int) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] != 1:
            raise ValueError(f"sparse_categorical_crossentropy needs class indices of shape ({n},), got shape "
                             f"{y.shape}; use 'categorical_crossentropy' for one-hot labels")
        return check_labels(y, n, classes)


LOSSES = {c.name: c for c in (CategoricalCrossentropy, SparseCategoricalCrossentropy)}


def get(identifier):
    if isinstance(identifier, CategoricalCrossentropy):
        return identifier
    if isinstance(identifier, str) and identifier in LOSSES:
        return LOSSES[identifier]()
    raise ValueError(f"unknown loss {identifier!r}; use one of {sorted(LOSSES)}")
