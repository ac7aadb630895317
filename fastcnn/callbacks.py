"""Callbacks for Sequential.fit, Keras-style.

fit() calls, in order: on_train_begin(logs), then per epoch on_epoch_begin(epoch, logs),
on_batch_end(batch, logs) after every batch, on_epoch_end(epoch, logs), and finally
on_train_end(logs).  Each callback gets ``self.model`` (set by fit) and may set
``model.stop_training = True``.

Batch logs are a ``BatchLogs`` mapping: 'batch', 'size' (images in this batch),
'seen' (images so far this epoch) and 'steps' (batches per epoch) are plain numbers;
'loss' and 'accuracy' are the running epoch means, read from the device only when
a callback asks for them (on the GPU each read is a synchronisation, so a
progress bar should read them at most a few times per second).
Epoch logs are a plain dict with 'loss', 'accuracy' and, with validation data,
'val_loss', 'val_accuracy'.
"""
from __future__ import annotations

from collections.abc import Mapping


class Callback:
    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_end(self, logs=None): ...


class CallbackList(Callback):
    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    def set_model(self, model):
        for c in self.callbacks:
            c.set_model(model)

    def on_train_begin(self, logs=None):
        for c in self.callbacks:
            c.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for c in self.callbacks:
            c.on_epoch_begin(epoch, logs)

    def on_batch_end(self, batch, logs=None):
        for c in self.callbacks:
            c.on_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        for c in self.callbacks:
            c.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        for c in self.callbacks:
            c.on_train_end(logs)


class History(Callback):
    """``history.history`` maps each metric name to its list of per-epoch values."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))


class BatchLogs(Mapping):
    """Per-batch logs whose 'loss' and 'accuracy' are computed only when read."""

    def __init__(self, plain: dict, lazy: dict):
        self._plain = plain
        self._lazy = lazy  # name -> zero-argument function

    def __getitem__(self, key):
        if key in self._plain:
            return self._plain[key]
        return self._lazy[key]()

    def __iter__(self):
        yield from self._plain
        yield from self._lazy

    def __len__(self):
        return len(self._plain) + len(self._lazy)
