"""Callbacks for Sequential.fit, Keras-style.

fit() calls, in order: on_train_begin(logs), then per epoch on_epoch_begin(epoch, logs),
on_batch_end(batch, logs) after every batch, on_epoch_end(epoch, logs), and finally
on_train_end(logs).  Each callback gets ``self.model`` (set by fit) and may set
``model.stop_training = True``; before training, ``set_params`` gives each one fit's
``{'verbose', 'epochs', 'steps'}`` (``callback.params``, as Keras's; ``History.params`` too).

Batch logs are a ``BatchLogs`` mapping: 'batch', 'size' (images in this batch),
'seen' (images so far this epoch) and 'steps' (batches per epoch) are plain numbers;
'loss' and 'accuracy' are the running epoch means, read from the device only when
a callback asks for them (on the GPU each read is a synchronisation, so a
progress bar should read them at most a few times per second).
Epoch logs are a plain dict with 'loss', 'accuracy' and, with validation data,
'val_loss', 'val_accuracy' (compiled with metrics=['acc']: 'acc' and 'val_acc', as Keras names them).

A callback with a state that training depends on (counters, the best value so far, the
record of past epochs) gives it as ``get_state()`` (JSON values, or lists of arrays) and takes
it back in ``set_state(state)``: ``Sequential.save_checkpoint`` saves the states of fit's
callbacks, and the fit after ``load_checkpoint`` restores them (after ``on_train_begin``),
matched by class name and order.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

from .saving import atomic_write, dumps_json


class Callback:
    model = None
    epoch_end_order = 0   # on_epoch_end runs in this order (stable): a check first, checkpoints last
    params: dict = {}   # fit's: {'verbose', 'epochs', 'steps'}, as Keras's

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = dict(params)

    def on_train_begin(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_end(self, logs=None): ...


class CallbackList(Callback):
    def __init__(self, callbacks):
        self.callbacks = list(callbacks)
        self._epoch_end = sorted(self.callbacks, key=lambda c: c.epoch_end_order)

    def set_model(self, model):
        for c in self.callbacks:
            c.set_model(model)

    def set_params(self, params):
        for c in self.callbacks:
            c.set_params(params)

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
        for c in self._epoch_end:
            c.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        for c in self.callbacks:
            c.on_train_end(logs)


def _keyed(callbacks):
    """(key, callback) pairs: the class name and its rank among callbacks of that class."""
    seen: dict[str, int] = {}
    for c in callbacks:
        name = type(c).__name__
        seen[name] = seen.get(name, -1) + 1
        yield f"{name}/{seen[name]}", c


def callback_states(callbacks) -> dict:
    """{key: state} of the callbacks that have a state (``get_state()``)."""
    found = {}
    for key, c in _keyed(callbacks):
        state = c.get_state() if hasattr(c, "get_state") else None
        if state is not None:
            found[key] = state
    return found


def restore_callback_states(callbacks, states: dict) -> None:
    """Give each callback its saved state (by key); one without a saved state starts afresh."""
    for key, c in _keyed(callbacks):
        if key in states and hasattr(c, "set_state"):
            c.set_state(states[key])


class History(Callback):
    """``history.history`` maps each metric name to its list of per-epoch values.  After
    ``load_checkpoint`` it starts with the checkpoint's epochs."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))

    def get_state(self):
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    def set_state(self, state):
        self.epoch = list(state["epoch"])
        self.history = {k: list(v) for k, v in state["history"].items()}


class Diverged(Exception):
    """Raised by TerminateOnNaN inside fit, which ends at once (the epoch in progress is not
    completed) and keeps the message in ``model.stop_reason``."""


