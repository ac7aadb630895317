"""TrainingState: everything a training step reads and writes, and what a checkpoint records.

On the model's device:

- ``params`` / ``grads``: one flat float32 buffer of every parameter and one of their gradients.
  Each layer's kernel and bias are views of ``params`` (``Parameter.data``), their gradients
  views of ``grads`` (``Parameter.grad_view``); the trainable layers' parameters come first,
  so an optimizer update is one launch over ``trainable_params`` / ``trainable_grads``.
- ``step``: the step counter (int32, shape (1,)).  Adam's bias correction and the random
  layers (dropout, crops, flips, colour noise) read it on the device, so a replayed CUDA
  graph stays correct.
- ``totals``: the running [sum of losses, number correct] of the epoch in progress (float64,
  shape (2,)), added to by the loss on the device without a synchronisation.
- ``slots``: the optimizer's state arrays (Adam's m and v, SGD's velocity...), which the
  optimizer allocates over ``trainable_params`` (``attach_optimizer``).
- ``params_bf16``: when a layer computes in bfloat16 (the mixed_bfloat16 policy), the bfloat16
  copy of ``params`` the layers multiply with (``Parameter.bf16_view``); the optimizer rewrites
  it in the same launch as ``params`` (``trainable_params_bf16``), ``refresh_bf16`` after
  weights were set; else None.

On the host, where training stands: ``position`` (the epoch, batch and samples seen of the
fit in progress, the random generator's and the batch source's states at the epoch's start),
``resume`` (what load_checkpoint restored for the next fit), the last fit's ``callbacks`` and
``batches`` (their states go into checkpoints; fastcnn.checkpoints writes and reads them).

``device_arrays()`` is the one list of the device arrays a step changes: ``snapshot()`` /
``restore()`` copy and put them back (a CUDA graph's warm-up step and a profile are undone
with them) and rank 0 broadcasts them (``shared_arrays``: all but the totals) before
data-parallel training.  A new device array of
the training state (a copy of ``params`` in another dtype...) is made in ``bind`` and listed
in ``device_arrays``.
"""
from __future__ import annotations

import numpy as np

from .seeding import generator

ALIGN = 32  # floats: every parameter view starts on a 128-byte boundary (vector loads)


class ResumeMismatch(ValueError):
    """fit cannot go on from the checkpoint loaded: its data or batch size differ."""


