"""Numba kernels drawing from an in-kernel Philox 4x32-10: dropout, crops, colour noise.

uint32 arithmetic done in uint64 with explicit masks; dropout keyed by (seed,
step, element index), crop (augmentation) and the colour noise with the same
Philox per image; no state in memory.
"""
from __future__ import annotations

import math

import numpy as np

from ._launch import (THREADS, _blocks, _check, _device, _flat, _jit, _launch, _out, _ptx_types, cuda,
                      float32, float64, int64, types, uint64)
from .. import checks, reference

# ---------------------------------------------------------------------------
# dropout: Philox 4x32-10, keyed by (seed, step, element index); no state in memory
# ---------------------------------------------------------------------------
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)


@_device
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox 4x32-10 of counter (c0..c3) and key (k0, k1); all uint64 holding 32-bit values."""
    for _ in range(10):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        hi0 = p0 >> SHIFT32
        lo0 = p0 & MASK32
        hi1 = p1 >> SHIFT32
        lo1 = p1 & MASK32
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


@_jit
def _k_dropout(X, Y, n, threshold, scale, k0, k1, step, start):
    """Y = X * keep * scale; one Philox call per 4 consecutive global elements (counter =
    (start + i) // 4, start the global index of X[0])."""
    g = cuda.grid(1)
    stride = cuda.gridsize(1)
    c2 = uint64(step[0]) & MASK32
    z = uint64(0)
    first = start // 4
    while g * 4 < start % 4 + n:
        gg = uint64(first + g)
        w0, w1, w2, w3 = _philox(gg & MASK32, gg >> SHIFT32, c2, z, k0, k1)
        i = (first + g) * 4 - start
        if 0 <= i < n:
            Y[i] = X[i] * scale if w0 >= threshold else float32(0.0)
        if 0 <= i + 1 < n:
            Y[i + 1] = X[i + 1] * scale if w1 >= threshold else float32(0.0)
        if 0 <= i + 2 < n:
            Y[i + 2] = X[i + 2] * scale if w2 >= threshold else float32(0.0)
        if 0 <= i + 3 < n:
            Y[i + 3] = X[i + 3] * scale if w3 >= threshold else float32(0.0)
        g += stride


def _dropout(argname, x, rate, seed, step, offset, out=None):
    _check(argname, x)
    start, threshold, scale, (k0, k1) = checks.dropout_args(x.shape, rate, seed, offset)
    _check("step", step, dtype=np.int32, shape=(1,))
    y = _out("out", out, x.shape)
    n = x.size
    _launch(_k_dropout, _blocks((start % 4 + n + 3) // 4), THREADS, _flat(x), _flat(y), n, np.uint64(threshold),
            np.float32(scale), np.uint64(k0), np.uint64(k1), step, np.int64(start))
    return y


def dropout_forward(x, rate, seed, step, offset=0, *, out=None):
    """x * keep / (1 - rate), keep from Philox 4x32-10 (see fastcnn.backend.reference.dropout_forward)."""
    return _dropout("x", x, rate, seed, step, offset, out)


def dropout_backward(dy, rate, seed, step, offset=0, *, out=None):
    """dy * keep / (1 - rate): the same mask as the forward of the same (seed, step, offset)."""
    return _dropout("dy", dy, rate, seed, step, offset, out)


# ---------------------------------------------------------------------------
# crop: centre or random windows (Philox 4x32-10 per image), mirrored at random
# ---------------------------------------------------------------------------
CROP_STREAM = np.uint64(reference.CROP_STREAM)
HALF32 = np.uint64(2 ** 31)


@_device
def _crop_window(n, H, W, height, width, random, flip, k0, k1, step, first):
    """(top, left, mirrored) of image n (global index first + n): reference.crop_windows."""
    if random == 0:
        return (H - height) // 2, (W - width) // 2, False
    w0, w1, w2, _ = _philox(uint64(first + n), uint64(0), uint64(step[0]) & MASK32, CROP_STREAM, k0, k1)
    top = int64(w0 % uint64(H - height + 1))
    left = int64(w1 % uint64(W - width + 1))
    return top, left, flip != 0 and w2 >= HALF32


@_device
def _unravel_nhwc(e, H, W, C):
    """(n, h, w, c) of flat index e in an (N, H, W, C) array."""
    return e // (C * W * H), (e // (C * W)) % H, (e // C) % W, e % C


@_jit
def _k_crop_fwd(X, Y, g, random, flip, k0, k1, step, first):
    """Y (N, height, width, C) from X (N, H, W, C); g = (N, H, W, C, height, width); thread per element."""
    N, H, W, C, height, width = g
    e = cuda.grid(1)
    while e < N * height * width * C:
        n, i, j, c = _unravel_nhwc(e, height, width, C)
        top, left, mirrored = _crop_window(n, H, W, height, width, random, flip, k0, k1, step, first)
        Y[e] = X[((n * H + top + i) * W + left + (width - 1 - j if mirrored else j)) * C + c]
        e += cuda.gridsize(1)


@_jit
def _k_crop_bwd(DY, DX, g, random, flip, k0, k1, step, first):
    """DX (N, H, W, C): DY inside each image's window, zeros elsewhere; thread per DX element."""
    N, H, W, C, height, width = g
    e = cuda.grid(1)
    while e < N * H * W * C:
        n, h, w, c = _unravel_nhwc(e, H, W, C)
        top, left, mirrored = _crop_window(n, H, W, height, width, random, flip, k0, k1, step, first)
        i = h - top
        j = w - left
        v = float32(0.0)
        if 0 <= i < height and 0 <= j < width:
            jj = width - 1 - j if mirrored else j
            v = DY[((n * height + i) * width + jj) * C + c]
        DX[e] = v
        e += cuda.gridsize(1)


PCA_STREAM = np.uint64(reference.PCA_STREAM)
SCALE32 = 2.0 ** -32
TWO_PI = 2.0 * math.pi


@_device
def _standard_normals(w0, w1, w2, w3):
    """reference._standard_normals: three N(0, 1) draws from four words (Box-Muller, float64)."""
    r01 = math.sqrt(-2.0 * math.log((float64(w0) + 1.0) * SCALE32))
    r2 = math.sqrt(-2.0 * math.log((float64(w2) + 1.0) * SCALE32))
    t1 = TWO_PI * float64(w1) * SCALE32
    t3 = TWO_PI * float64(w3) * SCALE32
    return r01 * math.cos(t1), r01 * math.sin(t1), r2 * math.cos(t3)


@_jit
def _k_pca_noise(X, Y, g, b, k0, k1, step, first):
    """Y = X + image n's RGB offset (reference.pca_noise_offsets); g = (N, H, W); b the 3x3 basis
    row-major; thread per element."""
    N, H, W = g
    e = cuda.grid(1)
    while e < N * H * W * 3:
        n = e // (H * W * 3)
        c = e % 3
        w0, w1, w2, w3 = _philox(uint64(first + n), uint64(0), uint64(step[0]) & MASK32, PCA_STREAM, k0, k1)
        z0, z1, z2 = _standard_normals(w0, w1, w2, w3)
        Y[e] = X[e] + float32((b[3 * c] * z0 + b[3 * c + 1] * z1) + b[3 * c + 2] * z2)
        e += cuda.gridsize(1)


def pca_noise_forward(x, basis, seed, step, offset=0, *, out=None):
    """x + each image's RGB offset along the principal components (reference.pca_noise_offsets)."""
    _check("x", x, ndim=4)
    basis, (k0, k1), first = checks.pca_args(x.shape, basis, seed, offset)
    _check("step", step, dtype=np.int32, shape=(1,))
    y = _out("out", out, x.shape)
    N, H, W, _ = x.shape
    _launch(_k_pca_noise, _blocks(x.size), THREADS, _flat(x), _flat(y),
            tuple(np.int64(v) for v in (N, H, W)), tuple(np.float64(v) for v in basis.reshape(-1)), np.uint64(k0),
            np.uint64(k1), step, np.int64(first))
    return y


def _crop(kernel, name, a, args, random, flip, step, out):
    """args: checks.crop_forward_args / crop_backward_args."""
    (N, H, W, C), (height, width), out_shape, (k0, k1), first = args
    _check("step", step, dtype=np.int32, shape=(1,))
    y = _out("out", out, out_shape, inputs=((name, a),))
    geometry = tuple(np.int64(v) for v in (N, H, W, C, height, width))
    _launch(kernel, _blocks(y.size), THREADS, _flat(a), _flat(y), geometry, np.int64(bool(random)),
            np.int64(bool(flip)), np.uint64(k0), np.uint64(k1), step, np.int64(first))
    return y


def crop_forward(x, height, width, random, flip, seed, step, offset=0, *, out=None):
    """Each image's window (reference.crop_windows), mirrored where drawn so."""
    _check("x", x, ndim=4)
    return _crop(_k_crop_fwd, "x", x, checks.crop_forward_args(x.shape, height, width, seed, offset),
                 random, flip, step, out)


def crop_backward(dy, x_shape, random, flip, seed, step, offset=0, *, out=None):
    """dy put back into each image's window of a zero (N, H, W, C) gradient."""
    _check("dy", dy, ndim=4)
    return _crop(_k_crop_bwd, "dy", dy, checks.crop_backward_args(dy.shape, x_shape, seed, offset),
                 random, flip, step, out)


def ptx_kernels():
    """[(label, python function, explicit signature)] of this module's kernels."""
    if types is None:
        return []
    f32, f64, i32, u8, i64, f, u64 = _ptx_types()
    tup6 = types.UniTuple(types.int64, 6)
    return [
        ("dropout", _k_dropout.py_func, (f32, f32, i64, u64, f, u64, u64, i32, i64)),
        ("crop_fwd", _k_crop_fwd.py_func, (f32, f32, tup6, i64, i64, u64, u64, i32, i64)),
        ("crop_bwd", _k_crop_bwd.py_func, (f32, f32, tup6, i64, i64, u64, u64, i32, i64)),
        ("pca_noise", _k_pca_noise.py_func, (f32, f32, types.UniTuple(types.int64, 3),
                                             types.UniTuple(types.float64, 9), u64, u64, i32, i64)),
    ]
