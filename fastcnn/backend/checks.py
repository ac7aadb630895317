"""The argument rules every backend shares, each written once: one rule, one message.

The reference, the CUDA C backend (cuda/*), the Numba backend (numba/*) and
``fastcnn.functional`` call these before any work, so that a bad argument gets the
same error, word for word, whichever backend runs.  Here: window sizes, strides and
paddings and the output sizes they give (convolution, max-pool), LRN and leaky-ReLU
hyper-parameters, dropout rates, seeds as Philox keys, sample offsets, crop sizes,
colour-noise bases, channel ranges, the kernels' 32-bit index limit, ceil-division,
and which array library (NumPy or CuPy) holds an array.

What stays in a backend is its own: device and placement checks, dtypes it takes,
contiguity, launch limits (grid sizes), and ``out=`` buffers.  Nothing here imports
CuPy or needs a GPU.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..dtypes import bfloat16

INT32_MAX = 2 ** 31 - 1


# ---------------------------------------------------------------- arrays: NumPy or CuPy

def is_cupy(a) -> bool:
    """True for a CuPy array (told by its type's module, so CuPy need not be importable)."""
    return type(a).__module__.split(".", 1)[0] == "cupy"


def array_module(a):
    """The module of ``a``'s array library: cupy for a CuPy array, else numpy."""
    if is_cupy(a):
        import cupy
        return cupy
    return np


def to_host(a) -> np.ndarray:
    """``a`` as a NumPy array: a CuPy array is copied to the host, anything else np.asarray'd."""
    return a.get() if is_cupy(a) else np.asarray(a)


# ---------------------------------------------------------------- integers and sizes

def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers (b > 0)."""
    return -(-a // b)


def check_int32(**dims) -> None:
    """Refuse a size or index a kernel would hold in a 32-bit int."""
    for arg, value in dims.items():
        if value > INT32_MAX:
            raise ValueError(f"{arg} = {value} exceeds the kernels' 32-bit index range")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def positive_int(v, name) -> int:
    if not _is_int(v) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def real(name, value) -> float:
    """A real number (an int or float, not a bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def pair(v, name) -> tuple[int, int]:
    """(a, b) of positive ints from a positive int or a pair of them (stride, pool, kernel size)."""
    if _is_int(v):
        v = (v, v)
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"{name} must be a pair (h, w) of positive integers, got {v!r}")
    return (positive_int(v[0], f"{name}[0]"), positive_int(v[1], f"{name}[1]"))


def padding(v) -> tuple[int, int, int, int]:
    """Explicit (top, bottom, left, right) padding of non-negative ints."""
    if not isinstance(v, (tuple, list)) or len(v) != 4:
        raise ValueError(f"padding must be explicit (top, bottom, left, right), got {v!r}")
    for i, p in enumerate(v):
        if not _is_int(p) or p < 0:
            raise ValueError(f"padding[{i}] must be a non-negative integer, got {p!r}")
    return tuple(int(p) for p in v)


def shape4(v, name) -> tuple[int, int, int, int]:
    """A 4-D shape of positive ints (x_shape, w_shape)."""
    if not isinstance(v, (tuple, list)) or len(v) != 4:
        raise ValueError(f"{name} must be a 4-tuple, got {v!r}")
    return tuple(positive_int(d, f"{name}[{i}]") for i, d in enumerate(v))


def expect_shape(name, shape, expected) -> None:
    """Refuse an array whose shape is not ``expected``."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(shape)}")


# ---------------------------------------------------------------- convolution and pooling geometry

def output_size(in_hw, window_hw, stride, pads, what) -> tuple[int, int]:
    """(P, Q) for a window (R, S) sliding over (H, W) with ``stride`` and ``pads`` (top,
    bottom, left, right); a ValueError if either is below 1.  ``what`` names the window."""
    (H, W), (R, S), (sh, sw) = in_hw, window_hw, stride
    top, bottom, left, right = pads
    P = (H + top + bottom - R) // sh + 1 if H + top + bottom >= R else 0
    Q = (W + left + right - S) // sw + 1 if W + left + right >= S else 0
    if P < 1 or Q < 1:
        raise ValueError(
            f"non-positive output size {P}x{Q}: {what} {R}x{S} does not fit the input "
            f"{H}x{W} with padding {tuple(pads)}")
    return P, Q


def conv_geometry(x_shape, w_shape, stride, pads, x_name="x", w_name="w"):
    """(stride, padding, P, Q) of x (N, H, W, C) convolved with w (R, S, C, K): stride and
    padding well formed, the channel counts equal, the kernel fits the padded input."""
    stride, pads = pair(stride, "stride"), padding(pads)
    _, H, W, C = x_shape
    R, S, Cw, _ = w_shape
    if Cw != C:
        raise ValueError(f"channel mismatch: {x_name} has {C} channels (NHWC, last axis) but {w_name} "
                         f"expects {Cw} (HWIO {tuple(w_shape)}); is the input laid out NCHW?")
    P, Q = output_size((H, W), (R, S), stride, pads, "kernel")
    return stride, pads, P, Q


def pool_args(pool, stride, pads):
    """(pool, stride, padding) of a max-pool: argmax fits uint8, no window made only of padding."""
    (ph, pw), stride, pads = pair(pool, "pool"), pair(stride, "stride"), padding(pads)
    if ph * pw > 255:
        raise ValueError(f"pool {ph}x{pw} has {ph * pw} positions; argmax is uint8, so at most 255")
    top, bottom, left, right = pads
    if max(top, bottom) >= ph or max(left, right) >= pw:
        raise ValueError(f"padding {pads} must be smaller than the pool {ph}x{pw} on every side "
                         "(a window made only of padding has no maximum)")
    return (ph, pw), stride, pads


def pool_geometry(x_shape, pool, stride, pads):
    """(pool, stride, padding, P, Q) of a max-pool over x (N, H, W, C)."""
    pool, stride, pads = pool_args(pool, stride, pads)
    P, Q = output_size(x_shape[1:3], pool, stride, pads, "pool")
    return pool, stride, pads, P, Q


def pool_grad_shapes(dy_shape, argmax_shape, expected) -> None:
    """maxpool_backward's dy and argmax both have the forward's output shape."""
    if tuple(dy_shape) != tuple(expected) or tuple(argmax_shape) != tuple(dy_shape):
        raise ValueError(f"dy {tuple(dy_shape)} and argmax {tuple(argmax_shape)} must both have shape "
                         f"{tuple(expected)}")


def bias_length(n_bias, n, what) -> None:
    if n_bias != n:
        raise ValueError(f"bias length {n_bias} does not match the {n} {what}")


# ---------------------------------------------------------------- hyper-parameters

def lrn_args(size, alpha, beta, k):
    """(size, alpha, beta, k) of an LRN: size a positive odd int (a window centred on each
    channel), the others real numbers (as floats)."""
    if not _is_int(size) or size < 1 or size % 2 == 0:
        raise ValueError(f"LRN size must be a positive odd integer (a window centred on each "
                         f"channel), got {size!r}")
    return int(size), real("alpha", alpha), real("beta", beta), real("k", k)


def leaky_slope(negative_slope) -> float:
    """The negative slope of a leaky ReLU: a finite real number >= 0 (Keras's rule)."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
        raise TypeError(f"negative_slope must be a real number, got {type(negative_slope).__name__}")
    if not 0.0 <= float(negative_slope) < float("inf"):
        raise ValueError(f"negative_slope must be a finite number >= 0, got {negative_slope!r}")
    return float(negative_slope)


# ---------------------------------------------------------------- random streams: seeds, offsets

def philox_key(seed) -> tuple[int, int]:
    """(k0, k1): a seed in [0, 2**64) as Philox's two 32-bit key words (low, high)."""
    if not _is_int(seed) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    seed = int(seed)
    return seed & 0xFFFFFFFF, seed >> 32


def check_offset(offset) -> int:
    """The global index of a batch's first sample (data-parallel training: where this process's
    slice of the global batch starts): an int in [0, 2**31)."""
    if not _is_int(offset) or not 0 <= offset < 2 ** 31:
        raise ValueError(f"offset must be an integer in [0, 2**31), got {offset!r}")
    return int(offset)


def dropout_threshold(rate) -> int:
    """The 32-bit threshold below which a Philox word drops its element: floor(rate * 2**32)."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    return min(int(np.floor(float(rate) * 2.0 ** 32)), 2 ** 32 - 1)


def dropout_args(shape, rate, seed, offset):
    """(start, threshold, scale, (k0, k1)) of a dropout call on an array of ``shape``: start the
    mask index of its first element (offset samples of size(shape) / shape[0] before it),
    scale = 1 / (1 - rate).  The order of the checks is every backend's: offset, rate, seed."""
    per_sample = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) and shape[0] else 0
    start = check_offset(offset) * per_sample
    threshold = dropout_threshold(rate)
    key = philox_key(seed)
    return start, threshold, 1.0 / (1.0 - float(rate)), key


def check_crop_size(in_hw, out_hw) -> None:
    """A height x width crop of H x W images: positive ints, no larger than the images."""
    (H, W), (height, width) = in_hw, out_hw
    for name, v in (("height", height), ("width", width)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"crop {name} must be a positive int, got {v!r}")
    if height > H or width > W:
        raise ValueError(f"crop {height}x{width} is larger than the {H}x{W} images")


def crop_args(in_hw, out_hw, seed, offset):
    """((k0, k1), first) of a crop call: the crop fits, the seed as Philox key, ``first`` the
    checked offset (the global index of the first image)."""
    check_crop_size(in_hw, out_hw)
    return philox_key(seed), check_offset(offset)


def crop_forward_args(x_shape, height, width, seed, offset):
    """(images, crop_hw, out_shape, (k0, k1), first) of crop_forward on x (N, H, W, C): what every
    backend's launch takes; images is the uncropped side's shape."""
    N, H, W, C = x_shape
    key, first = crop_args((H, W), (height, width), seed, offset)
    return tuple(x_shape), (height, width), (N, height, width, C), key, first


def crop_backward_args(dy_shape, x_shape, seed, offset):
    """(images, crop_hw, out_shape, (k0, k1), first) of crop_backward of dy (N, height, width, C)
    into x_shape (N, H, W, C)."""
    x_shape = crop_backward_shape(dy_shape, x_shape)
    key, first = crop_args(x_shape[1:3], tuple(dy_shape[1:3]), seed, offset)
    return x_shape, tuple(dy_shape[1:3]), x_shape, key, first


def crop_backward_shape(dy_shape, x_shape):
    """x_shape of crop_backward checked against dy (same batch and channels)."""
    x_shape = shape4(x_shape, "x_shape")
    if (dy_shape[0], dy_shape[3]) != (x_shape[0], x_shape[3]):
        raise ValueError(f"dy {tuple(dy_shape)} does not match x_shape {x_shape} (batch and channels)")
    return x_shape


def pca_args(x_shape, basis, seed, offset):
    """(basis (3, 3) float64, (k0, k1), first) of a colour-noise call on RGB images x_shape."""
    if x_shape[3] != 3:
        raise ValueError(f"colour noise needs RGB images (N, H, W, 3), got shape {tuple(x_shape)}")
    basis = pca_basis(basis)
    return basis, philox_key(seed), check_offset(offset)


def pca_basis(basis) -> np.ndarray:
    basis = np.asarray(basis, np.float64)
    if basis.shape != (3, 3):
        raise ValueError(f"basis must be 3x3 (RGB x components), got shape {basis.shape}")
    return basis


# ---------------------------------------------------------------- small ops

def out_pair(out, what):
    """An ``out=`` that names two results: None (both fresh) or a pair."""
    if out is None:
        return None, None
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"out must be a pair {what} or None")
    return out


