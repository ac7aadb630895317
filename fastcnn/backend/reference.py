"""The NumPy reference backend: the oracle every GPU kernel is checked against.

Readable first, vectorised second.  Every primitive of ``fastcnn.backend.PRIMITIVES``
is here with the signature and semantics that ``fastcnn/backend/__init__.py``
documents.  Convolution is im2col (a strided view, one copy, one BLAS matmul);
its data gradient is one matmul followed by R*S shifted slice additions (col2im).

Dtype rule: float32 in, float32 out; float64 in, float64 out.  Nothing upcasts a
whole tensor, because a float64 detour halves the speed of the float32 path.
bfloat16 (the mixed_bfloat16 policy) follows the contract in ``fastcnn/backend/__init__.py``:
GEMM and convolution widen their bfloat16 inputs exactly to float32, compute and
accumulate in float32 (+ the float32 bias, ReLU) and round the output once, to nearest
even, to bfloat16; weight gradients (conv2d_backward_weights, matmul into a float32
``out=``) stay float32.  The other ops that follow their input's dtype (max-pool, ReLU,
dropout, crop, colour noise, LRN, add, softmax_cross_entropy's dlogits) share one rule,
``_follows_input_dtype``: bfloat16 arguments widened exactly to float32, the float32 op,
each float array result rounded once to bfloat16.  bias_grad and softmax of bfloat16
give float32; the optimizers write the updated float32 master weights rounded to a
bfloat16 copy (``p_bf16``) as well.

Inputs that are not C-contiguous are made contiguous (a copy); arrays updated in
place (parameters, optimizer state, ``totals``, ``step``) must already be
contiguous NumPy arrays, as on the GPU, so an update never lands in a copy.
"""
from __future__ import annotations

import functools
import inspect
import numbers

import numpy
import numpy as np

from .. import config, dtypes
from ..dtypes import bfloat16
from . import checks

name = "reference"
xp = numpy
device = "cpu"

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), bfloat16)
_MASK32 = np.uint64(0xFFFFFFFF)


def unavailable_reason() -> None:
    """The reference runs wherever NumPy does."""
    return None


def asarray(a, dtype=None):
    """A C-contiguous NumPy array; a CuPy array is copied to the host first."""
    return np.ascontiguousarray(checks.to_host(a), dtype=dtype)


to_host = checks.to_host


def synchronize() -> None:
    """Nothing to wait for: NumPy calls return when their work is done."""


# ---------------------------------------------------------------- argument checks

def _float_array(a, name, ndim=None):
    """``a`` as a C-contiguous float32/float64 array, or a TypeError/ValueError naming ``name``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape} ({a.ndim}-D)")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    return np.ascontiguousarray(a)


def _inplace_array(a, name, dtype=None):
    """An array that a primitive updates in place: must be a contiguous NumPy array."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array (updated in place), got {type(a).__name__}")
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array (it is updated in place)")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype)}, got {a.dtype}")
    return a


def _same_dtype(dtype, **arrays):
    for arg, a in arrays.items():
        if a.dtype != dtype:
            raise TypeError(f"{arg} has dtype {a.dtype} but the other operands are {dtype}")


def _pad(x, padding, value=0.0):
    """x (N,H,W,C) padded on H and W; no copy when there is no padding."""
    top, bottom, left, right = padding
    if not any(padding):
        return x
    N, H, W, C = x.shape
    out = np.full((N, H + top + bottom, W + left + right, C), value, dtype=x.dtype)
    out[:, top:top + H, left:left + W, :] = x
    return out


def _crop(xp_, shape, padding):
    N, H, W, C = shape
    top, _, left, _ = padding
    if not any(padding):
        return xp_
    return np.ascontiguousarray(xp_[:, top:top + H, left:left + W, :])


# ---------------------------------------------------------------- TF32

def round_tf32(a):
    """float32 ``a`` rounded to TF32 as ``cvt.rna.tf32.f32`` does: to nearest, ties away
    from zero, 10 mantissa bits kept (the low 13 bits cleared); NaN and Inf unchanged.
    A value within half a TF32 step of the largest float32 rounds to Inf, as on the GPU."""
    a = np.asarray(a)
    if a.dtype != np.float32:
        raise TypeError(f"round_tf32 takes float32, got {a.dtype}")
    bits = np.ascontiguousarray(a).view(np.uint32)
    rounded = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return np.where(np.isfinite(a), rounded, bits).view(np.float32)


def _tf32_inputs(*arrays):
    """The GEMM/convolution inputs as the current precision computes with them: rounded to
    TF32 under ``fastcnn.config`` precision "high" (float32 arrays only), else unchanged."""
    if not config.tf32_allowed():
        return arrays
    return tuple(round_tf32(a) if a.dtype == np.float32 else a for a in arrays)


# ---------------------------------------------------------------- bfloat16 GEMM inputs and outputs

def _widened(*arrays):
    """The GEMM/convolution inputs as it multiplies them: bfloat16 widened exactly to float32
    (a product of two bfloat16 values is exact in float32), others unchanged."""
    return tuple(a.astype(np.float32) if a.dtype == bfloat16 else a for a in arrays)