class TerminateOnNaN(Callback):
    """Keras's: stop training at the first non-finite (NaN or infinite) loss.  Unlike Keras's,
    the epoch in progress then does not end: no epoch-end callback runs (no checkpoint, no
    history of it), so the files of the last good epoch stay as they were; ``fit`` returns with
    ``model.stop_reason`` saying at which epoch and batch.  The epoch's logs are checked too
    (a last update can leave the weights non-finite: the validation loss then is).

    The running loss is read every ``every`` batches and at each epoch's last one: by default
    every batch on the CPU, where a read costs nothing, and every 50 on the GPU, where a read
    waits for the device (a batch sum that is not finite keeps the running total non-finite,
    so no bad batch is missed; the message then names the batches since the last read).
    """
    epoch_end_order = -1   # before anything records or saves the epoch
    GPU_EVERY = 50

    def __init__(self, every=None):
        if every is not None and int(every) < 1:
            raise ValueError(f"TerminateOnNaN every must be >= 1, got {every}")
        self.every = every

    def on_train_begin(self, logs=None):
        device = (logs or {}).get("device", "cpu")
        self._every = int(self.every or (1 if device == "cpu" else self.GPU_EVERY))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._unchecked = epoch, None   # the first batch not read yet

    def on_batch_end(self, batch, logs=None):
        if self._unchecked is None:
            self._unchecked = batch
        if (batch + 1) % self._every and batch + 1 != logs["steps"]:
            return
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            where = (f"batch {batch + 1}" if self._unchecked == batch else
                     f"one of batches {self._unchecked + 1}-{batch + 1} (the loss is read every {self._every})")
            print(f"\nEpoch {self._epoch + 1}, {where}: invalid loss ({loss}), terminating training",
                  file=sys.stderr)
            raise Diverged(f"the loss became {loss} in epoch {self._epoch + 1}, {where}")
        self._unchecked = batch + 1

    def on_epoch_end(self, epoch, logs=None):
        bad = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not math.isfinite(v)}
        if bad:
            names = ", ".join(f"{k} {v}" for k, v in bad.items())
            print(f"\nEpoch {epoch + 1}: {names}, terminating training", file=sys.stderr)
            raise Diverged(f"the weights stopped being finite at the end of epoch {epoch + 1} ({names})")


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


# ---------------------------------------------------------------------------- progress
def _fmt_logs(logs, keys=("loss", "accuracy", "acc", "val_loss", "val_accuracy", "val_acc")) -> str:
    return " - ".join(f"{k}: {float(logs[k]):.4f}" for k in keys if k in logs)


class ProgressBar(Callback):
    """A live bar per epoch: loss, accuracy, images/s and time left (tqdm).

    The running loss and accuracy are read at most once per ``min_interval`` seconds
    (and at the last batch), because on the GPU every read waits for the device.
    With ``verbose=2``, or when tqdm is not installed, it prints one plain line per
    epoch instead.  ``epochs`` (or ``set_params({'epochs': ...})``) only labels the bar.
    """

    def __init__(self, epochs=None, verbose=1, file=None, min_interval=0.25):
        self.epochs = epochs
        self.verbose = verbose
        self.file = file
        self.min_interval = min_interval
        self._tqdm = None
        if verbose == 1:
            try:
                from tqdm.auto import tqdm
                self._tqdm = tqdm
            except ImportError:
                pass  # plain per-epoch lines; `pip install fastcnn[progress]` for the bar
        self._bar = None

    def set_params(self, params):  # Keras's hook: fit passes its parameters
        super().set_params(params)
        self.epochs = params.get("epochs", self.epochs)

    def on_train_begin(self, logs=None):
        if logs and logs.get("epochs"):  # fit passes its parameters here
            self.epochs = logs["epochs"]

    def _out(self):
        return self.file if self.file is not None else sys.stdout

    def _label(self, epoch):
        return f"Epoch {epoch + 1}/{self.epochs}" if self.epochs else f"Epoch {epoch + 1}"

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.perf_counter()
        self._last_read = -math.inf
        self._seen = 0
        self._bar = None  # made at the first batch, when the number of steps is known

    def on_batch_end(self, batch, logs=None):
        self._seen = logs["seen"]
        if self._tqdm is None:
            return
        steps = logs["steps"]
        if self._bar is None:
            self._bar = self._tqdm(total=steps, desc=self._label(self._epoch), unit="batch",
                                   file=self._out(), leave=True, dynamic_ncols=True)
        now = time.perf_counter()
        if now - self._last_read >= self.min_interval or batch + 1 == steps:
            self._last_read = now
            rate = self._seen / max(now - self._start, 1e-9)
            acc = logs.get("accuracy", logs.get("acc"))
            self._bar.set_postfix_str(f"loss={float(logs['loss']):.4f} "
                                      + (f"acc={float(acc):.4f} " if acc is not None else "")
                                      + f"{rate:,.0f} img/s", refresh=False)
        self._bar.update(batch + 1 - self._bar.n)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self._start
        rate = self._seen / max(seconds, 1e-9)
        if self._bar is not None:
            logs = {{"acc": "accuracy", "val_acc": "val_accuracy"}.get(k, k): v for k, v in logs.items()}
            parts = [f"loss={logs['loss']:.4f}" if "loss" in logs else "",
                     f"acc={logs['accuracy']:.4f}" if "accuracy" in logs else "",
                     f"val_loss={logs['val_loss']:.4f}" if "val_loss" in logs else "",
                     f"val_acc={logs['val_accuracy']:.4f}" if "val_accuracy" in logs else "",
                     f"{rate:,.0f} img/s"]
            self._bar.set_postfix_str(" ".join(p for p in parts if p), refresh=True)
            self._bar.close()
            self._bar = None
        elif self.verbose:
            line = f"{self._label(epoch)} - {seconds:.1f}s - {rate:,.0f} img/s"
            if logs:
                line += " - " + _fmt_logs(logs)
            print(line, file=self._out(), flush=True)

    def on_train_end(self, logs=None):
        if self._bar is not None:  # training stopped inside an epoch
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------------------- files
def atomic_write_text(path, text: str) -> None:
    """Write a text file so that a crash leaves either the old file or the new one, never half."""
    atomic_write(path, lambda f: f.write(text), binary=False)


