"""The batches of one fit: arrays (gathered on the device or the host) or a batch source.

Both kinds answer fit the same way: ``steps`` and ``batch_size``, ``graph_shapes`` (the shapes
a captured step is recorded with, or None), ``start_epoch`` / ``end_epoch``, ``get(i)`` (batch
i, or into ``out`` on the device), ``full(i)``, and ``get_state`` / ``set_state`` (what a
checkpoint records of them).
"""
from __future__ import annotations

import math

import numpy as np

from . import distribution
from .seeding import generator


def check_batch_size(batch_size, default: int = 32) -> int:
    """fit/evaluate/predict's batch_size checked: a positive integer (None: Keras's 32)."""
    if batch_size is None:
        return default
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _device_free_bytes(backend) -> float:
    """Free memory of the backend's GPU, the memory pool's cached blocks included; no bound
    for an array module without CUDA (the CPU reference, in tests of the GPU path)."""
    cuda = getattr(backend.xp, "cuda", None)
    if cuda is None:
        return math.inf
    free, _ = cuda.runtime.memGetInfo()
    return free + backend.xp.get_default_memory_pool().free_bytes()


def is_batch_source(x) -> bool:
    """True for a batch source (Keras's Sequence protocol: len() and [i] -> (x, y)), not arrays."""
    return (not hasattr(x, "shape") and not isinstance(x, (list, tuple, dict))
            and hasattr(x, "__len__") and hasattr(x, "__getitem__"))


class ArrayBatches:
    """The batches of one fit over arrays.  On the GPU the whole training set is copied to the
    device once (when it takes at most DEVICE_SHARE of the GPU's free memory) and each batch
    is a gather there: no host round trip per step, so the host only enqueues work.
    Otherwise each batch is gathered on the host (only that batch is copied)."""
    DEVICE_SHARE = 0.5  # the rest stays for the step's activations, gradients and workspaces

    def __init__(self, backend, x, y, batch_size, shuffle, on_device):
        self.B, self.batch_size, self.shuffle = backend, batch_size, shuffle
        self.samples = n = x.shape[0]
        self.steps = math.ceil(n / batch_size)
        self.dist = distribution.distribution()   # data-parallel: this process's slice of each batch
        local = self.dist.local_batch(batch_size) if self.dist else batch_size
        self.graph_shapes = ((local,) + x.shape[1:], (local,) + y.shape[1:], y.dtype) \
            if n >= batch_size else None
        self.on_device = on_device and 4 * x.size + y.nbytes <= self.DEVICE_SHARE * _device_free_bytes(backend)
        if self.on_device:
            x, y = backend.asarray(x, np.float32), backend.asarray(y)
        self.x, self.y, self.order = x, y, None

    def start_epoch(self) -> None:
        """This epoch's order of the rows: a new permutation with shuffle, else as given."""
        order = generator().permutation(self.samples) if self.shuffle else None
        self.order = order if order is None or not self.on_device else self.B.asarray(order.astype(np.int32))

    def end_epoch(self) -> None:
        if self.dist:   # the next epoch's graph is captured with a full batch's share
            self.dist.full_batch(self)

    def get_state(self):
        return None   # the order comes from fastcnn's generator, checkpointed on its own

    def set_state(self, state) -> None:
        pass

    def full(self, i) -> bool:
        return (i + 1) * self.batch_size <= self.samples

    def get(self, i, out=None):
        """Batch i of this epoch's order.  On the device its rows are picked by our
        gather_rows kernel (no CuPy indexing kernel), into ``out`` = (x, y) when given (a
        captured step's static inputs: no further copy), else into new arrays."""
        start, stop = i * self.batch_size, min((i + 1) * self.batch_size, self.samples)
        if self.dist:
            start, stop = self.dist.take(start, stop)
        if not self.on_device:
            idx = slice(start, stop) if self.order is None else self.order[start:stop]
            return self.x[idx], self.y[idx]
        if out is None:
            xp = self.B.xp
            out = (xp.empty((stop - start,) + self.x.shape[1:], self.x.dtype),
                   xp.empty((stop - start,) + self.y.shape[1:], self.y.dtype))
        for dst, src in zip(out, (self.x, self.y)):
            if self.order is None:
                self.B.copy(dst, src[start:stop])
            else:
                self.B.gather_rows(dst, src, self.order[start:stop])
        return out


class SourceBatches:
    """The batches of one fit over a batch source: host batches as the source gives them,
    checked, labels prepared for the loss; the source's first batch sets the batch size
    (the captured step's shape; other sizes run eagerly).  on_epoch_end() after each epoch."""
    on_device = False

    def __init__(self, model, source):
        self.model, self.source = model, source
        self.steps = len(source)
        if self.steps < 1:
            raise ValueError("fit: the batch source is empty (len() == 0)")
        self.first = None
        self.dist = distribution.distribution()   # data-parallel: this process's slice of each batch
        self.first = self.get(0)   # handed out again as the first epoch's batch 0 (decoded once)
        x0, y0 = self.first
        self.batch_size = self.dist.share[2] if self.dist else x0.shape[0]
        if self.dist:
            self.dist.local_batch(self.batch_size)
        self.samples = None   # unknown until every batch was seen
        self.graph_shapes = (x0.shape, y0.shape, y0.dtype)

    def start_epoch(self) -> None:
        pass

    def end_epoch(self) -> None:
        if self.dist:   # the next epoch's graph is captured with a full batch's share
            self.dist.full_batch(self)
        if hasattr(self.source, "on_epoch_end"):
            self.source.on_epoch_end()

    def get_state(self):
        """The source's state (its order's random generator...) when it has one (get_state())."""
        return self.source.get_state() if hasattr(self.source, "get_state") else None

    def set_state(self, state) -> None:
        if state is not None and hasattr(self.source, "set_state"):
            self.source.set_state(state)
            self.first = None   # decoded in the order the source had before

    def full(self, i) -> bool:
        return False  # never on the device

    def get(self, i, out=None):
        if i == 0 and self.first is not None:
            first, self.first = self.first, None
            return first
        xb, yb = self.source[i]
        xb = np.asarray(self.model.check_input(xb, f"batch {i}'s x"), np.float32)
        yb = self.model.prepare_labels(yb, xb.shape[0])
        if self.dist:
            lo, hi = self.dist.take(0, xb.shape[0])
            xb, yb = xb[lo:hi], yb[lo:hi]
        return xb, yb


def fits_graph(batches, xb) -> bool:
    """xb has the captured step's shape and, in data-parallel training, is a slice of a full
    batch (the offset and gradient weight the step was captured with)."""
    dist = batches.dist
    return len(xb) == batches.graph_shapes[0][0] and (dist is None or dist.share[2] == batches.batch_size)