def _rounded(y, dtype):
    """A GEMM's result (float32 for bfloat16 inputs) in the inputs' dtype ``dtype``: rounded
    once, to nearest even, to bfloat16; float32 and float64 unchanged."""
    return y.astype(bfloat16) if dtype == bfloat16 else y


def _follows_input_dtype(*names):
    """The contract's rule for an op whose array arguments ``names`` share one dtype and whose
    results have that dtype: with bfloat16 arguments, the float32 op runs on the exactly
    widened values and each float array it returns is rounded once, to nearest even, to
    bfloat16 (an argmax stays uint8).  float32 and float64 calls run the op unchanged."""
    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if not any(getattr(a, "dtype", None) == bfloat16 for a in (*args, *kwargs.values())):
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            arrays = {n: bound.arguments[n] for n in names if isinstance(bound.arguments.get(n), np.ndarray)}
            if not any(a.dtype == bfloat16 for a in arrays.values()):
                return fn(*args, **kwargs)  # a bfloat16 array where the op takes none: its checks say so
            for arg, a in arrays.items():
                if a.dtype != bfloat16:
                    raise TypeError(f"{arg} has dtype {a.dtype} but the other operands are bfloat16")
                bound.arguments[arg] = dtypes.to_float32(a)
            result = fn(*bound.args, **bound.kwargs)
            if isinstance(result, tuple):
                return tuple(_rounded_float(r) for r in result)
            return _rounded_float(result)
        return call
    return wrap


def _rounded_float(a):
    """A float32 result of a bfloat16 call, rounded once to bfloat16; other arrays unchanged."""
    return dtypes.to_bfloat16(a) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a


def _bias(b, dtype, n, what):
    """The bias checked: 1-D of length n; float32 for bfloat16 inputs (the master bias), else
    the inputs' dtype."""
    b = _float_array(b, "b", 1)
    want = np.dtype(np.float32) if dtype == bfloat16 else dtype
    if b.dtype != want:
        raise TypeError(f"b has dtype {b.dtype} but must be {want} for {dtype} inputs"
                        + (" (the float32 master bias)" if dtype == bfloat16 else ""))
    checks.bias_length(b.shape[0], n, what)
    return b


# ---------------------------------------------------------------- convolution



def _im2col(x, R, S, stride, padding, P, Q):
    """Patches of x as an (N*P*Q, R*S*C) matrix whose columns run (r, s, c), matching HWIO.

    Built from a strided view by one copy.  NumPy copies fast only along long
    contiguous runs, so the layout follows the longer run: for a fixed window row r
    the S*C values (s, c) are contiguous in NHWC; with stride 1 a channel-first copy
    instead has runs of Q along the output row.  Conv1 of LeNet (C = 1, S = 5,
    Q = 28) copies about 3.5x faster channel-first.  The channel-first result is
    returned as the transposed view of an (R*S*C, N*P*Q) array; matmul takes either.
    """
    xp_ = _pad(x, padding)
    N, Hp, Wp, C = xp_.shape
    sh, sw = stride
    if sw == 1 and Q > S * C:
        xt = np.ascontiguousarray(xp_.transpose(3, 0, 1, 2))  # (C, N, Hp, Wp)
        sC, sN, sH, sW = xt.strides
        view = np.lib.stride_tricks.as_strided(
            xt, shape=(R, S, C, N, P, Q), strides=(sH, sW, sC, sN, sh * sH, sW), writeable=False)
        return view.reshape(R * S * C, N * P * Q).T
    sN, sH, sW, _ = xp_.strides
    view = np.lib.stride_tricks.as_strided(
        xp_, shape=(N, P, Q, R, S * C), strides=(sN, sh * sH, sw * sW, sH, xp_.itemsize),
        writeable=False)
    return view.reshape(N * P * Q, R * S * C)


def conv2d_forward(x, w, b, stride, padding, relu):
    """y = x * w (+ b) (ReLU if ``relu``): x (N,H,W,C), w (R,S,C,K) -> y (N,P,Q,K)."""
    x = _float_array(x, "x", 4)
    w = _float_array(w, "w", 4)
    _same_dtype(x.dtype, w=w)
    stride, padding, P, Q = checks.conv_geometry(x.shape, w.shape, stride, padding)
    N, H, W, C = x.shape
    R, S, _, K = w.shape
    dtype = x.dtype
    if b is not None:
        b = _bias(b, dtype, K, "output channels of w")
    x, w = _widened(*_tf32_inputs(x, w))
    y = _im2col(x, R, S, stride, padding, P, Q) @ w.reshape(R * S * C, K)
    if b is not None:
        # Add the bias along whole output rows (Q*K values, bias tiled Q times): broadcasting
        # a short K-vector over N*P*Q rows is several times slower when K is small.
        rows = y.reshape(N * P, Q * K)  # a view of y
        rows += np.tile(b, Q)
    if relu:
        np.maximum(y, 0, out=y)
    return _rounded(y.reshape(N, P, Q, K), dtype)