class _Monitor:
    """Keras's rule for 'better': ``mode`` 'min', 'max', or 'auto' (max for a name with 'acc')."""

    def __init__(self, monitor, mode, min_delta):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.min_delta = monitor, abs(float(min_delta))
        self.sign = 1.0 if mode == "max" or (mode == "auto" and "acc" in monitor) else -1.0
        self.warned = False
        self.reset()

    def reset(self):
        self.best = -math.inf  # in sign * value units: higher is better

    def value(self, logs, who):
        """The monitored value of this epoch, or None (warned once) when logs lack it."""
        value = (logs or {}).get(self.monitor)
        if value is None and not self.warned:
            self.warned = True
            print(f"{who}: {self.monitor!r} is not in the epoch logs (they have {sorted(logs or {})}); "
                  f"it does nothing (validation_data gives val_loss and val_accuracy)", file=sys.stderr)
        return value

    def improved(self, value) -> bool:
        if self.sign * float(value) - self.min_delta > self.best:
            self.best = self.sign * float(value)
            return True
        return False


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without improvement of
    ``monitor``, as Keras's; the AlexNet paper divided it by 10 when the validation error stopped
    improving.  On the GPU the captured step is captured anew with the new rate.  The new rate
    is printed and logged as 'learning_rate'."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, verbose=1):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau factor must be in (0, 1), got {factor}")
        self.watch = _Monitor(monitor, mode, min_delta)
        self.factor, self.patience, self.cooldown = float(factor), int(patience), int(cooldown)
        self.min_lr, self.verbose = float(min_lr), verbose
        self.wait = self.cooling = 0

    def on_train_begin(self, logs=None):
        self.watch.reset()
        self.wait = self.cooling = 0

    def get_state(self):
        return {"best": self.watch.best, "wait": self.wait, "cooling": self.cooling}

    def set_state(self, state):
        self.watch.best, self.wait, self.cooling = float(state["best"]), int(state["wait"]), int(state["cooling"])

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if logs is not None:
            logs["learning_rate"] = optimizer.learning_rate
        value = self.watch.value(logs, "ReduceLROnPlateau")
        if value is None:
            return
        if self.cooling:
            self.cooling -= 1
            self.wait = 0
        if self.watch.improved(value):
            self.wait = 0
        elif not self.cooling:
            self.wait += 1
            if self.wait >= self.patience and optimizer.learning_rate > self.min_lr:
                optimizer.learning_rate = max(optimizer.learning_rate * self.factor, self.min_lr)
                self.cooling, self.wait = self.cooldown, 0
                if self.verbose:
                    print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau: learning rate now "
                          f"{optimizer.learning_rate:.4g}", file=sys.stderr)


