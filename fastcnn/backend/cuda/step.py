"""The rest of a training step as CUDA C kernels: one ``cuda`` variant per primitive.

Kernel files and primitives (semantics: ``fastcnn/backend/__init__.py``; each
result matches ``fastcnn.backend.reference``):

  kernels/elementwise.cu   relu_forward, relu_backward, leaky_relu_forward, leaky_relu_backward,
                           add, cast, increment, bias_grad
                           (bias_grad: deterministic two-pass column sum, no atomics),
                           copy_channels, gather_rows; copy (and a cast to the same
                           dtype) is a device-to-device cudaMemcpyAsync, no kernel
  kernels/softmax_xent.cu  softmax, softmax_cross_entropy (a warp per row; the loss and
                           accuracy totals fused in; deterministic when N*classes <= 2^18)
  kernels/dropout.cu       dropout_forward, dropout_backward (Philox4x32-10, mask regenerated)
  kernels/augment.cu       crop_forward, crop_backward (centre or random windows, mirrored at
                           random), pca_noise_forward (AlexNet's colour noise): Philox4x32-10
                           per image and step, drawn on the device
  kernels/lrn.cu           lrn_forward, lrn_backward (AlexNet LRN across channels, NHWC)
  kernels/optimizers.cu    sgd_update, adam_update (AdamW too), rmsprop_update (one launch
                           over a flat buffer)

Element types: the kernels are templates over float and __nv_bfloat16 (kernels/bf16.cuh),
one source each, float32 math inside and one rounding (to nearest even) at each bfloat16
store; the wrappers pick the instance by the arrays' dtype (``CTYPES``; the instances each
file is compiled with are listed in ``NAME_EXPRESSIONS``), and the variants that have both
register ``dtypes=("float32", "bfloat16")``.  bias_grad and softmax give float32 for
bfloat16 input; the optimizers write the bfloat16 copy of the weights (``p_bf16=``).

Every primitive that returns an array takes an optional keyword ``out=`` (for
``lrn_forward`` a pair ``(y, scale)``): a C-contiguous CuPy array of the result's
shape and dtype that the caller owns, written completely (tests poison it with
NaN; a captured graph keeps it static).  Elementwise ops (relu, add, dropout) may
write in place (``out`` is an input); the others refuse an ``out`` that overlaps
an input.

Graph capture: nothing here synchronises with the host or reads device values on
the host; per-step scalars (dropout's step, Adam's t) are read by the kernels from
device memory.  ``bias_grad`` on many rows allocates a small workspace with
``cupy.empty`` (the current allocator) and ``softmax_cross_entropy`` none.

Importing this module needs no GPU: CuPy is touched inside the functions only.
"""
from __future__ import annotations

import numpy as np

from ... import dtypes
from .. import checks, registry
from .. import reference as _ref
from ..checks import cdiv as _cdiv, check_int32 as _check_int32, real as _real
from . import _launch

THREADS = 256          # elementwise / optimizer / dropout / LRN blocks
MAX_BLOCKS = 4096      # grid-stride kernels loop over the rest
XENT_THREADS = 512     # kernels/softmax_xent.cu FC_SX_WARPS * 32: the xent kernels need exactly this
XENT_ONE_BLOCK = 1 << 18  # N * classes up to this: one block, so the loss sum is deterministic
SUM_COLS, SUM_ROWS = 32, 8  # block of elementwise.cu's row kernels (column_sum, copy_channels, gather_rows)
SUM_CHUNK_ROWS = 256   # rows per chunk of the first bias_grad pass


def _grid(n: int, threads: int = THREADS) -> tuple:
    return (min(_launch.blocks(n, threads), MAX_BLOCKS),)