def conv2d_backward_data(dy, w, x_shape, stride, padding):
    """dx (N,H,W,C): column gradients dy @ w^T, then col2im as R*S shifted slice additions."""
    w = _float_array(w, "w", 4)
    dy = _float_array(dy, "dy", 4)
    _same_dtype(w.dtype, dy=dy)
    N, H, W, C = x_shape = checks.shape4(x_shape, "x_shape")
    stride, padding, P, Q = checks.conv_geometry(x_shape, w.shape, stride, padding, x_name="x_shape")
    R, S, _, K = w.shape
    checks.expect_shape("dy", dy.shape, (N, P, Q, K))
    dtype = dy.dtype
    dy, w = _widened(*_tf32_inputs(dy, w))
    # One contiguous (N*P*Q, C) column block per tap (r, s), so that its addition into dx
    # runs along whole output rows (3x faster than slicing an (N*P*Q, R*S*C) matrix).
    # One window row r at a time: the column buffer is R times smaller than im2col's.
    dy_rows = dy.reshape(N * P * Q, K)
    w_taps = w.transpose(0, 1, 3, 2)  # (R, S, K, C)
    top, bottom, left, right = padding
    sh, sw = stride
    dxp = np.zeros((N, H + top + bottom, W + left + right, C), dtype=dy.dtype)
    for r in range(R):
        cols = np.matmul(dy_rows, w_taps[r]).reshape(S, N, P, Q, C)
        for s in range(S):
            dxp[:, r:r + sh * (P - 1) + 1:sh, s:s + sw * (Q - 1) + 1:sw, :] += cols[s]
    return _rounded(_crop(dxp, (N, H, W, C), padding), dtype)


def _into(out, result):
    """Write ``result`` into ``out`` when given (the GPU backends' out= convention)."""
    if out is None:
        return result
    if out.shape != result.shape or out.dtype != result.dtype:
        raise ValueError(f"out has shape {out.shape} {out.dtype}, expected {result.shape} {result.dtype}")
    out[...] = result
    return out


def conv2d_backward_weights(x, dy, w_shape, stride, padding, *, out=None):
    """dw (R,S,C,K) = patches(x)^T @ dy; float32 for bfloat16 x and dy (a weight gradient)."""
    x = _float_array(x, "x", 4)
    dy = _float_array(dy, "dy", 4)
    _same_dtype(x.dtype, dy=dy)
    R, S, C, K = w_shape = checks.shape4(w_shape, "w_shape")
    stride, padding, P, Q = checks.conv_geometry(x.shape, w_shape, stride, padding, w_name="w_shape")
    N = x.shape[0]
    checks.expect_shape("dy", dy.shape, (N, P, Q, K))
    x, dy = _widened(*_tf32_inputs(x, dy))
    cols = _im2col(x, R, S, stride, padding, P, Q)
    return _into(out, (cols.T @ dy.reshape(N * P * Q, K)).reshape(R, S, C, K))


# ---------------------------------------------------------------- max-pooling

def _window_slices(r, s, stride, P, Q):
    sh, sw = stride
    return (slice(None), slice(r, r + sh * (P - 1) + 1, sh), slice(s, s + sw * (Q - 1) + 1, sw), slice(None))


@_follows_input_dtype("x")
def maxpool_forward(x, pool, stride, padding):
    """(y, argmax): the max of each window and its index r*pool_w + s (uint8).

    y is the elementwise maximum of the pool_h*pool_w shifted slices; argmax is the
    first window position (row-major) whose value equals y, found by walking the
    positions from last to first so that earlier ones overwrite later ones.
    Padded positions are masked out of the equality, so they never win.  (A window
    holding NaN gives y = NaN and, as nothing equals NaN, the last position.)
    """
    x = _float_array(x, "x", 4)
    (ph, pw), stride, padding, P, Q = checks.pool_geometry(x.shape, pool, stride, padding)
    N, H, W, C = x.shape
    xp_ = _pad(x, padding, -np.inf)
    taps = [(r, s) for r in range(ph) for s in range(pw)]
    y = xp_[_window_slices(0, 0, stride, P, Q)].copy()
    for r, s in taps[1:]:
        np.maximum(y, xp_[_window_slices(r, s, stride, P, Q)], out=y)
    inside = _inside_masks(H, W, (ph, pw), stride, padding, P, Q) if any(padding) else None
    argmax = np.zeros((N, P, Q, C), dtype=np.uint8)
    argmax += np.uint8(len(taps) - 1)
    step = np.empty_like(argmax)
    for index in range(len(taps) - 2, -1, -1):
        r, s = taps[index]
        hit = xp_[_window_slices(r, s, stride, P, Q)] == y
        if inside is not None:
            hit &= inside[r][s]
        # argmax > index wherever it is still unset by an earlier tap: argmax -= (argmax - index) * hit
        np.subtract(argmax, np.uint8(index), out=step)
        step *= hit
        argmax -= step
    return y, argmax


def _inside_masks(H, W, pool, stride, padding, P, Q):
    """inside[r][s]: (1, P, Q, 1) bool, True where window position (r, s) lies in x, not padding."""
    (ph, pw), (sh, sw) = pool, stride
    top, _, left, _ = padding
    rows = np.arange(P)[:, None] * sh + np.arange(ph)[None, :] - top  # x row of (p, r)
    cols = np.arange(Q)[:, None] * sw + np.arange(pw)[None, :] - left
    row_ok = (rows >= 0) & (rows < H)
    col_ok = (cols >= 0) & (cols < W)
    return [[(row_ok[:, r][:, None] & col_ok[:, s][None, :])[None, :, :, None] for s in range(pw)]
            for r in range(ph)]