def channel_range(dst_shape, src_shape, dst_start, src_start, width) -> None:
    """Check a copy_channels call's shapes and channel ranges."""
    if len(dst_shape) < 1 or tuple(dst_shape[:-1]) != tuple(src_shape[:-1]):
        raise ValueError(f"dst {tuple(dst_shape)} and src {tuple(src_shape)} must have the same shape "
                         "but for the last (channel) axis")
    for name, v in (("dst_start", dst_start), ("src_start", src_start), ("width", width)):
        if not _is_int(v):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if width < 1 or src_start < 0 or dst_start < 0 or src_start + width > src_shape[-1] \
            or dst_start + width > dst_shape[-1]:
        raise ValueError(f"channels [{src_start}, {src_start + width}) of src ({src_shape[-1]} channels) -> "
                         f"[{dst_start}, {dst_start + width}) of dst ({dst_shape[-1]}) are out of range")


def gather_shapes(dst, src, rows) -> None:
    """Check a gather_rows call's dtypes and shapes."""
    if dst.dtype not in (np.float32, np.int32, bfloat16) or src.dtype != dst.dtype:
        raise TypeError(f"gather_rows moves float32, bfloat16 or int32 rows: dst is {dst.dtype}, "
                        f"src is {src.dtype}")
    if rows.dtype != np.int32 or rows.ndim != 1:
        raise TypeError(f"rows must be a 1-D int32 array, got {rows.dtype} of shape {tuple(rows.shape)}")
    if dst.ndim < 1 or tuple(dst.shape[1:]) != tuple(src.shape[1:]) or dst.shape[0] != rows.shape[0]:
        raise ValueError(f"dst {tuple(dst.shape)} must be (len(rows) = {rows.shape[0]},) + the trailing shape "
                         f"of src {tuple(src.shape)}")
