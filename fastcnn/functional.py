"""Differentiable operations on Tensors; each body calls the active backend's primitives.

Tensors in, Tensors out.  Layout NHWC, conv weights HWIO, dense weights (in, out).
Padding is 'valid', 'same' (Keras's rule, also for stride > 1) or explicit:
an int, a pair (pad_h, pad_w) or four numbers (top, bottom, left, right).
"""
from __future__ import annotations

import numpy as np

from . import dtypes
from .backend import checks
from .backend.checks import output_size, pair  # noqa: F401 (layers.py takes them from here)
from .tensor import Function, Tensor

ACTIVATIONS = (None, "linear", "relu", "softmax")


def resolve_padding(padding, in_hw, kernel_hw, strides) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for 'valid', 'same' or explicit padding."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode != "same":
            raise ValueError(f"padding must be 'valid', 'same' or numbers, got {padding!r}")
        pads = []
        for size, k, s in zip(in_hw, kernel_hw, strides):
            out = -(-size // s)  # ceil: Keras/TensorFlow 'same'
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # the extra pixel goes to the bottom/right
        return tuple(pads)
    if isinstance(padding, (int, np.integer)):
        padding = (padding, padding)
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    if len(padding) != 4 or min(padding) < 0:
        raise ValueError(f"explicit padding must be 1, 2 or 4 non-negative ints, got {padding}")
    return padding


def _check_nhwc(x, what="input"):
    if x.ndim != 4:
        raise ValueError(f"{what} must be 4-D NHWC (batch, height, width, channels), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (shape {x.shape})")


class Conv2D(Function):
    def __init__(self, strides, pads, relu):
        self.strides, self.pads, self.relu = strides, pads, relu

    def forward(self, x, w, b=None):
        self.x, self.w = x, w
        self.y = self.B.conv2d_forward(x, w, b, self.strides, self.pads, self.relu)
        return self.y

    def backward(self, gy):
        if self.relu:
            gy = self.B.relu_backward(gy, self.y)
        gx = (self.B.conv2d_backward_data(gy, self.w, self.x.shape, self.strides, self.pads)
              if self.needs_grad[0] else None)
        gw = (self.B.conv2d_backward_weights(self.x, gy, self.w.shape, self.strides, self.pads,
                                             out=_weight_grad_target(self, 1))
              if self.needs_grad[1] else None)
        return (gx, gw) + _bias_grad(self, gy)


def conv2d(x, w, b=None, strides=1, padding="valid", activation=None):
    """2-D convolution, NHWC input, HWIO weights; ``activation='relu'`` is fused into the kernel.
    Computes in x's dtype: bfloat16 x reads a float32 w as its bfloat16 copy (compute_weight);
    the bias stays float32."""
    x = _tensor(x)
    w = compute_weight(w, x.dtype)
    _check_nhwc(x)
    if w.ndim != 4:
        raise ValueError(f"conv2d weights must be 4-D HWIO (kh, kw, in_channels, filters), got shape {w.shape}")
    strides = pair(strides, "strides")
    pads = resolve_padding(padding, x.shape[1:3], w.shape[:2], strides)
    checks.conv_geometry(x.shape, w.shape, strides, pads)
    relu = _fusable(activation)
    args = (x, w) if b is None else (x, w, _tensor(b))
    if b is not None and args[2].shape != (w.shape[3],):
        raise ValueError(f"conv2d bias must have shape ({w.shape[3]},), got {args[2].shape}")
    y = Conv2D(strides, pads, relu)(*args)
    return softmax(y) if activation == "softmax" else y


class MaxPool2D(Function):
    def __init__(self, pool, strides, pads):
        self.pool, self.strides, self.pads = pool, strides, pads

    def forward(self, x):
        self.x_shape = x.shape
        y, self.argmax = self.B.maxpool_forward(x, self.pool, self.strides, self.pads)
        return y

    def backward(self, gy):
        return self.B.maxpool_backward(gy, self.argmax, self.x_shape, self.pool, self.strides, self.pads)


def max_pool2d(x, pool_size=2, strides=None, padding="valid"):
    """Max-pooling over windows of ``pool_size``; ``strides`` defaults to ``pool_size`` (Keras)."""
    x = _tensor(x)
    _check_nhwc(x)
    pool = pair(pool_size, "pool_size")
    strides = pool if strides is None else pair(strides, "strides")
    pads = resolve_padding(padding, x.shape[1:3], pool, strides)
    checks.pool_geometry(x.shape, pool, strides, pads)
    return MaxPool2D(pool, strides, pads)(x)


class Dense(Function):
    def __init__(self, relu):
        self.relu = relu

    def forward(self, x, w, b=None):
        self.x, self.w = x, w
        self.y = self.B.dense_forward(x, w, b, self.relu)
        return self.y

    def backward(self, gy):
        if self.relu:
            gy = self.B.relu_backward(gy, self.y)
        gx = self.B.matmul(gy, self.w, False, True) if self.needs_grad[0] else None
        gw = (self.B.matmul(self.x, gy, True, False, out=_weight_grad_target(self, 1))
              if self.needs_grad[1] else None)
        return (gx, gw) + _bias_grad(self, gy)


def dense(x, w, b=None, activation=None):
    """x @ w + b for x of shape (batch, in) and w of shape (in, out); 'relu' is fused.
    Computes in x's dtype, as conv2d does."""
    x = _tensor(x)
    w = compute_weight(w, x.dtype)
    if x.ndim != 2:
        raise ValueError(f"dense input must be 2-D (batch, features), got shape {x.shape}; add a Flatten first")
    if x.shape[0] == 0:
        raise ValueError(f"dense input is an empty batch (shape {x.shape})")
    if w.ndim != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(f"dense: input has {x.shape[1]} features but the weights have shape {w.shape} "
                         f"(expected ({x.shape[1]}, units))")
    args = (x, w) if b is None else (x, w, _tensor(b))
    if b is not None and args[2].shape != (w.shape[1],):
        raise ValueError(f"dense bias must have shape ({w.shape[1]},), got {args[2].shape}")
    y = Dense(_fusable(activation))(*args)
    return softmax(y) if activation == "softmax" else y


class ReLU(Function):
    def forward(self, x):
        self.y = self.B.relu_forward(x)
        return self.y

    def backward(self, gy):
        return self.B.relu_backward(gy, self.y)


def relu(x):
    return ReLU()(_tensor(x))


class LeakyReLU(Function):
    def __init__(self, negative_slope):
        self.negative_slope = negative_slope

    def forward(self, x):
        self.x = x  # the sign of x, not of y: y loses it where negative_slope is 0
        return self.B.leaky_relu_forward(x, self.negative_slope)

    def backward(self, gy):
        return self.B.leaky_relu_backward(gy, self.x, self.negative_slope)


def leaky_relu(x, negative_slope=0.3):
    """x where x >= 0, else negative_slope * x (Keras's LeakyReLU; its default slope)."""
    return LeakyReLU(negative_slope)(_tensor(x))


class Softmax(Function):
    def forward(self, x):
        self.x_dtype = x.dtype
        self.y = self.B.softmax(x)
        return self.y

    def backward(self, gy):
        y = self.y
        gx = y * (gy - (gy * y).sum(axis=-1, keepdims=True))
        return gx if gx.dtype == self.x_dtype else self.B.cast(gx, dtypes.name(self.x_dtype))


def softmax(x):
    """Softmax over the last axis of a 2-D tensor; float32 output for bfloat16 input too."""
    x = _tensor(x)
    if x.ndim != 2:
        raise ValueError(f"softmax takes a 2-D tensor (batch, classes), got shape {x.shape}")
    return Softmax()(x)


class SoftmaxCrossEntropy(Function):
    def __init__(self, labels, totals):
        self.labels, self.totals = labels, totals

    def forward(self, logits):
        batch_totals = self.B.xp.zeros(2, dtype=np.float64)
        self.dlogits = self.B.softmax_cross_entropy(logits, self.labels, batch_totals)
        if self.totals is not None:
            self.totals += batch_totals
        return (batch_totals[0] / logits.shape[0]).astype(logits.dtype)

    def backward(self, gy):
        return self.dlogits * gy


def check_labels(labels, n: int, classes: int, xp=np):
    """Validate labels against logits of shape (n, classes); return them as int32 or float array."""
    labels = xp.asarray(labels)
    if labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1 and classes != 1):
        labels = labels.reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"got {labels.shape[0]} labels for a batch of {n}")
        if labels.dtype.kind not in "iu":
            if labels.dtype.kind == "f" and bool((labels == xp.round(labels)).all()):
                labels = labels.astype(np.int64)
            else:
                raise TypeError(f"integer class labels expected, got dtype {labels.dtype}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"label {bad} is out of range for {classes} classes (valid: 0..{classes - 1})")
        return labels.astype(np.int32)
    if labels.ndim != 2:
        raise ValueError(f"labels must be class indices (batch,) or one-hot (batch, classes), got shape {labels.shape}")
    if labels.shape != (n, classes):
        raise ValueError(f"one-hot labels have shape {labels.shape} but the outputs have shape {(n, classes)} "
                         f"(wrong number of classes or batch)")
    return labels.astype(np.float32)


def softmax_cross_entropy(logits, labels, totals=None):
    """Mean categorical cross-entropy of softmax(logits) against class indices or one-hot labels.

    ``totals`` (float64 array (2,) on the logits' device), if given, accumulates
    [sum of losses, number correct] for metrics without a host synchronisation.
    """
    logits = _tensor(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {logits.shape}")
    xp = _xp_of(logits.data)
    labels = check_labels(labels.data if isinstance(labels, Tensor) else labels,
                          logits.shape[0], logits.shape[1], xp)
    if labels.dtype == np.float32 and logits.dtype != np.float32:
        labels = labels.astype(logits.dtype)
    return SoftmaxCrossEntropy(labels, totals)(logits)


class Dropout(Function):
    def __init__(self, rate, seed, step, offset):
        self.args = (rate, seed, step, offset)

    def forward(self, x):
        return self.B.dropout_forward(x, *self.args)

    def backward(self, gy):
        return self.B.dropout_backward(gy, *self.args)


def dropout(x, rate, training, seed=0, step=None, offset=0):
    """Inverted dropout: in training, zero each element with probability ``rate`` and scale by 1/(1-rate).

    The mask is a counter-based function of (seed, step, element index): no state in memory,
    the same mask on a replayed step.  ``step`` is an int32 array (1,) on the device;
    ``offset`` the global index of x's first sample (a data-parallel process's slice of a batch
    draws the mask one process would draw for the whole batch).
    """
    x = _tensor(x)
    checks.dropout_threshold(rate)
    if not training or rate == 0.0:
        return x
    if step is None:
        step = _xp_of(x.data).zeros(1, dtype=np.int32)
    return Dropout(float(rate), int(seed), step, int(offset))(x)


class Crop(Function):
    def __init__(self, height, width, random, flip, seed, step, offset):
        self.args = (random, flip, seed, step, offset)
        self.hw = (height, width)

    def forward(self, x):
        self.x_shape = x.shape
        return self.B.crop_forward(x, *self.hw, *self.args)

    def backward(self, gy):
        return self.B.crop_backward(gy, self.x_shape, *self.args)


def crop(x, height, width, random=False, flip=False, seed=0, step=None, offset=0):
    """Each image's height x width window: the centre, or (random=True) one drawn per image and
    step, mirrored left-right with probability 1/2 when ``flip`` (AlexNet's augmentation).

    The windows are a counter-based function of (seed, step, offset + image index), drawn on
    the device: the same on a replayed step, new on the next.  ``step`` is an int32 array (1,);
    ``offset`` the global index of x's first image (see dropout).
    """
    x = _tensor(x)
    _check_nhwc(x)
    if step is None:
        step = _xp_of(x.data).zeros(1, dtype=np.int32)
    return Crop(int(height), int(width), bool(random), bool(flip), int(seed), step, int(offset))(x)


class PCANoise(Function):
    def __init__(self, basis, seed, step, offset):
        self.args = (basis, seed, step, offset)

    def forward(self, x):
        return self.B.pca_noise_forward(x, *self.args)

    def backward(self, gy):
        return gy  # y = x + a constant per image


def pca_noise(x, basis, seed=0, step=None, offset=0):
    """AlexNet's colour noise: each RGB image plus ``basis @ alpha``, alpha three N(0, 1) draws
    per image and step, drawn on the device (see fastcnn.backend.reference.pca_noise_offsets);
    basis[c, i] = stddev * eigenvalue_i * eigenvector_i[c]; ``offset`` as dropout's."""
    x = _tensor(x)
    _check_nhwc(x)
    if step is None:
        step = _xp_of(x.data).zeros(1, dtype=np.int32)
    return PCANoise(np.asarray(basis, np.float64), int(seed), step, int(offset))(x)


class LRN(Function):
    def __init__(self, size, alpha, beta, k):
        self.params = (size, alpha, beta, k)

    def forward(self, x):
        self.x = x
        self.y, self.scale = self.B.lrn_forward(x, *self.params)
        return self.y

    def backward(self, gy):
        return self.B.lrn_backward(gy, self.x, self.y, self.scale, *self.params)


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Local response normalisation across channels, as in AlexNet (no division by size)."""
    x = _tensor(x)
    _check_nhwc(x)
    return LRN(*checks.lrn_args(size, alpha, beta, k))(x)


def flatten(x):
    x = _tensor(x)
    return x.reshape(x.shape[0], -1)


def _grad_target(t):
    """Where a parameter's first gradient of this pass may be written directly (its view of
    the model's flat gradient buffer), else None.  A weight's compute copy (compute_weight)
    stands for its float32 master there."""
    t = getattr(t, "master", t)
    return getattr(t, "grad_view", None) if t.grad is None else None


def _weight_grad_target(fn, i):
    """out= for the gradient of fn's weight input i: the master's gradient view when free; for a
    bfloat16 weight otherwise a new float32 array, since weight gradients are float32."""
    target = _grad_target(fn.inputs[i])
    if target is None and dtypes.is_bfloat16(fn.inputs[i].data):
        target = fn.B.xp.empty(fn.inputs[i].shape, dtypes.float32)
    return target


class Cast(Function):
    """x converted to another float dtype (round to nearest even down to bfloat16, exact up);
    the gradient goes back in x's dtype."""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        self.x_dtype = dtypes.name(x.dtype)
        return self.B.cast(x, self.dtype)

    def backward(self, gy):
        return gy if dtypes.name(gy.dtype) == self.x_dtype else self.B.cast(gy, self.x_dtype)


def cast(x, dtype):
    """x as 'float32' or 'bfloat16' (differentiable; x itself when it has that dtype already)."""
    x = _tensor(x)
    if dtype not in dtypes.NAMES:
        raise ValueError(f"cast: unknown dtype {dtype!r}; choose one of {sorted(dtypes.NAMES)}")
    return x if x.dtype == dtypes.NAMES[dtype] else Cast(dtype)(x)


class ComputeCopy(Function):
    """A float32 weight read in bfloat16: the model's stored copy (``Parameter.bf16_view``, kept
    up to date by every optimizer update) or else a cast; its gradient passes back as float32."""

    def __init__(self, stored):
        self.stored = stored

    def forward(self, w):
        return self.stored if self.stored is not None else self.B.cast(w, "bfloat16")

    def backward(self, gy):
        return gy if gy.dtype == dtypes.float32 else self.B.cast(gy, "float32")


def compute_weight(w, dtype):
    """The weight ``w`` as a layer computing in ``dtype`` reads it: w itself, or for a float32
    w and bfloat16 compute its bfloat16 copy, whose gradient lands on w (float32, straight into
    w's view of the model's gradient buffer when it has one)."""
    w = _tensor(w)
    if dtype != dtypes.bfloat16 or w.dtype != dtypes.float32:
        return w
    copy = ComputeCopy(getattr(w, "bf16_view", None))(w)
    copy.master = w
    return copy


def _bias_grad(fn, gy) -> tuple:
    """The bias gradient of a conv/dense Function with a bias input; () without one."""
    if len(fn.needs_grad) < 3:
        return ()
    return (fn.B.bias_grad(gy, out=_grad_target(fn.inputs[2])) if fn.needs_grad[2] else None,)


def _fusable(activation) -> bool:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use one of {ACTIVATIONS}")
    return activation == "relu"


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


_xp_of = checks.array_module