@_follows_input_dtype("dy")
def maxpool_backward(dy, argmax, x_shape, pool, stride, padding):
    """dx: each input element gathers dy from every window whose argmax picked it."""
    dy = _float_array(dy, "dy", 4)
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.uint8:
        raise TypeError(f"argmax must be a uint8 NumPy array (from maxpool_forward), got "
                        f"{getattr(argmax, 'dtype', type(argmax).__name__)}")
    N, H, W, C = x_shape = checks.shape4(x_shape, "x_shape")
    (ph, pw), stride, padding, P, Q = checks.pool_geometry(x_shape, pool, stride, padding)
    checks.pool_grad_shapes(dy.shape, argmax.shape, (N, P, Q, C))
    if argmax.max() >= ph * pw:
        raise ValueError(f"argmax holds {argmax.max()}, outside the {ph}x{pw} window")
    top, bottom, left, right = padding
    dxp = np.zeros((N, H + top + bottom, W + left + right, C), dtype=dy.dtype)
    # Windows that do not overlap (stride >= pool, as in LeNet) give each tap its own
    # elements of dx, so the tap's share is written straight into place, not added.
    disjoint = stride[0] >= ph and stride[1] >= pw
    for r in range(ph):
        for s in range(pw):
            picked = argmax == r * pw + s
            target = dxp[_window_slices(r, s, stride, P, Q)]
            if disjoint:
                np.multiply(dy, picked, out=target)
            else:
                target += dy * picked
    return _crop(dxp, (N, H, W, C), padding)


# ---------------------------------------------------------------- dense and elementwise

def matmul(a, b, trans_a, trans_b, *, out=None):
    """op(a) @ op(b) for 2-D a and b; op transposes when its flag is true.  bfloat16 a and b
    give bfloat16, or float32 when ``out`` is a float32 array (a weight gradient)."""
    a = _float_array(a, "a", 2)
    b = _float_array(b, "b", 2)
    _same_dtype(a.dtype, b=b)
    dtype = a.dtype
    a, b = _widened(*_tf32_inputs(a, b))
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if opa.shape[1] != opb.shape[0]:
        raise ValueError(f"inner dimensions differ: op(a) is {opa.shape}, op(b) is {opb.shape}")
    y = np.ascontiguousarray(opa @ opb)
    if dtype == bfloat16 and isinstance(out, np.ndarray) and out.dtype == np.float32:
        return _into(out, y)
    return _into(out, _rounded(y, dtype))


def dense_forward(x, w, b, relu):
    """x (N, in) @ w (in, out) + b (out,), ReLU if ``relu``."""
    x = _float_array(x, "x", 2)
    w = _float_array(w, "w", 2)
    _same_dtype(x.dtype, w=w)
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"x has {x.shape[1]} features but w expects {w.shape[0]} (w is (in, out) = {w.shape})")
    dtype = x.dtype
    if b is not None:
        b = _bias(b, dtype, w.shape[1], "outputs of w")
    y = np.matmul(*_widened(*_tf32_inputs(x, w)))
    if b is not None:
        y += b
    if relu:
        np.maximum(y, 0, out=y)
    return _rounded(y, dtype)


def bias_grad(dy, *, out=None):
    """Sum of dy over every axis but the last; float32 for bfloat16 dy (float32 accumulation)."""
    dy = dtypes.to_float32(_float_array(dy, "dy")) if dtypes.is_bfloat16(dy) else _float_array(dy, "dy")
    rows = dy.reshape(-1, dy.shape[-1])
    # A BLAS matrix-vector product: NumPy's sum over axis 0 is ~10x slower for few columns.
    return _into(out, np.ones(rows.shape[0], dtype=dy.dtype) @ rows)


@_follows_input_dtype("x")
def relu_forward(x):
    x = _float_array(x, "x")
    return np.maximum(x, 0)


@_follows_input_dtype("dy", "y")
def relu_backward(dy, y):
    dy = _float_array(dy, "dy")
    y = _float_array(y, "y")
    _same_dtype(dy.dtype, y=y)
    if dy.shape != y.shape:
        raise ValueError(f"dy {dy.shape} and y {y.shape} must have the same shape")
    return dy * (y > 0)  # (np.where with a scalar is ~15x slower here)


def leaky_relu_forward(x, negative_slope):
    x = _float_array(x, "x")
    (wide,) = _widened(x)  # bfloat16: float32 math, one rounding at the end
    slope = wide.dtype.type(checks.leaky_slope(negative_slope))
    return _rounded(np.where(wide >= 0, wide, wide * slope), x.dtype)


def leaky_relu_backward(dy, x, negative_slope):
    dy = _float_array(dy, "dy")
    x = _float_array(x, "x")
    _same_dtype(dy.dtype, x=x)
    if dy.shape != x.shape:
        raise ValueError(f"dy {dy.shape} and x {x.shape} must have the same shape")
    wide_dy, wide_x = _widened(dy, x)
    slope = wide_dy.dtype.type(checks.leaky_slope(negative_slope))
    return _rounded(wide_dy * np.where(wide_x >= 0, wide_dy.dtype.type(1), slope), dy.dtype)


