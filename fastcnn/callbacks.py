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

import json
import math
import os
import sys
import tempfile
import time
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


# ---------------------------------------------------------------------------- progress
def _fmt_logs(logs, keys=("loss", "accuracy", "val_loss", "val_accuracy")) -> str:
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

    def set_params(self, params):  # Keras's hook, if fit passes its parameters
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
            self._bar.set_postfix_str(f"loss={float(logs['loss']):.4f} acc={float(logs['accuracy']):.4f} "
                                      f"{rate:,.0f} img/s", refresh=False)
        self._bar.update(batch + 1 - self._bar.n)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self._start
        rate = self._seen / max(seconds, 1e-9)
        if self._bar is not None:
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
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    """Write a text file so that a crash leaves either the old file or the new one, never half."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
    what ``fit(initial_epoch=model.load_checkpoint(path))`` takes to resume.
    ``self.completed`` is kept up to date for a caller that saves on an interrupt.
    """

    def __init__(self, path, every=1):
        self.path = os.fspath(path)
        self.every = every
        self.completed = None

    def on_epoch_end(self, epoch, logs=None):
        self.completed = epoch + 1
        if self.completed % self.every == 0:
            self.model.save_checkpoint(self.path, self.completed)


class JSONLogger(Callback):
    """Rewrite a JSON file after every epoch: ``{"epoch": [1, 2, ...], "history": {...}, **meta}``.

    ``epoch`` holds 1-based epoch numbers; ``history`` maps each metric to its values.
    With ``resume_from=k`` the file's first k epochs are kept and new ones appended.
    """

    def __init__(self, path, meta=None, resume_from=None):
        self.path = os.fspath(path)
        self.data = {"epoch": [], "history": {}}
        if resume_from and os.path.exists(self.path):
            with open(self.path) as f:
                old = json.load(f)
            keep = [i for i, e in enumerate(old.get("epoch", [])) if e <= resume_from]
            self.data["epoch"] = [old["epoch"][i] for i in keep]
            self.data["history"] = {k: [v[i] for i in keep] for k, v in old.get("history", {}).items()}
        self.data.update(meta or {})

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
        atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")


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