# The C++ element type of each dtype the templated kernels take.
CTYPES = {"float32": "float", "bfloat16": "__nv_bfloat16"}
_TYPES = tuple(CTYPES.values())
_EW = "elementwise.cu"
# The template instances each kernel file is compiled with (keep in step with the
# FASTCNN_INSTANTIATE block of each file).
NAME_EXPRESSIONS = {
    _EW: tuple(f"{k}<{t}>" for k in ("relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
                                      "add_arrays", "copy_channels", "column_sum")
               for t in _TYPES)
    + ("cast_elements<float, __nv_bfloat16>", "cast_elements<__nv_bfloat16, float>",
       "gather_rows<unsigned>", "gather_rows<unsigned short>"),
    "softmax_xent.cu": tuple(f"{k}<{t}>" for k in ("softmax_rows", "xent_index", "xent_onehot") for t in _TYPES),
    "dropout.cu": tuple(f"dropout_apply<{t}>" for t in _TYPES),
    "augment.cu": tuple(f"{k}<{t}>" for k in ("crop_forward", "crop_backward", "pca_noise_forward") for t in _TYPES),
    "lrn.cu": tuple(f"{k}<{t}>" for k in ("lrn_forward", "lrn_backward") for t in _TYPES),
}


def _kernel(filename: str, name: str):
    return _launch.function(filename, name, NAME_EXPRESSIONS.get(filename, ()))


def _ctype(a) -> str:
    """The C++ element type of a float32 or bfloat16 array."""
    return CTYPES[dtypes.name(a.dtype)]


def _check_float(name, a, **kw):
    """_launch.check for an array of either element type, float32 or bfloat16."""
    dtype = getattr(a, "dtype", None)
    return _launch.check(name, a, dtype=dtype if dtype in (dtypes.float32, dtypes.bfloat16) else np.float32, **kw)


# ---------------------------------------------------------------- argument checks

def _span(a):
    return a.data.ptr, a.data.ptr + a.nbytes


def _no_overlap(out_name, out, **inputs):
    """Refuse an output buffer that shares memory with an input (the kernel reads neighbours)."""
    lo, hi = _span(out)
    for arg, a in inputs.items():
        if a is None:
            continue
        alo, ahi = _span(a)
        if lo < ahi and alo < hi:
            raise ValueError(f"{out_name} overlaps {arg}: this kernel cannot work in place; "
                             "pass a separate output buffer")


def _same_shape(ref_name, ref, **arrays):
    for arg, a in arrays.items():
        if a.shape != ref.shape:
            raise ValueError(f"{arg} {a.shape} must have the same shape as {ref_name} {ref.shape}")


def _step(step):
    return _launch.check("step", step, dtype=np.int32, shape=(1,))


# ---------------------------------------------------------------- elementwise.cu

def relu_forward(x, *, out=None):
    """max(x, 0) (NaN propagates)."""
    _check_float("x", x)
    out = _launch.out_array("out", out, x.shape, x.dtype)
    _kernel(_EW, f"relu_forward<{_ctype(x)}>")(_grid(x.size), (THREADS,), (x, out, np.int64(x.size)))
    return out


def relu_backward(dy, y, *, out=None):
    """y > 0 ? dy : 0."""
    _check_float("dy", dy)
    _launch.check("y", y, dtype=dy.dtype)
    _same_shape("dy", dy, y=y)
    out = _launch.out_array("out", out, dy.shape, dy.dtype)
    _kernel(_EW, f"relu_backward<{_ctype(dy)}>")(_grid(dy.size), (THREADS,), (dy, y, out, np.int64(dy.size)))
    return out


def leaky_relu_forward(x, negative_slope, *, out=None):
    """x >= 0 ? x : negative_slope * x (NaN propagates)."""
    _check_float("x", x)
    slope = np.float32(checks.leaky_slope(negative_slope))
    out = _launch.out_array("out", out, x.shape, x.dtype)
    _kernel(_EW, f"leaky_relu_forward<{_ctype(x)}>")(_grid(x.size), (THREADS,), (x, out, slope, np.int64(x.size)))
    return out


def leaky_relu_backward(dy, x, negative_slope, *, out=None):
    """dy * (x >= 0 ? 1 : negative_slope)."""
    _check_float("dy", dy)
    _launch.check("x", x, dtype=dy.dtype)
    _same_shape("dy", dy, x=x)
    slope = np.float32(checks.leaky_slope(negative_slope))
    out = _launch.out_array("out", out, dy.shape, dy.dtype)
    _kernel(_EW, f"leaky_relu_backward<{_ctype(dy)}>")(_grid(dy.size), (THREADS,), (dy, x, out, slope, np.int64(dy.size)))
    return out