def softmax(x):
    """Row softmax over the last axis of a 2-D array (max-subtracted); float32 for bfloat16 x."""
    x = _float_array(x, "x", 2)
    if x.dtype == bfloat16:
        x = dtypes.to_float32(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


def _label_matrix(labels, N, classes, dtype):
    """(one-hot or soft label matrix, index of each row's label for accuracy)."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a NumPy array, got {type(labels).__name__}")
    if labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"1-D labels are class indices and must be integers, got {labels.dtype}")
        if labels.shape[0] != N:
            raise ValueError(f"labels has {labels.shape[0]} rows but logits has {N}")
        bad = labels[(labels < 0) | (labels >= classes)]
        if bad.size:
            raise ValueError(f"label {int(bad[0])} is out of range [0, {classes})")
        onehot = np.zeros((N, classes), dtype=dtype)
        onehot[np.arange(N), labels] = 1
        return onehot, labels
    if labels.ndim == 2:
        if not (np.issubdtype(labels.dtype, np.floating) or np.issubdtype(labels.dtype, np.integer)):
            raise TypeError(f"label rows must be numeric (one-hot or soft), got {labels.dtype}")
        if labels.shape != (N, classes):
            raise ValueError(f"labels has shape {labels.shape} but logits needs {(N, classes)}: "
                             f"one-hot labels must have {classes} columns")
        return labels.astype(dtype, copy=False), labels.argmax(axis=1)
    raise ValueError(f"labels must be class indices (N,) or one-hot (N, classes), got shape {labels.shape}")


@_follows_input_dtype("logits")
def softmax_cross_entropy(logits, labels, totals):
    """dlogits = (softmax(logits) - onehot) / N; adds loss sum and correct count to ``totals``.

    Per-row loss is logsumexp(z) - sum(y * z) for label row y, computed on
    s = z - max(z): log(sum(exp(s))) - sum(y * s) + max(z) * (1 - sum(y)); the last
    term vanishes for one-hot and normalised soft labels and keeps the loss exact otherwise.
    """
    logits = _float_array(logits, "logits", 2)
    _inplace_array(totals, "totals", np.float64)
    if totals.shape != (2,):
        raise ValueError(f"totals must have shape (2,) (loss sum, correct count), got {totals.shape}")
    N, classes = logits.shape
    onehot, target = _label_matrix(labels, N, classes, logits.dtype)
    zmax = logits.max(axis=1, keepdims=True)
    shifted = logits - zmax
    e = np.exp(shifted)
    sum_e = e.sum(axis=1, keepdims=True)
    row_loss = np.log(sum_e[:, 0]) - (onehot * shifted).sum(axis=1)
    if labels.ndim == 2:
        row_loss += zmax[:, 0] * (1 - onehot.sum(axis=1))
    totals[0] += row_loss.sum(dtype=np.float64)
    totals[1] += np.count_nonzero(logits.argmax(axis=1) == target)
    e /= sum_e
    e -= onehot
    e *= logits.dtype.type(1.0 / N)
    return e


# ---------------------------------------------------------------- dropout (Philox 4x32-10)

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def philox4x32_10(counter, key):
    """Random123's Philox4x32-10 on arrays of 32-bit words held in uint64.

    counter: four arrays (c0, c1, c2, c3) broadcastable together; key: (k0, k1).
    Returns the four output words as uint64 arrays of values < 2**32.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in counter)
    k0, k1 = (np.uint64(int(k) & 0xFFFFFFFF) for k in key)
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    shift = np.uint64(32)
    for round_ in range(10):
        if round_:
            k0 = np.uint64((int(k0) + PHILOX_W0) & 0xFFFFFFFF)
            k1 = np.uint64((int(k1) + PHILOX_W1) & 0xFFFFFFFF)
        p0 = c0 * m0  # 32 x 32 -> 64-bit product: exact in uint64
        p1 = c2 * m1
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & _MASK32, (p0 >> shift) ^ c3 ^ k1, p0 & _MASK32
    return c0, c1, c2, c3


def _step_value(step):
    """The step count from an integer array of shape (1,) or a Python int."""
    if isinstance(step, np.ndarray):
        if step.shape != (1,) or not np.issubdtype(step.dtype, np.integer):
            raise ValueError(f"step must be an integer array of shape (1,), got {step.dtype} {step.shape}")
        step = step[0]
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int32 array (1,) or an int, got {type(step).__name__}")
    return int(step)


