"""Tensor, Function and reverse-mode autograd (DeZero's shape, Chainer's habits).

A ``Function`` computes on raw arrays (``forward`` / ``backward``), keeps only what
its backward needs, and records itself on its outputs.

The backend: a Function binds the current backend (``fastcnn.backend.current()``, which
the model sets to its own around each call) once, when it is called, as ``self.B``; its
forward, its backward and the accumulation of its inputs' gradients all use ``self.B`` and
nothing else, so a backward pass runs on the backend its forward ran on wherever it is
called from.  The current backend is read there alone (and by a backward started at a
leaf, which has no Function).  ``Tensor.backward`` walks the recorded graph in reverse generation
order, so every Function runs once after all of its outputs' gradients are in.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import weakref

import numpy as np

from . import backend, profiler
from .backend import checks

_grad_enabled = [True]


@contextlib.contextmanager
def no_grad():
    """Within the block nothing is recorded for backward (inference, evaluation)."""
    previous = _grad_enabled[0]
    _grad_enabled[0] = False
    try:
        yield
    finally:
        _grad_enabled[0] = previous


def is_grad_enabled() -> bool:
    return _grad_enabled[0]


class Tensor:
    """An array of the active backend plus what autograd needs."""

    __array_priority__ = 100  # so that ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            data = np.asarray(data, dtype=np.float32)
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self.name = name
        self.creator: Function | None = None
        self.generation = 0

    # array-like facts
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))

    def __len__(self):
        return self.data.shape[0]

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{grad})"

    def numpy(self) -> np.ndarray:
        """A host copy (NumPy) of the data, wherever it lives."""
        return _to_host(self.data)

    def item(self) -> float:
        return float(self.numpy().reshape(-1)[0]) if self.size == 1 else _raise_item(self.shape)

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is the upstream gradient; it may be omitted only for a scalar.
        """
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() of a non-scalar tensor of shape {self.shape} needs the "
                                 "upstream gradient: call t.backward(grad) with an array of that shape")
            grad = _xp(self.data).ones_like(self.data)
        grad = grad.data if isinstance(grad, Tensor) else grad
        if tuple(grad.shape) != self.shape:
            raise ValueError(f"upstream gradient has shape {tuple(grad.shape)}, tensor has {self.shape}")
        if self.creator is None:
            _accumulate(self, grad, backend.current())
            return
        self.grad = grad
        counter = itertools.count()  # ties in generation: first come, first served
        heap = [(-self.creator.generation, next(counter), self.creator)]
        seen = {id(self.creator)}
        pending = {id(self): self}  # tensors holding a gradient whose creator has not run yet
        outer = profiler.state.layer, profiler.state.phase  # the profiler's names, set per Function below
        while heap:
            _, _, fn = heapq.heappop(heap)
            if not hasattr(fn, "inputs"):
                raise RuntimeError("this graph was already differentiated once (its saved arrays are "
                                   "freed); run the forward pass again")
            outputs = [ref() for ref in fn.outputs]
            grads_out = [None if out is None else out.grad for out in outputs]
            for out in outputs:
                if out is not None:
                    out.grad = None  # gradients of intermediates are not kept (memory)
                    pending.pop(id(out), None)
            if profiler.state.profile is not None:  # fn's backward calls go to the layer that made fn
                profiler.state.layer, profiler.state.phase = getattr(fn, "layer", "-"), "backward"
            grads_in = fn.backward(*grads_out)
            inputs, B = fn.inputs, fn.B
            fn.release()  # what backward needed is freed now, not when the GC finds the cycle
            if not isinstance(grads_in, tuple):
                grads_in = (grads_in,)
            for x, gx in zip(inputs, grads_in):
                if gx is None or not x.requires_grad:
                    continue
                _accumulate(x, gx, B)
                if x.creator is not None:
                    pending[id(x)] = x
                    if id(x.creator) not in seen:
                        seen.add(id(x.creator))
                        heapq.heappush(heap, (-x.creator.generation, next(counter), x.creator))
        profiler.state.layer, profiler.state.phase = outer

    # arithmetic used by losses, metrics and user code (not on the training fast path)
    def __add__(self, other): return Add()(self, other)
    def __radd__(self, other): return Add()(other, self)
    def __sub__(self, other): return Add()(self, Neg()(other))
    def __rsub__(self, other): return Add()(other, Neg()(self))
    def __neg__(self): return Neg()(self)
    def __mul__(self, other): return Mul()(self, other)
    def __rmul__(self, other): return Mul()(other, self)
    def __truediv__(self, other): return Mul()(self, Reciprocal()(other))
    def __matmul__(self, other): return MatMul()(self, other)

    def sum(self, axis=None, keepdims=False): return Sum(axis, keepdims)(self)

    def mean(self, axis=None, keepdims=False):
        n = self.size if axis is None else int(np.prod([self.shape[a] for a in np.atleast_1d(axis)]))
        return self.sum(axis, keepdims) * (1.0 / n)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape(tuple(shape))(self)