class EarlyStopping(Callback):
    """Stop training after ``patience`` epochs without improvement of ``monitor`` (Keras's);
    ``restore_best_weights`` puts back the weights of the best epoch when it stops."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False, verbose=1):
        self.watch = _Monitor(monitor, mode, min_delta)
        self.patience, self.restore, self.verbose = int(patience), bool(restore_best_weights), verbose
        self.wait, self.best_weights, self.best_epoch, self.stopped_epoch = 0, None, None, None

    def on_train_begin(self, logs=None):
        self.watch.reset()
        self.wait, self.best_weights, self.best_epoch, self.stopped_epoch = 0, None, None, None

    def get_state(self):
        return {"best": self.watch.best, "wait": self.wait, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def set_state(self, state):
        self.watch.best, self.wait = float(state["best"]), int(state["wait"])
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
        self.best_weights = state["best_weights"]

    def on_epoch_end(self, epoch, logs=None):
        value = self.watch.value(logs, "EarlyStopping")
        if value is None:
            return
        if self.watch.improved(value):
            self.wait, self.best_epoch = 0, epoch
            if self.restore:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: EarlyStopping: no improvement of {self.watch.monitor} for "
                      f"{self.wait} epoch(s); best was epoch {self.best_epoch + 1}"
                      + (" (its weights restored)" if self.restore else ""), file=sys.stderr)


class ModelCheckpoint(Callback):
    """After every ``every`` epochs, save a resumable checkpoint: weights, optimizer state, epoch.

    The epoch saved is the number of epochs completed (1 after the first), which is
    what ``fit(initial_epoch=model.load_checkpoint(path))`` takes to resume.  It runs after the
    other callbacks' ``on_epoch_end``, so that it saves their states as the epoch left them.
    """
    epoch_end_order = 1

    def __init__(self, path, every=1):
        self.path = os.fspath(path)
        self.every = every
        self.completed = None

    def on_epoch_end(self, epoch, logs=None):
        self.completed = epoch + 1
        if self.completed % self.every == 0:
            self.model.save_checkpoint(self.path, self.completed)


def read_history(path) -> dict:
    """A history.json as JSONLogger writes it, checked: a JSON object whose "epoch" is a list of
    epoch numbers and whose "history" maps names to lists of as many numbers (or nulls).
    Raises ValueError naming the file and what is wrong with it."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable history file (truncated or not JSON): {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a fastcnn history file: a JSON object was expected")
    epochs, history = data.get("epoch", []), data.get("history", {})
    if not (isinstance(epochs, list) and all(type(e) is int for e in epochs)):
        raise ValueError(f"{path} is not a fastcnn history file: its 'epoch' is not a list of epoch numbers")
    if not isinstance(history, dict) or not all(
            isinstance(v, list) and len(v) == len(epochs)
            and all(x is None or (type(x) in (int, float) and math.isfinite(x)) for x in v)
            for v in history.values()):
        raise ValueError(f"{path} is not a fastcnn history file: its 'history' is not one list of "
                         f"{len(epochs)} numbers per metric")
    return data


class JSONLogger(Callback):
    """Rewrite a JSON file after every epoch: ``{"epoch": [1, 2, ...], "history": {...}, **meta}``.

    ``epoch`` holds 1-based epoch numbers; ``history`` maps each metric to its values; the file
    is strict JSON (a non-finite value is written as null).  Its record is part of a checkpoint's
    callback states, so a fit resumed from a checkpoint rewrites the file as it was then.
    With ``resume_from=k`` the file's first k epochs are kept and new ones appended (the file
    checked by ``read_history``).
    """

    def __init__(self, path, meta=None, resume_from=None):
        self.path = os.fspath(path)
        self.data = {"epoch": [], "history": {}}
        if resume_from and os.path.exists(self.path):
            old = read_history(self.path)
            keep = [i for i, e in enumerate(old.get("epoch", [])) if e <= resume_from]
            self.data["epoch"] = [old["epoch"][i] for i in keep]
            self.data["history"] = {k: [v[i] for i in keep] for k, v in old.get("history", {}).items()}
        self.data.update(meta or {})

    def get_state(self):
        return {"epoch": list(self.data["epoch"]), "history": {k: list(v) for k, v in self.data["history"].items()}}

    def set_state(self, state):
        self.data["epoch"] = list(state["epoch"])
        self.data["history"] = {k: list(v) for k, v in state["history"].items()}

    def on_epoch_end(self, epoch, logs=None):
        self.data["epoch"].append(epoch + 1)
        n = len(self.data["epoch"])
        for key, value in (logs or {}).items():
            # a metric first seen now (e.g. validation added on resume) gets None for earlier epochs
            values = self.data["history"].setdefault(key, [])
            values.extend([None] * (n - 1 - len(values)))
            values.append(float(value))
        self.write()

    def write(self):
        atomic_write_text(self.path, dumps_json(self.data, indent=1) + "\n")


class CSVLogger(Callback):
    """Append one CSV row per epoch (epoch, then the epoch logs' keys), like Keras's CSVLogger."""

    def __init__(self, path, append=False):
        self.path = os.fspath(path)
        self.append = append
        self._keys = None

    def on_train_begin(self, logs=None):
        if not (self.append and os.path.exists(self.path)):
            open(self.path, "w").close()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        new_file = os.path.getsize(self.path) == 0
        if self._keys is None:
            if new_file:
                self._keys = list(logs)
            else:
                with open(self.path) as f:
                    self._keys = f.readline().strip().split(",")[1:]
        with open(self.path, "a") as f:
            if new_file:
                f.write(",".join(["epoch", *self._keys]) + "\n")
            f.write(",".join([str(epoch + 1), *(repr(float(logs[k])) if k in logs else "" for k in self._keys)])
                    + "\n")