def dropout_keep(n, rate, seed, step, start=0):
    """Keep mask (n,) bool of elements start .. start + n - 1: element i is kept iff Philox word
    i of (seed, step) >= rate * 2**32.

    Counter (lo32(i//4), hi32(i//4), step, 0), key (lo32(seed), hi32(seed)), word i % 4.
    """
    n, start = int(n), int(start)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be non-negative, got {n} and {start}")
    threshold = checks.dropout_threshold(rate)
    key = checks.philox_key(seed)
    step = _step_value(step) & 0xFFFFFFFF  # an int32 step enters the counter as its 32-bit pattern
    block = np.arange(start // 4, (start + n + 3) // 4, dtype=np.uint64)
    words = philox4x32_10((block & _MASK32, block >> np.uint64(32), np.uint64(step), np.uint64(0)), key)
    words = np.stack(words, axis=1).reshape(-1)[start % 4:start % 4 + n]
    return words >= np.uint64(threshold)


def _dropout_apply(a, name, rate, seed, step, offset):
    """offset: the global index of a's first sample; element i of sample n is element
    (offset + n) * per_sample + i of the mask."""
    a = _float_array(a, name)
    start, _, scale, _ = checks.dropout_args(a.shape, rate, seed, offset)
    keep = dropout_keep(a.size, rate, seed, step, start).reshape(a.shape)
    # keep ? a * (1 / (1 - rate)) : 0, in a's dtype
    return a * np.where(keep, a.dtype.type(scale), a.dtype.type(0))


@_follows_input_dtype("x")
def dropout_forward(x, rate, seed, step, offset=0):
    return _dropout_apply(x, "x", rate, seed, step, offset)


@_follows_input_dtype("dy")
def dropout_backward(dy, rate, seed, step, offset=0):
    return _dropout_apply(dy, "dy", rate, seed, step, offset)


# ---------------------------------------------------------------- crop (random crop and mirror)

CROP_STREAM = 0x43524F50  # 'CROP': the fourth counter word, so crops never share words with dropout


def crop_windows(n, in_hw, out_hw, random, flip, seed, step, offset=0):
    """(top, left, mirrored) of each of n images' crop window: int64, int64, bool arrays (n,).

    random=False: the centre window, never mirrored.  random=True: Philox 4x32-10 of counter
    (offset + image, 0, step, CROP_STREAM) and key (lo32(seed), hi32(seed)) gives words w0..w3;
    top = w0 % (H - height + 1), left = w1 % (W - width + 1), mirrored = flip and w2 >= 2**31.
    """
    key, offset = checks.crop_args(in_hw, out_hw, seed, offset)
    step = _step_value(step) & 0xFFFFFFFF
    (H, W), (height, width) = in_hw, out_hw
    if not random:
        return (np.full(n, (H - height) // 2, np.int64), np.full(n, (W - width) // 2, np.int64),
                np.zeros(n, bool))
    w0, w1, w2, _ = philox4x32_10((np.arange(offset, offset + n, dtype=np.uint64), 0, step, CROP_STREAM), key)
    top = (w0 % np.uint64(H - height + 1)).astype(np.int64)
    left = (w1 % np.uint64(W - width + 1)).astype(np.int64)
    return top, left, (w2 >= np.uint64(2 ** 31)) & bool(flip)


PCA_STREAM = 0x5043414E  # 'PCAN': the fourth counter word of the colour noise

# The principal components of ImageNet's RGB pixel values (in [0, 1]) that the AlexNet
# paper's colour noise uses: eigenvalues and eigenvectors (columns), as fb.resnet.torch's
# "Lighting" transform has them.  fastcnn.datasets.rgb_pca computes them for other images.
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                         (-0.5808, -0.0045, -0.8140),
                         (-0.5836, -0.6948, 0.4203))


def _standard_normals(words):
    """Three N(0, 1) draws from four uniform 32-bit words (Box-Muller, float64):
    u = (w + 1) / 2^32 in (0, 1] for the radius, v = w / 2^32 for the angle."""
    w0, w1, w2, w3 = (np.asarray(w, np.float64) for w in words)
    scale = 2.0 ** -32
    r01 = np.sqrt(-2.0 * np.log((w0 + 1.0) * scale))
    r2 = np.sqrt(-2.0 * np.log((w2 + 1.0) * scale))
    t1, t3 = 2.0 * np.pi * w1 * scale, 2.0 * np.pi * w3 * scale
    return r01 * np.cos(t1), r01 * np.sin(t1), r2 * np.cos(t3)


def pca_noise_offsets(n, basis, seed, step, offset=0):
    """(n, 3) float32: image i's RGB offset basis @ alpha_i, alpha_i three N(0, 1) draws from
    Philox 4x32-10 of counter (offset + i, 0, step, PCA_STREAM) and key (lo32(seed), hi32(seed))
    (_standard_normals), the sums in float64 in the order c0 + c1 + c2.  basis (3, 3):
    basis[c, i] = stddev * eigenvalue_i * eigenvector_i[c] (the AlexNet paper, section 4.1)."""
    basis, key = checks.pca_basis(basis), checks.philox_key(seed)
    step, offset = _step_value(step) & 0xFFFFFFFF, checks.check_offset(offset)
    words = philox4x32_10((np.arange(offset, offset + n, dtype=np.uint64), 0, step, PCA_STREAM), key)
    a0, a1, a2 = _standard_normals(words)
    offsets = [(basis[c, 0] * a0 + basis[c, 1] * a1) + basis[c, 2] * a2 for c in range(3)]
    return np.stack(offsets, axis=1).astype(np.float32)


@_follows_input_dtype("x")
def pca_noise_forward(x, basis, seed, step, offset=0):
    """x (N, H, W, 3) + each image's RGB offset (pca_noise_offsets); the backward is dy itself."""
    x = _float_array(x, "x", 4)
    checks.pca_args(x.shape, basis, seed, offset)
    offsets = pca_noise_offsets(x.shape[0], basis, seed, step, offset).astype(x.dtype)
    return x + offsets[:, None, None, :]


@_follows_input_dtype("x")
def crop_forward(x, height, width, random, flip, seed, step, offset=0):
    x = _float_array(x, "x", 4)
    N, H, W, _ = x.shape
    top, left, mirrored = crop_windows(N, (H, W), (height, width), random, flip, seed, step, offset)
    y = np.empty((N, height, width, x.shape[3]), x.dtype)
    for n in range(N):
        window = x[n, top[n]:top[n] + height, left[n]:left[n] + width]
        y[n] = window[:, ::-1] if mirrored[n] else window
    return y


@_follows_input_dtype("dy")
def crop_backward(dy, x_shape, random, flip, seed, step, offset=0):
    dy = _float_array(dy, "dy", 4)
    N, H, W, C = checks.crop_backward_shape(dy.shape, x_shape)
    height, width = dy.shape[1:3]
    top, left, mirrored = crop_windows(N, (H, W), (height, width), random, flip, seed, step, offset)
    dx = np.zeros((N, H, W, C), dy.dtype)
    for n in range(N):
        dx[n, top[n]:top[n] + height, left[n]:left[n] + width] = dy[n, :, ::-1] if mirrored[n] else dy[n]
    return dx


# ---------------------------------------------------------------- local response normalisation

def _channel_window_sum(a, size):
    """sum of a[..., j] for j in [c - size//2, c + size//2] clipped to the channels."""
    out = a.copy()
    for d in range(1, size // 2 + 1):
        out[..., d:] += a[..., :-d]
        out[..., :-d] += a[..., d:]
    return out


@_follows_input_dtype("x")
def lrn_forward(x, size, alpha, beta, k):
    """(y, scale): scale = k + alpha * window sum of x^2, y = x * scale**-beta (AlexNet paper)."""
    x = _float_array(x, "x", 4)
    size, alpha, beta, k = checks.lrn_args(size, alpha, beta, k)
    scale = _channel_window_sum(x * x, size)
    scale *= x.dtype.type(alpha)
    scale += x.dtype.type(k)
    y = x * scale ** x.dtype.type(-beta)
    return y, scale


@_follows_input_dtype("dy", "x", "y", "scale")
def lrn_backward(dy, x, y, scale, size, alpha, beta, k):
    """dx = dy * scale**-beta - 2*alpha*beta * x * window sum of (dy * y / scale)."""
    dy = _float_array(dy, "dy", 4)
    x = _float_array(x, "x", 4)
    y = _float_array(y, "y", 4)
    scale = _float_array(scale, "scale", 4)
    _same_dtype(dy.dtype, x=x, y=y, scale=scale)
    if not dy.shape == x.shape == y.shape == scale.shape:
        raise ValueError(f"dy {dy.shape}, x {x.shape}, y {y.shape}, scale {scale.shape} must match")
    size, alpha, beta, k = checks.lrn_args(size, alpha, beta, k)
    t = _channel_window_sum(dy * y / scale, size)
    t *= x
    t *= dy.dtype.type(-2.0 * alpha * beta)
    t += dy * scale ** dy.dtype.type(-beta)
    return t


# ---------------------------------------------------------------- optimizers and small ops

def _flat_params(**arrays):
    first = None
    for arg, a in arrays.items():
        _inplace_array(a, arg)
        if a.ndim != 1 or a.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{arg} must be a flat 1-D float32/float64 array, got {a.dtype} {a.shape}")
        if first is None:
            first = (arg, a)
        elif a.shape != first[1].shape or a.dtype != first[1].dtype:
            raise ValueError(f"{arg} {a.dtype} {a.shape} does not match {first[0]} "
                             f"{first[1].dtype} {first[1].shape}")


def _check_bf16_copy(p, p_bf16):
    """p_bf16, the bfloat16 copy of the float32 master weights p that an update also writes:
    a writeable contiguous bfloat16 array of p's shape (or None)."""
    if p_bf16 is None:
        return
    _inplace_array(p_bf16, "p_bf16", bfloat16)
    if p.dtype != np.float32 or p_bf16.shape != p.shape:
        raise ValueError(f"p_bf16 {p_bf16.dtype} {p_bf16.shape} must be the bfloat16 copy of the float32 "
                         f"master weights p, {p.dtype} {p.shape}")


def _write_bf16_copy(p, p_bf16):
    """The updated master weights rounded once, to nearest even, into their bfloat16 copy."""
    if p_bf16 is not None:
        p_bf16[...] = dtypes.to_bfloat16(p)


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay=0.0, *, p_bf16=None):
    """Keras SGD, in place: v = momentum*v - lr*g; p += v (nesterov: p += momentum*v - lr*g).

    weight_decay != 0: g + weight_decay * p takes g's place (the AlexNet paper's rule, as
    PyTorch's SGD: the decay enters the velocity); the gradient buffer is not changed.
    p_bf16: the updated p rounded to bfloat16 is written there too."""
    _flat_params(p=p, g=g)
    _check_bf16_copy(p, p_bf16)
    if weight_decay:
        g = g + p.dtype.type(weight_decay) * p
    if v is None:
        if momentum != 0:
            raise ValueError(f"v (the velocity buffer) is required when momentum is {momentum}")
        p -= p.dtype.type(lr) * g
        _write_bf16_copy(p, p_bf16)
        return None
    _flat_params(p=p, g=g, v=v)
    lr, momentum = p.dtype.type(lr), p.dtype.type(momentum)
    v *= momentum
    v -= lr * g
    if nesterov:
        p += momentum * v - lr * g
    else:
        p += v
    _write_bf16_copy(p, p_bf16)
    return None


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay=0.0, *, p_bf16=None):
    """Keras Adam, in place; t = step[0] + 1 (step itself is left unchanged).

    weight_decay != 0: AdamW (Keras's decoupled decay), p -= p * weight_decay * lr (the
    learning rate itself, not lr_t) before the Adam step.  p_bf16: p rounded to bfloat16 too."""
    _flat_params(p=p, g=g, m=m, v=v)
    _check_bf16_copy(p, p_bf16)
    t = _step_value(step) + 1
    lr_t = lr * np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    f = p.dtype.type
    if weight_decay:
        p -= (p * f(weight_decay)) * f(lr)
    m *= f(beta1)
    m += f(1.0 - beta1) * g
    v *= f(beta2)
    v += f(1.0 - beta2) * (g * g)
    denom = np.sqrt(v)
    denom += f(eps)
    p -= f(lr_t) * m / denom
    _write_bf16_copy(p, p_bf16)
    return None