def add(a, b, *, out=None):
    """a + b (same shape)."""
    _check_float("a", a)
    _launch.check("b", b, dtype=a.dtype)
    _same_shape("a", a, b=b)
    out = _launch.out_array("out", out, a.shape, a.dtype)
    _kernel(_EW, f"add_arrays<{_ctype(a)}>")(_grid(a.size), (THREADS,), (a, b, out, np.int64(a.size)))
    return out


def cast(x, dtype, *, out=None):
    """x converted to ``dtype`` ('float32' or 'bfloat16'): rounded to nearest even, or widened
    exactly; to x's own dtype, a copy."""
    _check_float("x", x)
    target = _ref.cast_dtype(dtype)
    out = _launch.out_array("out", out, x.shape, target)
    _no_overlap("out", out, x=x)
    if target == x.dtype:
        out.data.copy_from_device_async(x.data, x.nbytes)  # on the current stream
        return out
    _kernel(_EW, f"cast_elements<{_ctype(x)}, {_ctype(out)}>")(_grid(x.size), (THREADS,), (x, out, np.int64(x.size)))
    return out


def copy(dst, src):
    """dst[...] = src in place (same shape and dtype, any dtype): one async D2D memcpy."""
    _launch.check("dst", dst, dtype=getattr(dst, "dtype", np.float32))
    _launch.check("src", src, dtype=dst.dtype, shape=dst.shape)
    if dst.data.ptr == src.data.ptr:
        return None
    _no_overlap("dst", dst, src=src)
    dst.data.copy_from_device_async(src.data, dst.nbytes)  # on the current stream
    return None


def copy_channels(dst, src, dst_start, src_start, width):
    """dst[..., dst_start:dst_start+width] = src[..., src_start:src_start+width] in place (float32
    or bfloat16)."""
    _check_float("dst", dst)
    _launch.check("src", src, dtype=dst.dtype)
    checks.channel_range(dst.shape, src.shape, dst_start, src_start, width)
    _no_overlap("dst", dst, src=src)
    rows = dst.size // dst.shape[-1]
    grid = (1, min(_cdiv(rows, SUM_ROWS), 65535))  # grid.y is at most 65535; the kernel loops
    _kernel(_EW, f"copy_channels<{_ctype(dst)}>")(grid, (SUM_COLS, SUM_ROWS),
                                  (src, dst, np.int64(rows), np.int32(width), np.int32(src.shape[-1]),
                                   np.int32(src_start), np.int32(dst.shape[-1]), np.int32(dst_start)))
    return None


