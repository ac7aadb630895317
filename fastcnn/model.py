"""Sequential: Keras's model API (summary, compile, fit, evaluate, predict, weights I/O).

All parameters live in one flat float32 buffer on the model's device (each layer's
kernel and bias are views of it), their gradients in a second one, so an optimizer
update is one launch.  The training step itself is ``train_step``: forward through
the layers, one fused softmax + cross-entropy, backward, update, step counter.  On
the GPU, ``fit`` captures that step once as a CUDA graph and replays it per batch.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import numpy as np

from . import backend as backends
from .backend import checks
from . import checkpoints
from . import config as precision
from . import distribution
from . import losses as losses_mod
from . import optimizers as optimizers_mod
from .batches import ArrayBatches, SourceBatches, check_batch_size, fits_graph, is_batch_source  # noqa: F401
from .callbacks import BatchLogs, CallbackList, Diverged, History, restore_callback_states
from .layers import InputLayer, Layer
from .saving import load_npz, save_npz
from .tensor import Tensor, no_grad
from .training_state import ResumeMismatch, TrainingState  # noqa: F401  (ResumeMismatch: fastcnn.model.ResumeMismatch as before)

DEVICES = {"cpu": "reference", "cuda": "cuda"}


class Sequential:
    def __init__(self, layers=None, name="sequential"):
        self.name = name
        self.layers: list[Layer] = []
        self.device, self.backend = "cpu", backends.get("reference")
        self.auto_reason = None  # after to("auto") on the CPU: why the GPU was not used
        self.loss = self.optimizer = None
        self.metrics: list[str] = []
        self.stop_training = False
        self.stop_reason = None   # why the last fit stopped early, when a callback said (TerminateOnNaN)
        self.history = None
        self._state = TrainingState()   # the flat buffers, step, totals, optimizer slots, fit's position
        self._graph_steps: dict = {}
        self._input = None  # the shape an Input(shape=...) declared
        for layer in layers or []:
            self.add(layer)

    # ---- building -------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add takes a Layer, got {type(layer).__name__}")
        if isinstance(layer, InputLayer):   # Keras's Input(shape=...): the next first layer's input shape
            if self.layers or self._input is not None:
                raise ValueError("Input(shape=...) may only come first in a Sequential")
            self._input = layer._input_shape
            return
        if self.layers and layer._input_shape is not None and not layer.built:
            raise ValueError(f"only the first layer may declare input_shape ({layer!r})")
        if not self.layers and self._input is not None and layer._input_shape is None:
            layer._input_shape = self._input
        taken = {l.name for l in self.layers}
        if layer.name is None or layer.name in taken:
            base, i = layer.default_name, 0
            while (candidate := base if i == 0 else f"{base}_{i}") in taken:
                i += 1
            layer.name = candidate
        self.layers.append(layer)
        first = self.layers[0]
        if first._input_shape is not None:
            self._build_from(first._input_shape)

    def build(self, input_shape) -> None:
        """Build every layer for inputs of ``input_shape`` (without the batch axis)."""
        self._build_from(tuple(input_shape))

    def _build_from(self, input_shape) -> None:
        shape = tuple(input_shape)
        for layer in self.layers:
            if not layer.built or layer._input_shape != shape:
                layer.build(shape)
            shape = layer._output_shape
        self._state.unbind()  # parameters changed: rebind the flat buffers on next use

    @property
    def built(self) -> bool:
        return bool(self.layers) and all(l.built for l in self.layers)

    def require_built(self):
        if not self.built:
            raise ValueError("the model is not built: give the first layer input_shape=(H, W, C) or call build()")

    @property
    def input_shape(self):
        self.require_built()
        return self.layers[0].input_shape

    @property
    def output_shape(self):
        self.require_built()
        return self.layers[-1].output_shape

    def parameters(self):
        return [p for layer in self.layers for p in layer.params]

    def count_params(self) -> int:
        self.require_built()
        return sum(layer.count_params() for layer in self.layers)

    def summary(self, print_fn=print) -> None:
        """Keras's table: Layer (type) | Output Shape | Param #, then the totals."""
        self.require_built()
        rows = [(f"{l.name} ({l.type_name})", str(l.output_shape), f"{l.count_params():,}")
                for l in self.layers]
        w0 = max(28, max(len(r[0]) for r in rows) + 1)
        w1 = max(26, max(len(r[1]) for r in rows) + 1)
        width = w0 + w1 + 11
        line = lambda a, b, c: (" " + a.ljust(w0) + b.ljust(w1) + c).ljust(width)
        out = [f'Model: "{self.name}"', "_" * width, line("Layer (type)", "Output Shape", "Param #"), "=" * width]
        for i, row in enumerate(rows):
            out.append(line(*row))
            if i < len(rows) - 1:
                out.append(" " * width)
        total = self.count_params()
        frozen = sum(l.count_params() for l in self.layers if not l.trainable)
        out += ["=" * width, f"Total params: {total:,}", f"Trainable params: {total - frozen:,}",
                f"Non-trainable params: {frozen:,}", f"Dtype policy: {_policy_summary(self.layers)}", "_" * width]
        for text in out:
            print_fn(text.rstrip())

    # ---- device and parameter buffers ------------------------------------------------
    def to(self, device: str, backend: str | None = None) -> "Sequential":
        """Move parameters (and optimizer state) to 'cpu', 'cuda' or 'auto' (the GPU when one is
        usable, else the CPU; ``auto_reason`` then says why not); ``backend`` may pick 'numba'
        for the Numba kernels.  'cuda' without a usable GPU raises BackendUnavailable with the reason."""
        if device == "auto":
            try:
                self.to("cuda", backend)
                self.auto_reason = None
            except backends.BackendUnavailable as exc:
                self.to("cpu")
                self.auto_reason = str(exc)
            return self
        if device not in DEVICES:
            raise ValueError(f"device must be one of {sorted(DEVICES) + ['auto']}, got {device!r}")
        new = backends.get(backend or DEVICES[device])
        self._computes_in_bfloat16(new)   # refused before anything moves
        state = self._state
        weights = self.get_weights() if self.built else None
        opt_state = self.optimizer.get_state() if state.bound and self.optimizer else None
        step = state.read_step() if state.bound else 0
        self.device, self.backend = device, new
        state.unbind()
        self._graph_steps = {}
        if weights is not None:
            self._bind(step)
            self.set_weights(weights)
            if opt_state is not None:
                self.optimizer.set_state(opt_state)
        return self

    def _bind(self, step: int = 0) -> None:
        """Lay the parameters out in the training state's flat buffers (TrainingState.bind)."""
        self.require_built()
        self._computes_in_bfloat16()
        self._state.bind(self.backend, self.layers, step)
        self._graph_steps = {}

    def _ensure_bound(self) -> None:
        state = self._state
        if not state.bound:
            self._bind()
        elif not state.matches(self.layers):
            self._bind(state.read_step())  # a layer was (un)frozen, or its policy changed: a new layout

    def _computes_in_bfloat16(self, backend=None) -> bool:
        """True when a layer computes in bfloat16 (mixed_bfloat16): refused on the Numba backend
        (``backend``, by default the model's)."""
        if not any(l.compute_dtype == "bfloat16" for l in self.layers):
            return False
        if (backend or self.backend).name == "numba":
            raise ValueError("the numba backend computes in float32 only: it does not run the mixed_bfloat16 "
                             "dtype policy; use the cuda backend (model.to('cuda')) or the float32 policy")
        return True

    @property
    def training_state(self) -> TrainingState:
        """The model's TrainingState (fastcnn.training_state), its buffers bound on the model's
        device: what graphs, profiles, checkpoints and data-parallel training work on."""
        self._ensure_bound()
        return self._state

    def ready_to_train(self) -> TrainingState:
        """The training state as a step needs it: compiled, bound, the optimizer's slots made."""
        self.require_compiled()
        state = self.training_state
        state.ensure_slots()
        return state

    # ---- weights ------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Host copies of every kernel and bias, in layer order (Keras's order)."""
        return [self.backend.to_host(p.data).copy() for p in self.parameters()]

    def set_weights(self, weights) -> None:
        params = self.parameters()
        if len(weights) != len(params):
            raise ValueError(f"set_weights got {len(weights)} arrays, the model has {len(params)}")
        for p, w, name in zip(params, weights, self.weight_names()):
            w = np.asarray(w)
            if w.shape != p.shape:
                raise ValueError(f"weight {name!r} has shape {w.shape}, the model expects {p.shape}")
        self._ensure_bound()
        for p, w in zip(params, weights):
            self.backend.copy(p.data, self.backend.asarray(np.asarray(w, np.float32)))
        self._state.refresh_bf16()

    def weight_names(self) -> list[str]:
        """Every weight's name ('conv2d/kernel', ...), in get_weights' order."""
        return [name for layer in self.layers for name in layer.weight_names()]

    def policy_names(self) -> list[str]:
        """Each layer's dtype policy name (what a checkpoint records)."""
        return [layer.dtype_policy.name for layer in self.layers]

    def save_weights(self, path) -> None:
        """Write every weight to an .npz file, or Keras 3's .weights.h5 when the name ends in .h5,
        atomically (a crash never leaves half a file)."""
        self.require_built()
        from . import keras_files
        kind = keras_files.file_kind(path)
        if kind == "keras":
            raise ValueError(f"{os.fspath(path)}: a .keras archive is written by model.save; "
                             f"save_weights writes .weights.h5 or .npz")
        if kind == "h5":
            return keras_files.save_weights(self, path)
        save_npz(path, dict(zip(self.weight_names(), self.get_weights())))

    def load_weights(self, path) -> None:
        """Weights from an .npz file, a Keras 3 .weights.h5 file or a .keras archive."""
        self.require_built()
        from . import keras_files
        if keras_files.file_kind(path) != "npz":
            return keras_files.load_weights(self, path)
        self.set_named_weights(load_npz(path), path)

    def set_named_weights(self, arrays: dict, path) -> None:
        """set_weights from arrays by weight name (a file's: ``path`` names it in errors)."""
        names = self.weight_names()
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"{path}: missing weights {missing} (file has {sorted(arrays)[:8]}...)")
        self.set_weights([arrays[n] for n in names])

    def save_checkpoint(self, path, epoch: int | None = None) -> None:
        """Everything the next training step depends on, written atomically: the weights, the
        optimizer's name, settings (the learning rate in force) and state, the step counter, the
        random generator's state, the states of fit's callbacks (History, ReduceLROnPlateau,
        EarlyStopping, JSONLogger...) and where training stands: ``epoch`` completed epochs, or by
        default where fit left off, inside an epoch after Ctrl-C (its running totals then too)."""
        checkpoints.save(self, path, epoch)

    def load_checkpoint(self, path) -> int:
        """Restore what save_checkpoint wrote into this model, compiled with the same optimizer and
        settings (else refused, nothing changed); returns the number of completed epochs, which is
        what ``fit(initial_epoch=...)`` takes: that fit then goes on exactly where the checkpoint
        was taken (inside an epoch, too), with its callbacks' states and its History so far."""
        return checkpoints.load(self, path)

    # ---- compile / forward ----------------------------------------------------------------
    def compile(self, loss="categorical_crossentropy", optimizer="adam", metrics=None) -> None:
        loss, optimizer = losses_mod.get(loss), optimizers_mod.get(optimizer)
        metrics = list(metrics or [])
        unknown = [m for m in metrics if m not in ("accuracy", "acc")]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; fastcnn supports 'accuracy'")
        self.require_built()
        self._computes_in_bfloat16()   # the Numba backend refuses mixed_bfloat16 here, not in a kernel
        last = self.layers[-1]
        if not loss.from_logits and last.activation != "softmax":
            raise ValueError(f"{loss.name} expects the last layer to end in softmax (or pass the loss "
                             f"object with from_logits=True); the last layer is {last!r}")
        self.loss, self.optimizer = loss, optimizer
        self.metrics = metrics[:1]  # 'accuracy' or 'acc': the logs and History use the name given
        self._state.attach_optimizer(optimizer)   # its slots are made now if the buffers are bound
        self._graph_steps = {}

    def __call__(self, x, training=False) -> Tensor:
        """Forward through all layers with autograd (Tensor in, Tensor out, softmax included)."""
        self._ensure_bound()
        with backends.using(self.backend.name):
            return self._forward(x if isinstance(x, Tensor) else Tensor(self.backend.asarray(x)), training, False)

    def _forward(self, x: Tensor, training: bool, logits: bool) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if logits and i == last and layer.activation == "softmax":
                x = layer(x, training, activation=None)
            else:
                x = layer(x, training)
        return x

    def check_input(self, x, what="x"):
        """``x`` (arrays, or a batch's) checked against the model's input shape: returned as is,
        or a ValueError / TypeError saying what is wrong (NCHW data is named as such)."""
        self.require_built()
        expected = self.layers[0]._input_shape
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        if x.ndim != len(expected) + 1:
            raise ValueError(f"{what} must have shape (batch,) + {expected}, got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{what} is empty (shape {tuple(x.shape)})")
        if tuple(x.shape[1:]) != expected:
            hint = ""
            if len(expected) == 3 and tuple(x.shape[1:]) == (expected[2], expected[0], expected[1]):
                hint = " — this looks like NCHW; fastcnn is NHWC: pass x.transpose(0, 2, 3, 1)"
            raise ValueError(f"{what} has shape {tuple(x.shape)} but the model expects (batch,) + {expected}{hint}")
        if x.dtype.kind not in "fiu":
            raise TypeError(f"{what} must be numeric, got dtype {x.dtype}")
        return x

    def prepare_labels(self, y, n):
        """Labels of ``n`` samples checked and made what the loss takes (host arrays)."""
        classes = self.layers[-1]._output_shape[-1]
        y = y.get() if checks.is_cupy(y) else y
        return self.loss.prepare_labels(y, n, classes)

    def _batch(self, a, idx, dtype):
        """One batch on the device: a host gather of only this batch, then one copy."""
        batch = a[idx]
        return self.backend.asarray(batch if batch.dtype == dtype else batch.astype(dtype))

    # ---- training --------------------------------------------------------------------------
    def train_step(self, x, y) -> None:
        """One forward/backward/update on device arrays already in place; no synchronisation.

        Adds [sum of losses, number correct] of the batch to the running totals.
        """
        B, state = self.backend, self._state
        # The Functions made by the forward pass bind the current backend (tensor.Function):
        # the model's, for the forward and backward passes of this step.
        with backends.using(B.name):
            for p in self.parameters():
                p.grad = None
            if x.shape[0]:   # (a data-parallel process may have no rows of a short last batch)
                logits = self._forward(Tensor(x), True, True)
                logits.backward(self.loss.fused_gradient(logits.data, y, state.totals, B))
            else:
                state.grads.fill(0)
            distribution.reduce_gradients(self)   # data-parallel: averaged across processes
            if state.n_trainable:   # mixed_bfloat16: the bfloat16 copy rewritten in the same launch
                copy = state.trainable_params_bf16   # (passed only then: a float32 model's call is as it was)
                self.optimizer.apply(state.trainable_params, state.trainable_grads, state.step,
                                     **({} if copy is None else {"params_bf16": copy}))
            B.increment(state.step)

    def profile(self, x, y, steps: int = 5, warmup: int = 1):
        """Time every kernel call of ``steps`` eager training steps on the batch (x, y), by
        layer, after ``warmup`` unrecorded steps; the weights and optimizer state are put
        back afterwards.  Returns a ``fastcnn.profiler.Profile``: ``print(prof.table())``."""
        from .profiler import profile_training
        return profile_training(self, x, y, steps, warmup)

    def make_graph_step(self, x_shape, y_shape, y_dtype=None):
        """A callable ``step(x, y)`` that copies a batch into static buffers and replays one
        captured CUDA graph of train_step (see fastcnn.graphs)."""
        from .graphs import GraphTrainStep
        self.require_compiled()
        self._ensure_bound()
        if y_dtype is None:
            y_dtype = np.int32 if self.loss.sparse else np.float32
        # One graph per precision: a graph captured under "high" holds TF32 kernels.
        key = (tuple(x_shape), tuple(y_shape), np.dtype(y_dtype).str, precision.get_float32_matmul_precision(),
               distribution.graph_key())   # data-parallel: the graph holds the all-reduce and the offsets
        # The graph holds the optimizer's scalars (learning rate, momentum...) as kernel
        # arguments: after a change (a user's, or a callback's between epochs) capture anew.
        config = self.optimizer.get_config()
        captured = self._graph_steps.get(key)
        if captured is None or captured[0] != config:
            self._graph_steps.pop(key, None)  # the old graph and its memory pool go first
            self._graph_steps[key] = (config, GraphTrainStep(self, x_shape, y_shape, y_dtype))
        return self._graph_steps[key][1]

    def require_compiled(self):
        if self.optimizer is None or self.loss is None:
            raise RuntimeError("call compile(loss=..., optimizer=...) before training")

    def fit(self, x=None, y=None, epochs=1, batch_size=32, validation_data=None, shuffle=True,
            verbose=1, callbacks=None, initial_epoch=0, graph=None, validation_split=0.0) -> History:
        """Train for ``epochs`` epochs; returns a History (loss, accuracy, val_loss, val_accuracy).

        ``x`` may also be a batch source instead of arrays (Keras's Sequence protocol: ``len()``
        batches, ``source[i]`` -> (x, y), optional ``on_epoch_end()``; e.g.
        ``fastcnn.datasets.ImageFolderBatches``): its batches are used as they come (no
        ``y``, ``batch_size``, ``shuffle`` or ``validation_split``); ``validation_data`` may be one too.
        ``validation_split``: as Keras, the last fraction of x and y (taken before any shuffling)
        is held out for validation, unless ``validation_data`` is given.
        ``graph`` (default: on for the GPU) replays each full batch as one captured CUDA graph.
        """
        self.require_compiled()
        batches, validation_data = self._fit_data(x, y, batch_size, shuffle, validation_data, validation_split)
        batch_size = batches.batch_size
        use_graph = (self.device == "cuda") if graph is None else bool(graph)
        if use_graph and self.device != "cuda":
            raise ValueError("graph=True needs the model on the GPU (model.to('cuda'))")
        state = self.ready_to_train()
        B = self.backend
        steps = batches.steps
        if distribution.distribution() is not None:
            distribution.distribution().begin_fit(self, batches)
        history = History()
        cbs = CallbackList([history] + _progress_callbacks(verbose if distribution.is_main() else 0)
                           + list(callbacks or []))
        cbs.set_model(self)
        cbs.set_params({"verbose": verbose, "epochs": epochs, "steps": steps})
        self.history, self.stop_training, self.stop_reason = history, False, None
        state.callbacks = cbs.callbacks
        resume = state.take_resume(initial_epoch, steps)
        cbs.on_train_begin({"epochs": epochs, "steps": steps, "samples": batches.samples, "batch_size": batch_size,
                            "initial_epoch": initial_epoch, "device": self.device})
        if resume is not None:
            restore_callback_states(cbs.callbacks, resume["callbacks"])
            batches.set_state(resume["source"])
        state.batches = batches
        state.position = {"steps": steps}
        state.mark_epoch_start(initial_epoch)
        at = state.position
        k = distribution.distribution().size if distribution.distribution() else 1   # shown: all processes' images
        try:
            with _DeferredInterrupt() as interrupt:
                for epoch in range(initial_epoch, epochs):
                    # per epoch: a callback may have changed the learning rate (a new capture then)
                    step_graph = self.make_graph_step(*batches.graph_shapes) if use_graph and batches.graph_shapes else None
                    state.mark_epoch_start(epoch)
                    batches.start_epoch()
                    state.reset_totals()
                    if resume is not None and resume["batch"]:   # a checkpoint taken inside this epoch
                        state.reset_totals(resume["totals"])
                        at.update(batch=resume["batch"], seen=resume["seen"])
                    resume = None
                    cbs.on_epoch_begin(epoch, {})
                    seen = self._train_epoch(batches, cbs, interrupt, step_graph, k)
                    interrupt.check()
                    batches.end_epoch()   # a batch source's next order, as Keras calls it: before validation
                    totals, seen = distribution.reduce_totals(state.read_totals(), seen)
                    logs = dict(zip(self.metrics_names, (totals[0] / max(seen, 1), totals[1] / max(seen, 1))))
                    if validation_data is not None:
                        val = self._evaluate(validation_data, batch_size)
                        logs.update(("val_" + name, value) for name, value in zip(self.metrics_names, val))
                    at["clean"] = False
                    cbs.on_epoch_end(epoch, logs)
                    state.mark_epoch_start(epoch + 1)
                    if self.stop_training:
                        break
        except Diverged as exc:   # the epoch in progress is not completed: no epoch-end callbacks
            self.stop_training, self.stop_reason = True, str(exc)
        cbs.on_train_end({})
        return history

    def _train_epoch(self, batches, cbs, interrupt, step_graph, processes) -> int:
        """The epoch in progress's batches from where the training state's position says (past
        a resumed checkpoint's); returns this process's samples seen in the epoch."""
        at = self._state.position
        seen = at["seen"]
        for i in range(at["batch"], batches.steps):
            interrupt.check()
            at["clean"] = False
            count = self._train_batch(batches, i, step_graph)
            seen += count
            at.update(batch=i + 1, seen=seen, clean=True)
            # (the logs count all processes' images)
            cbs.on_batch_end(i, BatchLogs({"batch": i, "size": count * processes, "seen": seen * processes,
                                           "steps": batches.steps}, self._running_metrics(seen)))
            if self.stop_training:
                break
        return seen

    def _fit_data(self, x, y, batch_size, shuffle, validation_data, validation_split):
        """fit's inputs checked: (the training batches, the validation data)."""
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        if is_batch_source(x):
            if y is not None or validation_split:
                raise ValueError("fit(x=<batch source>): the labels and the split come from the source; "
                                 "leave y and validation_split out")
            batches = SourceBatches(self, x)
        else:
            x = self.check_input(x)
            if validation_split and validation_data is None:
                cut = int(x.shape[0] * (1.0 - validation_split))   # Keras's split point
                if cut < 1:
                    raise ValueError(f"validation_split={validation_split} leaves no training samples "
                                     f"out of {x.shape[0]}")
                x, validation_data = x[:cut], (x[cut:], y[cut:])
                y = y[:cut]
            batches = ArrayBatches(self.backend, x, self.prepare_labels(y, x.shape[0]), check_batch_size(batch_size), shuffle,
                               on_device=self.device == "cuda")
        if validation_data is not None and not is_batch_source(validation_data):
            if len(validation_data) != 2:
                raise ValueError(f"validation_data must be (x, y); got {len(validation_data)} items "
                                 "(sample weights are not supported)")
            vx, vy = validation_data
            vx = self.check_input(vx, "validation x")
            validation_data = (vx, self.prepare_labels(vy, vx.shape[0]))
        return batches, validation_data

    def _train_batch(self, batches, i, step_graph) -> int:
        """Train on batch i: replayed in the captured step when it has the captured size (picked
        on the device straight into its inputs, or copied in from the host), else eagerly.
        Returns the batch's size."""
        if step_graph is not None and batches.on_device and batches.full(i):
            batches.get(i, out=step_graph.inputs)
            step_graph.replay()
            return batches.batch_size
        xb, yb = batches.get(i)
        if step_graph is not None and fits_graph(batches, xb):
            step_graph(xb, yb)
        else:
            self.train_step(self.backend.asarray(xb, np.float32), self.backend.asarray(yb))
        return len(xb)

    def _running_metrics(self, seen):
        def read(i):
            return lambda: float(self._state.read_totals()[i]) / seen
        return dict(zip(self.metrics_names, (read(0), read(1))))

    # ---- inference ---------------------------------------------------------------------------
    def evaluate(self, x, y=None, batch_size=None, verbose=1, return_dict=False):
        """[loss, accuracy] (or the loss alone without metrics), Keras-style; x may be a batch
        source (see fit), y then left out.  return_dict: {'loss': ..., 'accuracy': ...}."""
        if self.loss is None:
            raise RuntimeError("call compile(...) before evaluate()")
        if not is_batch_source(x):
            x = self.check_input(x)
            x = (x, self.prepare_labels(y, x.shape[0]))
        elif y is not None:
            raise ValueError("evaluate(x=<batch source>): the labels come from the source; leave y out")
        result = self._evaluate(x, check_batch_size(batch_size))
        if verbose and distribution.is_main():
            print(" - ".join(f"{k}: {v:.4f}" for k, v in zip(self.metrics_names, result)))
        if return_dict:
            return dict(zip(self.metrics_names, result))
        return result if self.metrics else result[0]

    def _eval_batches(self, data, batch_size):
        """(x, y) device batches of validation data: a batch source, or (x, labels) arrays."""
        if is_batch_source(data):
            for i in range(len(data)):
                xb, yb = data[i]
                xb = self.check_input(xb, f"batch {i}'s x")
                yb = self.prepare_labels(yb, xb.shape[0])
                lo, hi = distribution.rows(0, xb.shape[0])   # data-parallel: this process's share
                if hi > lo:
                    yield self.backend.asarray(xb[lo:hi], np.float32), self.backend.asarray(yb[lo:hi])
            return
        x, y = data
        for start in range(0, x.shape[0], batch_size):
            idx = slice(*distribution.rows(start, min(start + batch_size, x.shape[0])))
            if idx.stop > idx.start:
                yield self._batch(x, idx, np.float32), self._batch(y, idx, y.dtype)

    def _evaluate(self, data, batch_size):
        self._ensure_bound()
        B = self.backend
        totals = B.asarray(np.zeros(2, np.float64))
        n = 0
        with backends.using(B.name), no_grad():
            for xb, yb in self._eval_batches(data, batch_size):
                logits = self._forward(Tensor(xb), False, True)
                self.loss.fused_gradient(logits.data, yb, totals, B)
                n += xb.shape[0]
        totals, n = distribution.reduce_totals(B.to_host(totals), n)
        return [float(totals[0] / n), float(totals[1] / n)][: 1 + len(self.metrics)]

    def predict(self, x, batch_size=None, verbose=0) -> np.ndarray:
        """Softmax outputs (or the last layer's outputs) as a NumPy array; x may be a batch
        source (see fit: its labels are not used)."""
        self._ensure_bound()
        B = self.backend
        if is_batch_source(x):
            inputs = (B.asarray(self.check_input(x[i][0], f"batch {i}'s x"), np.float32) for i in range(len(x)))
        else:
            x = self.check_input(x)
            batch_size = check_batch_size(batch_size)
            inputs = (self._batch(x, slice(start, start + batch_size), np.float32)
                      for start in range(0, x.shape[0], batch_size))
        outputs = []
        with backends.using(B.name), no_grad():
            for xb in inputs:
                outputs.append(B.to_host(self._forward(Tensor(xb), False, False).data))
        return np.concatenate(outputs).astype(np.float32, copy=False)   # (bfloat16 outputs of a mixed model)

    # ---- Keras's other model methods (files: fastcnn.keras_files) ----------------------------------------
    @property
    def metrics_names(self) -> list[str]:
        return ["loss"] + self.metrics

    def _result(self, values, return_dict):
        values = [float(v) for v in values][: len(self.metrics_names)]
        if return_dict:
            return dict(zip(self.metrics_names, values))
        return values if self.metrics else values[0]

    weights = property(lambda self: [p for l in self.layers for p in l.weights])
    trainable_weights = property(lambda self: [p for l in self.layers for p in l.trainable_weights])
    non_trainable_weights = property(lambda self: [p for l in self.layers for p in l.non_trainable_weights])

    @property
    def trainable(self) -> bool:
        return any(l.trainable for l in self.layers)

    @trainable.setter
    def trainable(self, value) -> None:
        for layer in self.layers:
            layer.trainable = bool(value)

    def get_layer(self, name=None, index=None) -> Layer:
        """The layer called ``name`` or at ``index`` (``get_layer(2)`` works too)."""
        if index is None and isinstance(name, int):
            name, index = None, name
        if index is not None:
            if not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"get_layer: index {index} is out of range; the model has {len(self.layers)} layers")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; the layers are {[l.name for l in self.layers]}")

    def pop(self) -> Layer:
        """Remove and return the last layer (weights of the others kept)."""
        if not self.layers:
            raise ValueError("pop: the model has no layers")
        layer = self.layers.pop()
        self._state.unbind()
        self._graph_steps = {}
        return layer

    def train_on_batch(self, x, y, return_dict=False):
        """One training step on (x, y); the loss (and accuracy) of that batch before the update."""
        self.require_compiled()
        x = self.check_input(x)
        y = self.prepare_labels(y, x.shape[0])
        state = self.ready_to_train()
        B = self.backend
        state.reset_totals()
        self.train_step(B.asarray(x, np.float32), B.asarray(y))
        return self._result(state.read_totals() / x.shape[0], return_dict)

    def test_on_batch(self, x, y, return_dict=False):
        """The loss (and accuracy) on one batch, no update."""
        if self.loss is None:
            raise RuntimeError("call compile(...) before test_on_batch()")
        x = self.check_input(x)
        return self._result(self._evaluate((x, self.prepare_labels(y, x.shape[0])), x.shape[0]), return_dict)

    def predict_on_batch(self, x) -> np.ndarray:
        return self.predict(x, batch_size=len(x))

    def get_config(self) -> dict:
        from . import keras_files
        return keras_files.model_config(self)

    @classmethod
    def from_config(cls, config) -> "Sequential":
        from . import keras_files
        return keras_files.model_from_config(config)

    def to_json(self, **kwargs) -> str:
        from . import keras_files
        return keras_files.to_json(self, **kwargs)

    def save(self, path) -> None:
        """A Keras 3 .keras archive (architecture + weights); fastcnn.models.load_model reads it."""
        from . import keras_files
        if keras_files.file_kind(path) != "keras":
            raise ValueError(f"save writes .keras archives; got {os.fspath(path)!r} "
                             f"(weights alone: save_weights to .weights.h5 or .npz)")
        keras_files.save_model(self, path)


def _policy_summary(layers) -> str:
    """summary()'s policy line: the one policy of every layer, or each layer's."""
    names = [l.dtype_policy.name for l in layers]
    if len(set(names)) == 1:
        policy = layers[0].dtype_policy
        return f"{policy.name} (compute {policy.compute_dtype}, variables {policy.variable_dtype})"
    return ", ".join(f"{l.name} {n}" for l, n in zip(layers, names))


def _progress_callbacks(verbose):
    if not verbose:
        return []
    try:
        from .callbacks import ProgressBar
    except ImportError:
        return []
    return [ProgressBar(verbose=verbose)]


class _DeferredInterrupt:
    """Ctrl-C during fit (main thread, Python's own handler in place): the step in flight is
    finished, then ``check()`` raises KeyboardInterrupt between steps, where the training state
    is whole (a checkpoint can be taken there); a second Ctrl-C raises at once."""

    def __enter__(self):
        self.pending, self.previous = False, None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        print("\nCtrl-C: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def check(self):
        if self.pending:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