def rmsprop_update(p, g, v, mom, avg, lr, rho, momentum, eps, *, p_bf16=None):
    """Keras RMSprop, in place: v = rho*v + (1-rho)*g*g; d = v + eps (centered, avg not None:
    avg = rho*avg + (1-rho)*g, d = v - avg*avg + eps); inc = lr*g / sqrt(d);
    momentum != 0 (mom not None): mom = momentum*mom + inc, p -= mom; else p -= inc.
    p_bf16: p rounded to bfloat16 too."""
    _flat_params(**{k: a for k, a in (("p", p), ("g", g), ("v", v), ("mom", mom), ("avg", avg)) if a is not None})
    _check_bf16_copy(p, p_bf16)
    if (mom is None) != (momentum == 0):
        raise ValueError(f"mom (the momentum buffer) is required exactly when momentum != 0 (got {momentum})")
    f = p.dtype.type
    v *= f(rho)
    v += f(1.0 - rho) * (g * g)
    if avg is not None:
        avg *= f(rho)
        avg += f(1.0 - rho) * g
        d = v - avg * avg + f(eps)
    else:
        d = v + f(eps)
    inc = f(lr) * g / np.sqrt(d)
    if mom is not None:
        mom *= f(momentum)
        mom += inc
        p -= mom
    else:
        p -= inc
    _write_bf16_copy(p, p_bf16)
    return None