class Parameter(Tensor):
    """A trainable tensor; a model may bind its data and grad to views of flat buffers."""

    def __init__(self, data, name=None):
        super().__init__(data, requires_grad=True, name=name)
        self.grad_view = None  # when set, gradients are written here (a view of the flat buffer)
        # under a mixed_bfloat16 policy: this weight's view of the model's bfloat16 copy of the
        # flat buffer, what layers compute with (None: no stored copy, a cast per use)
        self.bf16_view = None


def _accumulate(x: Tensor, gx, B) -> None:
    """Add gx to x's gradient on backend B (that of the Function that computed gx)."""
    view = getattr(x, "grad_view", None)
    if x.grad is None:
        if view is not None and gx is not view:  # (a Function may have written the view itself)
            B.copy(view, gx)
            x.grad = view
        else:
            x.grad = gx
    else:
        total = B.add(x.grad, gx)
        if view is not None and x.grad is view:
            B.copy(view, total)
        else:
            x.grad = total


class Function:
    """One differentiable operation. Subclasses define forward(*arrays) and backward(*grads).

    In forward, ``self.needs_grad[i]`` says whether input i wants a gradient, so
    backward can skip work (LeNet's first convolution never needs d(input)).
    """

    inputs: tuple
    outputs: list

    def __call__(self, *inputs):
        inputs = tuple(x if isinstance(x, Tensor) else Tensor(_as_array_like(x, inputs)) for x in inputs)
        self.B = backend.current()   # bound once: forward, backward and accumulation use it
        if profiler.state.profile is not None:  # its backward's calls go to the same layer
            self.layer = profiler.state.layer
        record = _grad_enabled[0] and any(x.requires_grad for x in inputs)
        self.needs_grad = tuple(record and x.requires_grad for x in inputs)
        ys = self.forward(*(x.data for x in inputs))
        if not isinstance(ys, tuple):
            ys = (ys,)
        outputs = [Tensor(y, requires_grad=record) for y in ys]
        if record:
            self.inputs = inputs
            self.generation = max(x.generation for x in inputs)
            for y in outputs:
                y.creator = self
                y.generation = self.generation + 1
            self.outputs = [weakref.ref(y) for y in outputs]  # no Tensor <-> Function cycle
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def forward(self, *xs):
        raise NotImplementedError

    def release(self) -> None:
        """Drop the arrays kept for backward (each graph is differentiated once)."""
        self.__dict__.clear()

    def backward(self, *gys):
        raise NotImplementedError


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, gy):
        return _unbroadcast(gy, self.shapes[0]), _unbroadcast(gy, self.shapes[1])


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, gy):
        return -gy


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        return _unbroadcast(gy * self.b, self.a.shape), _unbroadcast(gy * self.a, self.b.shape)


class Reciprocal(Function):
    def forward(self, a):
        self.y = 1.0 / a
        return self.y

    def backward(self, gy):
        return -gy * self.y * self.y


class Sum(Function):
    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.shape = a.shape
        return a.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        xp = _xp(gy)
        if self.axis is not None and not self.keepdims:
            gy = xp.expand_dims(gy, self.axis)
        return xp.broadcast_to(gy, self.shape).copy()


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, a):
        self.in_shape = a.shape
        return a.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class MatMul(Function):
    def forward(self, a, b):
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"matmul takes 2-D tensors, got shapes {a.shape} and {b.shape}")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"matmul: inner sizes differ, {a.shape} @ {b.shape}")
        self.a, self.b = a, b
        return self.B.matmul(a, b, False, False)

    def backward(self, gy):
        ga = self.B.matmul(gy, self.b, False, True) if self.needs_grad[0] else None
        gb = self.B.matmul(self.a, gy, True, False) if self.needs_grad[1] else None
        return ga, gb


def _unbroadcast(g, shape):
    """Sum a broadcast gradient back to ``shape``."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def _as_array_like(value, peers):
    """A Python number becomes a 0-d array of the peers' backend and dtype."""
    ref = next(x for x in peers if isinstance(x, Tensor)).data
    return _xp(ref).asarray(value, dtype=ref.dtype)


def _xp(a):
    return checks.array_module(a)


def _to_host(a) -> np.ndarray:
    return checks.to_host(a)


def _raise_item(shape):
    raise ValueError(f"item() needs a tensor with one element, got shape {shape}")
