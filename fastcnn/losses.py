"""Losses with Keras's names.  Both are computed fused with the softmax of the last layer.

A model whose last layer ends in softmax is trained on its logits with one fused
softmax + cross-entropy kernel: the same value as cross-entropy on the softmax
output, without its overflow, and one launch instead of three.  The model hands the
loss its logits (``fused_gradient``); the loss adds the batch's loss sum and correct
count to the running totals and returns the gradient the backward pass starts from.
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

    def fused_gradient(self, logits, labels, totals, backend):
        """Cross-entropy of softmax(logits) against ``labels`` (what prepare_labels made, on
        the device), in one backend ``softmax_cross_entropy`` call: adds [sum of the batch's
        losses, number correct] to ``totals`` (float64 (2,) on the device, no synchronisation)
        and returns d(mean loss)/d(logits) = (softmax(logits) - labels) / batch, in the logits'
        dtype.  Class indices and one-hot rows are the same call (the primitive tells them apart)."""
        return backend.softmax_cross_entropy(logits, labels, totals)

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