class TrainingState:
    def __init__(self):
        self.backend = None
        self.params = self.grads = None   # the flat buffers; None until bind()
        self.params_bf16 = None           # mixed_bfloat16: the bfloat16 copy of params
        self.step = self.totals = None
        self.n_trainable = 0              # floats of params the optimizer updates (the leading part)
        self.layout = None                # each layer's frozen flag when the buffers were laid out
        self.optimizer = None
        self.position = None              # where the fit in progress (or the last one) stands
        self.resume = None                # what load_checkpoint restored for the next fit
        self.callbacks = []               # the last fit's callbacks
        self.batches = None               # the last fit's training batches

    # ---- the device buffers -----------------------------------------------------------------
    @property
    def bound(self) -> bool:
        return self.params is not None

    def unbind(self) -> None:
        """Forget the buffers (the layers changed, or the model moves): bind() lays them out anew."""
        self.params = self.grads = self.step = self.totals = self.params_bf16 = None
        self.layout = None

    def bind(self, backend, layers, step: int = 0) -> None:
        """Lay the layers' parameters out in one flat buffer on ``backend``'s device (their
        current values copied in), the gradients in a second one, trainable layers first; make
        the step counter (at ``step``) and zero totals, hand the step counter to the random
        layers, and allocate the attached optimizer's slots for the trainable part."""
        self.backend = B = backend
        self.layout = _layout(layers)
        trainable = [p for l in layers if l.trainable for p in l.params]
        params = trainable + [p for l in layers if not l.trainable for p in l.params]
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += -(-p.size // ALIGN) * ALIGN
        self.n_trainable = offsets[len(trainable)] if len(trainable) < len(params) else total
        host = np.zeros(max(total, ALIGN), np.float32)
        for p, off in zip(params, offsets):
            host[off:off + p.size] = B.to_host(p.data).reshape(-1)
        self.params = B.asarray(host)
        self.grads = B.asarray(np.zeros_like(host))
        bf16 = any(l.compute_dtype == "bfloat16" for l in layers)
        self.params_bf16 = B.cast(self.params, "bfloat16") if bf16 else None
        for p, off in zip(params, offsets):
            p.data = self.params[off:off + p.size].reshape(p.shape)
            p.grad_view = self.grads[off:off + p.size].reshape(p.shape)
            p.bf16_view = self.params_bf16[off:off + p.size].reshape(p.shape) if bf16 else None
            p.grad = None
        self.step = B.asarray(np.array([step], np.int32))
        self.totals = B.asarray(np.zeros(2, np.float64))
        for layer in layers:
            if hasattr(layer, "step"):
                layer.step = self.step
        if self.optimizer is not None:
            self.optimizer.build(B, self.n_trainable)

    def matches(self, layers) -> bool:
        """True when the buffers are bound for these layers' frozen flags (else bind anew)."""
        return self.bound and self.layout == _layout(layers)

    @property
    def trainable_params(self):
        """The view of ``params`` the optimizer updates: the whole buffer when nothing is frozen."""
        return self.params if self.n_trainable == self.params.size else self.params[:self.n_trainable]

    @property
    def trainable_grads(self):
        return self.grads if self.n_trainable == self.grads.size else self.grads[:self.n_trainable]

    @property
    def trainable_params_bf16(self):
        """The view of ``params_bf16`` the optimizer rewrites with ``trainable_params`` (None
        without a bfloat16 copy)."""
        if self.params_bf16 is None or self.n_trainable == self.params_bf16.size:
            return self.params_bf16
        return self.params_bf16[:self.n_trainable]

    def refresh_bf16(self) -> None:
        """The bfloat16 copy made anew from ``params`` (after the weights were set)."""
        if self.params_bf16 is not None:
            self.backend.copy(self.params_bf16, self.backend.cast(self.params, "bfloat16"))

    # ---- the optimizer's slots -----------------------------------------------------------------
    def attach_optimizer(self, optimizer) -> None:
        """The optimizer whose slots this state holds; they are allocated now when the buffers
        are bound, else by bind()."""
        self.optimizer = optimizer
        if self.bound:
            optimizer.build(self.backend, self.n_trainable)

    def ensure_slots(self) -> None:
        """Allocate the attached optimizer's slots if it has none yet."""
        if getattr(self.optimizer, "state", None) is None:
            self.optimizer.build(self.backend, self.n_trainable)

    @property
    def slots(self) -> dict:
        """The optimizer's state arrays by name (empty without an optimizer or before its build)."""
        return getattr(self.optimizer, "state", None) or {}

    # ---- step counter and totals ------------------------------------------------------------------
    def read_step(self) -> int:
        return int(self.backend.to_host(self.step)[0])

    def set_step(self, value) -> None:
        self.backend.copy(self.step, self.backend.asarray(np.asarray(value, np.int32).reshape(1)))

    def read_totals(self) -> np.ndarray:
        """A host copy of [sum of losses, number correct]."""
        return self.backend.to_host(self.totals).copy()

    def reset_totals(self, values=None) -> None:
        """Zero the running totals, or set them to ``values`` (a checkpoint's)."""
        values = np.zeros(2, np.float64) if values is None else np.asarray(values, np.float64)
        self.backend.copy(self.totals, self.backend.asarray(values))

    # ---- where training stands ----------------------------------------------------------------------
    def mark_epoch_start(self, epoch: int) -> None:
        """The position at the start of ``epoch``: no batch done, the random generator's and
        the batch source's states as they are now (what a checkpoint taken here resumes from)."""
        self.position.update(epoch=epoch, batch=0, seen=0, generator=generator().bit_generator.state,
                             source=self.batches.get_state(), clean=True)

    def take_resume(self, epoch: int, steps: int):
        """What load_checkpoint restored, taken by a fit starting at ``epoch`` with ``steps``
        batches an epoch: None when the checkpoint is of another epoch (that fit is one of its
        own); ResumeMismatch, the restored state kept, when it was taken inside an epoch of
        another number of batches."""
        resume, self.resume = self.resume, None
        if resume is None or resume["epoch"] != epoch:
            return None
        if resume["batch"] and resume["steps"] != steps:
            self.resume = resume
            raise ResumeMismatch(f"the checkpoint was taken inside an epoch of {resume['steps']} batches; this "
                                 f"fit's epochs have {steps}: resume with the same data and batch size")
        return resume

    # ---- the arrays a step changes ---------------------------------------------------------------
    def device_arrays(self) -> dict:
        """Every device array a training step changes, by name: the parameters (and their
        bfloat16 copy), the step counter, the totals and the optimizer's slots (``slot/NAME``,
        in name order)."""
        arrays = {"params": self.params, "step": self.step, "totals": self.totals}
        if self.params_bf16 is not None:
            arrays["params_bf16"] = self.params_bf16
        arrays.update((f"slot/{k}", v) for k, v in sorted(self.slots.items()))
        return arrays

    def shared_arrays(self) -> list:
        """What every process must hold alike before data-parallel training (rank 0's are
        broadcast): the parameters, the step counter and the optimizer's slots, in name order;
        not the totals, which are each process's own."""
        return [v for k, v in self.device_arrays().items() if k != "totals"]

    def snapshot(self) -> dict:
        """Device copies of device_arrays(): what restore() puts back."""
        return {k: (v, v.copy()) for k, v in self.device_arrays().items()}

    def restore(self, saved: dict) -> None:
        """Put back what snapshot() copied (into the same arrays: captured graphs keep them)."""
        for live, copy in saved.values():
            self.backend.copy(live, copy)


def _layout(layers) -> tuple:
    """What the buffers' layout depends on: each layer's frozen flag and whether it computes in
    bfloat16 (a bfloat16 copy of the weights then)."""
    return tuple((not l.trainable, l.compute_dtype) for l in layers)