def gather_rows(dst, src, rows):
    """dst[i] = src[rows[i]] in place (float32, bfloat16 or int32 rows; rows int32 on the GPU)."""
    _launch.check("dst", dst, dtype=getattr(dst, "dtype", np.float32))
    _launch.check("src", src, dtype=dst.dtype)
    _launch.check("rows", rows, dtype=np.int32, ndim=1)
    checks.gather_shapes(dst, src, rows)
    _no_overlap("dst", dst, src=src, rows=rows)
    n = dst.shape[0]
    grid = (1, min(_cdiv(n, SUM_ROWS), 65535))  # grid.y is at most 65535; the kernel loops
    word = "unsigned short" if dst.dtype.itemsize == 2 else "unsigned"
    _kernel(_EW, f"gather_rows<{word}>")(grid, (SUM_COLS, SUM_ROWS),
                                (src, dst, rows, np.int64(n), np.int64(dst.size // n), np.int64(src.shape[0])))
    return None


def increment(step):
    """step[0] += 1 on the device (int32 (1,))."""
    _step(step)
    _kernel(_EW, "increment")((1,), (1,), (step,))
    return None


def bias_grad(dy, *, out=None):
    """Sum of dy over every axis but the last -> (C,) float32 (float32 accumulation, for bfloat16
    dy too); deterministic (fixed chunks, no atomics)."""
    import cupy as cp
    _check_float("dy", dy)
    C = dy.shape[-1]
    rows = dy.size // C
    _check_int32(channels=C)
    out = _launch.out_array("out", out, (C,))
    _no_overlap("out", out, dy=dy)
    rows_per_chunk = max(SUM_CHUNK_ROWS, _cdiv(rows, 65535))  # grid.y <= 65535
    chunks = _cdiv(rows, rows_per_chunk)
    kernel = _kernel(_EW, f"column_sum<{_ctype(dy)}>")
    block = (SUM_COLS, SUM_ROWS)
    gx = _cdiv(C, SUM_COLS)
    if chunks == 1:
        kernel((gx, 1), block, (dy, out, np.int64(rows), np.int32(C), np.int64(rows)))
        return out
    partial = cp.empty((chunks, C), dtype=np.float32)
    kernel((gx, chunks), block, (dy, partial, np.int64(rows), np.int32(C), np.int64(rows_per_chunk)))
    _kernel(_EW, "column_sum<float>")((gx, 1), block, (partial, out, np.int64(chunks), np.int32(C), np.int64(chunks)))
    return out


# ---------------------------------------------------------------- softmax_xent.cu

_SX = "softmax_xent.cu"


def softmax(x, *, out=None):
    """Row softmax of a 2-D float32 or bfloat16 array (max-subtracted): float32 either way."""
    _check_float("x", x, ndim=2)
    rows, K = x.shape
    _check_int32(classes=K)
    out = _launch.out_array("out", out, x.shape)
    _no_overlap("out", out, x=x)
    warps_per_block = THREADS // 32
    _kernel(_SX, f"softmax_rows<{_ctype(x)}>")((min(_cdiv(rows, warps_per_block), MAX_BLOCKS),), (THREADS,),
                                 (x, out, np.int64(rows), np.int32(K)))
    return out


def _check_labels(labels, N, K):
    import cupy as cp
    if not isinstance(labels, cp.ndarray):
        raise TypeError(f"labels must be a CuPy array on the GPU, got {type(labels).__name__}")
    if labels.ndim == 1:
        if labels.dtype != np.int32:
            if np.issubdtype(labels.dtype, np.integer):
                raise TypeError(f"labels must be int32 class indices, got {labels.dtype}; convert them "
                                "once (e.g. per epoch) with labels.astype(cupy.int32), not per step")
            raise TypeError(f"1-D labels are class indices and must be int32, got {labels.dtype}")
        return _launch.check("labels", labels, dtype=np.int32, shape=(N,))
    if labels.ndim == 2:
        if labels.dtype != np.float32:
            raise TypeError(f"one-hot labels (N, classes) must be float32, got {labels.dtype}")
        return _launch.check("labels", labels, shape=(N, K))
    raise ValueError(f"labels must be int32 class indices (N,) or float32 one-hot (N, classes), "
                     f"got shape {labels.shape}")


def softmax_cross_entropy(logits, labels, totals, *, out=None):
    """dlogits = (softmax(logits) - onehot) / N in the logits' dtype (float32 math); totals
    (float64 (2,)) += (loss sum, correct count).

    labels: int32 (N,) or float32 one-hot (N, classes).  int32 labels are not range-checked
    on the host (that needs a sync): a label outside [0, classes) makes the loss NaN.
    The loss sum is deterministic when N * classes <= 2**18 (one block); above that the
    blocks' atomicAdds may land in any order (last-bit differences in totals[0] only).
    """
    _check_float("logits", logits, ndim=2)
    N, K = logits.shape
    _check_int32(classes=K)
    _check_labels(labels, N, K)
    _launch.check("totals", totals, dtype=np.float64, shape=(2,))
    out = _launch.out_array("out", out, (N, K), logits.dtype)
    _no_overlap("out", out, logits=logits, labels=labels, totals=totals)
    grid = 1 if N * K <= XENT_ONE_BLOCK else min(_cdiv(N, XENT_THREADS // 32), MAX_BLOCKS)
    tail = (out, totals, np.int64(N), np.int32(K), np.float32(1.0 / N))
    kind = "xent_index" if labels.ndim == 1 else "xent_onehot"
    _kernel(_SX, f"{kind}<{_ctype(logits)}>")((grid,), (XENT_THREADS,), (logits, labels) + tail)
    return out


# ---------------------------------------------------------------- dropout.cu

def _dropout(name, a, rate, seed, step, out, offset):
    _check_float(name, a)
    start, threshold, scale, (key0, key1) = checks.dropout_args(a.shape, rate, seed, offset)
    _step(step)
    out = _launch.out_array("out", out, a.shape, a.dtype)
    n = a.size
    _kernel("dropout.cu", f"dropout_apply<{_ctype(a)}>")(
        _grid(_cdiv(start % 4 + n, 4)), (THREADS,),
        (a, out, np.int64(n), np.uint32(key0), np.uint32(key1), step, np.uint32(threshold), np.float32(scale),
         np.int64(start)))
    return out


def dropout_forward(x, rate, seed, step, offset=0, *, out=None):
    """x * keep / (1 - rate), keep the mask of reference.dropout_forward (offset: the global
    index of x's first sample)."""
    return _dropout("x", x, rate, seed, step, out, offset)


def dropout_backward(dy, rate, seed, step, offset=0, *, out=None):
    """dy * keep / (1 - rate), the forward's mask regenerated from (seed, step, offset)."""
    return _dropout("dy", dy, rate, seed, step, out, offset)


# ---------------------------------------------------------------- augment.cu

AUG_THREADS = 128      # kernels/augment.cu AUG_THREADS
_MAX_GRID_Y = 65535


def _crop(kernel, name, a, args, random, flip, step, out):
    """args: checks.crop_forward_args / crop_backward_args; one block per row of out (grid (rows, N))."""
    (N, H, W, C), (height, width), out_shape, (key0, key1), first = args
    _step(step)
    if N > _MAX_GRID_Y:
        raise ValueError(f"{name}: batch {N} exceeds the {_MAX_GRID_Y} images one launch covers")
    out = _launch.out_array("out", out, out_shape, a.dtype)
    _no_overlap("out", out, **{name: a})
    _kernel("augment.cu", f"{kernel}<{_ctype(a)}>")(
        (out_shape[1], N), (AUG_THREADS,),
        (a, out, np.int32(H), np.int32(W), np.int32(C), np.int32(height), np.int32(width),
         np.int32(bool(random)), np.int32(bool(flip)), np.uint32(key0), np.uint32(key1), step, np.uint32(first)))
    return out


def crop_forward(x, height, width, random, flip, seed, step, offset=0, *, out=None):
    """Each image's window (reference.crop_windows), mirrored where drawn so."""
    _check_float("x", x, ndim=4)
    return _crop("crop_forward", "x", x, checks.crop_forward_args(x.shape, height, width, seed, offset),
                 random, flip, step, out)


def crop_backward(dy, x_shape, random, flip, seed, step, offset=0, *, out=None):
    """dy put back into each image's window of a zero (N, H, W, C) gradient."""
    _check_float("dy", dy, ndim=4)
    return _crop("crop_backward", "dy", dy, checks.crop_backward_args(dy.shape, x_shape, seed, offset),
                 random, flip, step, out)


def pca_noise_forward(x, basis, seed, step, offset=0, *, out=None):
    """x + each image's RGB offset along the principal components (reference.pca_noise_offsets);
    ``out`` may be x."""
    _check_float("x", x, ndim=4)
    N, H, W, C = x.shape
    basis, (key0, key1), first = checks.pca_args(x.shape, basis, seed, offset)
    _step(step)
    if N > _MAX_GRID_Y:
        raise ValueError(f"x: batch {N} exceeds the {_MAX_GRID_Y} images one launch covers")
    out = _launch.out_array("out", out, x.shape, x.dtype)
    _kernel("augment.cu", f"pca_noise_forward<{_ctype(x)}>")(
        (H, N), (AUG_THREADS,),
        (x, out, np.int32(H), np.int32(W), *(np.float64(b) for b in basis.reshape(-1)), np.uint32(key0), np.uint32(key1), step,
         np.uint32(first)))
    return out


# ---------------------------------------------------------------- lrn.cu

def lrn_forward(x, size, alpha, beta, k, *, out=None):
    """(y, scale): scale = k + alpha * sum of x^2 over ``size`` channels, y = x * scale**-beta
    (both in x's dtype)."""
    _check_float("x", x, ndim=4)
    size, alpha, beta, k = checks.lrn_args(size, alpha, beta, k)
    C = x.shape[-1]
    _check_int32(channels=C)
    y_out, s_out = checks.out_pair(out, "(y, scale)")
    y = _launch.out_array("out[0] (y)", y_out, x.shape, x.dtype)
    scale = _launch.out_array("out[1] (scale)", s_out, x.shape, x.dtype)
    _no_overlap("out[0] (y)", y, x=x, scale=scale)
    _no_overlap("out[1] (scale)", scale, x=x)
    _kernel("lrn.cu", f"lrn_forward<{_ctype(x)}>")(
        _grid(x.size), (THREADS,),
        (x, y, scale, np.int64(x.size), np.int32(C), np.int32(size // 2),
         np.float32(alpha), np.float32(k), np.float32(-beta)))
    return y, scale


def lrn_backward(dy, x, y, scale, size, alpha, beta, k, *, out=None):
    """dx = dy * scale**-beta - 2*alpha*beta * x * window sum of (dy * y / scale)."""
    _check_float("dy", dy, ndim=4)
    for arg, a in (("x", x), ("y", y), ("scale", scale)):
        _launch.check(arg, a, dtype=dy.dtype, ndim=4)
    _same_shape("dy", dy, x=x, y=y, scale=scale)
    size, alpha, beta, k = checks.lrn_args(size, alpha, beta, k)
    C = dy.shape[-1]
    _check_int32(channels=C)
    out = _launch.out_array("out", out, dy.shape, dy.dtype)
    _no_overlap("out", out, dy=dy, x=x, y=y, scale=scale)
    _kernel("lrn.cu", f"lrn_backward<{_ctype(dy)}>")(
        _grid(dy.size), (THREADS,),
        (dy, x, y, scale, out, np.int64(dy.size), np.int32(C), np.int32(size // 2),
         np.float32(-beta), np.float32(-2.0 * alpha * beta)))
    return out


# ---------------------------------------------------------------- optimizers.cu

_OPT = "optimizers.cu"


def _flat(**arrays):
    first_name, first = None, None
    for arg, a in arrays.items():
        _launch.check(arg, a, ndim=1)
        if first is None:
            first_name, first = arg, a
        elif a.shape != first.shape:
            raise ValueError(f"{arg} has {a.shape[0]} elements but {first_name} has {first.shape[0]}: "
                             "optimizer buffers are flat float32 arrays of equal length")
    return first.size


def _bf16_copy(p, p_bf16):
    """p_bf16 checked: None, or the bfloat16 copy of p (same length) that the update also writes."""
    if p_bf16 is not None:
        _launch.check("p_bf16", p_bf16, dtype=dtypes.bfloat16, shape=p.shape)
        _no_overlap("p_bf16", p_bf16, p=p)
    return p_bf16


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay=0.0, *, p_bf16=None):
    """Keras SGD in place: v = momentum*v - lr*g; p += v (nesterov: p += momentum*v - lr*g);
    g + weight_decay * p in place of g when weight_decay != 0; p_bf16: p rounded to bfloat16 too."""
    lr, momentum, wd = _real("lr", lr), _real("momentum", momentum), _real("weight_decay", weight_decay)
    if v is None:
        if momentum != 0:
            raise ValueError(f"v (the velocity buffer) is required when momentum is {momentum}")
        n = _flat(p=p, g=g)
        p_bf16 = _bf16_copy(p, p_bf16)
        _kernel(_OPT, "sgd_plain")(_grid(n), (THREADS,), (p, g, np.int64(n), np.float32(lr), np.float32(wd), p_bf16))
        return None
    n = _flat(p=p, g=g, v=v)
    p_bf16 = _bf16_copy(p, p_bf16)
    _kernel(_OPT, "sgd_momentum")(
        _grid(n), (THREADS,),
        (p, g, v, np.int64(n), np.float32(lr), np.float32(momentum), np.int32(bool(nesterov)),
         np.float32(wd), p_bf16))
    return None


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay=0.0, *, p_bf16=None):
    """Keras Adam in place, t = step[0] + 1 read on the device (step is not changed);
    weight_decay != 0: AdamW's p -= p * weight_decay * lr first; p_bf16: p rounded to bfloat16 too."""
    lr, beta1, beta2, eps, wd = (_real(a, b) for a, b in (("lr", lr), ("beta1", beta1), ("beta2", beta2),
                                                          ("eps", eps), ("weight_decay", weight_decay)))
    n = _flat(p=p, g=g, m=m, v=v)
    _step(step)
    p_bf16 = _bf16_copy(p, p_bf16)
    _kernel(_OPT, "adam")(
        _grid(n), (THREADS,),
        (p, g, m, v, step, np.int64(n), np.float64(lr), np.float64(beta1), np.float64(beta2),
         np.float32(beta1), np.float32(1.0 - beta1), np.float32(beta2), np.float32(1.0 - beta2),
         np.float32(eps), np.float32(wd), np.float32(lr), p_bf16))
    return None


def rmsprop_update(p, g, v, mom, avg, lr, rho, momentum, eps, *, p_bf16=None):
    """Keras RMSprop in place; mom None when momentum == 0, avg None unless centered; p_bf16: p
    rounded to bfloat16 too."""
    lr, rho, momentum, eps = (_real(a, b) for a, b in
                              (("lr", lr), ("rho", rho), ("momentum", momentum), ("eps", eps)))
    if (mom is None) != (momentum == 0):
        raise ValueError(f"mom (the momentum buffer) is required exactly when momentum != 0 (got {momentum})")
    buffers = {"p": p, "g": g, "v": v, "mom": mom, "avg": avg}
    n = _flat(**{k: a for k, a in buffers.items() if a is not None})
    p_bf16 = _bf16_copy(p, p_bf16)
    _kernel(_OPT, "rmsprop")(
        _grid(n), (THREADS,),
        (p, g, v, v if mom is None else mom, v if avg is None else avg, np.int64(n), np.float32(lr),
         np.float32(rho), np.float32(1.0 - rho), np.float32(momentum), np.float32(eps),
         np.int32(mom is not None), np.int32(avg is not None), p_bf16))
    return None


# ---------------------------------------------------------------- registration

_NOTES = {
    "relu_forward": "grid-stride max(x, 0)",
    "relu_backward": "grid-stride y > 0 ? dy : 0",
    "leaky_relu_forward": "grid-stride x >= 0 ? x : slope * x",
    "leaky_relu_backward": "grid-stride dy * (x >= 0 ? 1 : slope)",
    "add": "grid-stride a + b",
    "cast": "grid-stride conversion float32 <-> bfloat16 (to the same dtype: a device-to-device copy)",
    "copy": "device-to-device cudaMemcpyAsync on the current stream",
    "copy_channels": "block (32, 8): lanes walk a row's channels, warps walk rows (group convolution)",
    "gather_rows": "block (32, 8): lanes walk a row's words, warps walk the picked rows (batches on the GPU)",
    "increment": "one thread: step[0] += 1 on the device (graph step counter)",
    "bias_grad": "column sum: 32x8 blocks, row chunks of 256, fixed-order tree; second pass over "
                 "the chunk partials (deterministic, no atomics)",
    "softmax": "warp per row: max, sum of exp, write (shuffle reductions)",
    "softmax_cross_entropy": "warp per row, fused loss + accuracy; one block (deterministic) when "
                             "N*classes <= 2^18, else per-block atomicAdd on double",
    "dropout_forward": "Philox4x32-10 keyed by (seed, step[0], index), mask never stored",
    "dropout_backward": "Philox4x32-10 mask regenerated from (seed, step[0], index)",
    "crop_forward": "block per output row; window drawn once per block (Philox4x32-10 of image, step[0])",
    "crop_backward": "block per dx row: dy inside the window, zeros outside (no memset, no atomics)",
    "pca_noise_forward": "block per row; the image's RGB offset drawn once per block (Box-Muller in double)",
    "lrn_forward": "thread per element, direct channel-window sum",
    "lrn_backward": "thread per element, direct channel-window sum of dy*y/scale",
    "sgd_update": "one grid-stride launch over the flat buffer (plain / momentum / nesterov)",
    "adam_update": "one grid-stride launch; t = step[0] + 1 from device memory; AdamW's decay fused",
    "rmsprop_update": "one grid-stride launch (plain / momentum / centered)",
}

# The ops whose kernels are templated over the element type (or move bytes of any type).
BOTH_DTYPES = {"relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward", "add", "cast", "copy",
               "copy_channels", "gather_rows", "bias_grad", "softmax", "softmax_cross_entropy", "dropout_forward",
               "dropout_backward", "crop_forward", "crop_backward", "pca_noise_forward", "lrn_forward", "lrn_backward"}

for _op, _note in _NOTES.items():
    registry.register(_op, "cuda", globals()[_op], source="cuda", note=_note,
                      dtypes=("float32", "bfloat16") if _op in BOTH_DTYPES else ("float32",))