def increment(step):
    """step[0] += 1, in place."""
    _inplace_array(step, "step")
    if step.shape != (1,) or not np.issubdtype(step.dtype, np.integer):
        raise ValueError(f"step must be an integer array of shape (1,), got {step.dtype} {step.shape}")
    step[0] += 1
    return None


@_follows_input_dtype("a", "b")
def add(a, b):
    a = _float_array(a, "a")
    b = _float_array(b, "b")
    _same_dtype(a.dtype, b=b)
    if a.shape != b.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} must have the same shape")
    return a + b


def cast(x, dtype):
    """x converted to ``dtype`` ('float32' or 'bfloat16'; a new array): float32 -> bfloat16
    rounds to nearest even, bfloat16 -> float32 is exact, a cast to x's own dtype copies."""
    x = _float_array(x, "x")
    if x.dtype == np.float64:
        raise TypeError("cast takes float32 or bfloat16 x, got float64")
    return x.astype(cast_dtype(dtype))  # astype copies; float32 -> bfloat16 is ml_dtypes' RNE


def cast_dtype(dtype):
    """The element type a cast to ``dtype`` gives: 'float32' or 'bfloat16' (shared by every backend)."""
    if not isinstance(dtype, str) or dtype not in dtypes.NAMES:
        raise ValueError(f"cast: dtype must be one of {sorted(dtypes.NAMES)}, got {dtype!r}")
    return dtypes.NAMES[dtype]


def copy(dst, src):
    """dst[...] = src, in place (same shape and dtype)."""
    _inplace_array(dst, "dst")
    if not isinstance(src, np.ndarray):
        raise TypeError(f"src must be a NumPy array, got {type(src).__name__}")
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise ValueError(f"src {src.dtype} {src.shape} must match dst {dst.dtype} {dst.shape}")
    np.copyto(dst, src)
    return None


def gather_rows(dst, src, rows):
    """dst[i] = src[rows[i]], in place (a batch picked from the data set)."""
    _inplace_array(dst, "dst")
    for name, a in (("src", src), ("rows", rows)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    checks.gather_shapes(dst, src, rows)
    if rows.size and (rows.min() < 0 or rows.max() >= src.shape[0]):
        raise IndexError(f"rows must lie in [0, {src.shape[0]}), got [{rows.min()}, {rows.max()}]")
    np.take(src, rows, axis=0, out=dst)
    return None


def copy_channels(dst, src, dst_start, src_start, width):
    """dst[..., dst_start:dst_start+width] = src[..., src_start:src_start+width], in place."""
    _inplace_array(dst, "dst")
    src = _float_array(src, "src")
    _same_dtype(dst.dtype, src=src)
    checks.channel_range(dst.shape, src.shape, dst_start, src_start, width)
    dst[..., dst_start:dst_start + width] = src[..., src_start:src_start + width]
    return None
