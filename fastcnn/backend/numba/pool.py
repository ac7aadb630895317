"""Numba max-pool kernels: direct (one thread per output / per input), vec and lanes.

Forward: one thread per output, uint8 argmax r*pool_w+s, first max wins, padding
never wins; backward: one thread per input (gather: deterministic, no atomics).
numba_vec: 4 channels a thread when C % 4 == 0, 2-D grid; numba_lanes
(forward): channel lanes x output columns x output rows, no division per output.
"""
from __future__ import annotations

import numpy as np

from ._launch import (THREADS, _MAX_BLOCKS, _blocks, _check, _device, _flat, _jit, _launch, _memo,
                      _out, _ptx_types, cuda, float32, types, uint8)
from .. import checks

# ---------------------------------------------------------------------------
# max-pool
# ---------------------------------------------------------------------------
# q = (N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl)

def _make_window_max(PH=0, PW=0):
    """The window-max device function.  PH, PW > 0 compile the window in (constant trip
    counts: LLVM unrolls the loops, so the loads of a window can be issued together); 0
    takes ph, pw from the arguments."""
    @_device
    def window_max(X, base, h0, w0, H, W, C, ph, pw):
        """(max, r*pw + s of its first position) of one channel's window, whose top-left is
        (h0, w0); base = n*H*W*C + c.  First max wins, padding never competes; a window
        holding NaN gives (NaN, ph*pw - 1), the reference's rule."""
        if PH > 0:
            ph = PH
            pw = PW
        best = float32(0.0)
        arg = -1
        for r in range(ph):
            h = h0 + r
            if h >= 0 and h < H:
                for s in range(pw):
                    w = w0 + s
                    if w >= 0 and w < W:
                        v = X[base + (h * W + w) * C]
                        if arg < 0 or v > best or v != v:
                            best = v
                            arg = r * pw + s
        if best != best:
            arg = ph * pw - 1
        return best, arg
    return window_max


_window_max = _make_window_max()


@_jit
def _k_maxpool_fwd(X, Y, AM, total, q):
    N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < total:
        c = i % C
        t = i // C
        ow = t % Q
        t = t // Q
        oh = t % P
        n = t // P
        best, arg = _window_max(X, n * H * W * C + c, oh * sh - pt, ow * sw - pl,
                                H, W, C, ph, pw)
        Y[i] = best
        AM[i] = uint8(arg)
        i += stride


@_jit
def _k_maxpool_bwd(DY, AM, DX, total, q):
    N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < total:
        c = i % C
        t = i // C
        w = t % W
        t = t // W
        h = t % H
        n = t // H
        hp = h + pt
        wp = w + pl
        # outputs whose windows cover (h, w): oh*sh <= hp < oh*sh + ph
        oh_lo = 0
        if hp >= ph:
            oh_lo = (hp - ph) // sh + 1
        oh_hi = min(hp // sh, P - 1)
        ow_lo = 0
        if wp >= pw:
            ow_lo = (wp - pw) // sw + 1
        ow_hi = min(wp // sw, Q - 1)
        acc = float32(0.0)
        for oh in range(oh_lo, oh_hi + 1):
            for ow in range(ow_lo, ow_hi + 1):
                o = ((n * P + oh) * Q + ow) * C + c
                if AM[o] == (hp - oh * sh) * pw + (wp - ow * sw):
                    acc += DY[o]
        DX[i] = acc
        i += stride


# numba_vec: 4 consecutive channels a thread (C % 4 == 0), as kernels/pool.cu's vec4.
# Numba has no float4, so the four loads are scalar (a warp still reads one contiguous
# 512-byte run per tap).  2-D grid: y walks output rows (n, oh), x the (ow, channel
# group) pairs of a row, so a thread does one integer division (by C/4) instead of
# the direct kernel's three; both loops are grid-stride, so any grid is correct.

@_jit
def _k_maxpool_fwd_vec(X, Y, AM, q):
    N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
    CV = C // 4
    rows = N * P
    rowlen = Q * CV
    row = cuda.blockIdx.y
    while row < rows:
        n = row // P
        h0 = (row - n * P) * sh - pt
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        while j < rowlen:
            ow = j // CV
            c = (j - ow * CV) * 4
            w0 = ow * sw - pl
            b0 = b1 = b2 = b3 = float32(0.0)
            a0 = a1 = a2 = a3 = 0
            first = True
            for r in range(ph):
                h = h0 + r
                if h >= 0 and h < H:
                    for s in range(pw):
                        w = w0 + s
                        if w >= 0 and w < W:
                            src = ((n * H + h) * W + w) * C + c
                            v0 = X[src]
                            v1 = X[src + 1]
                            v2 = X[src + 2]
                            v3 = X[src + 3]
                            at = r * pw + s
                            if first or v0 > b0 or v0 != v0:    # first max wins; padding never competes
                                b0 = v0
                                a0 = at
                            if first or v1 > b1 or v1 != v1:
                                b1 = v1
                                a1 = at
                            if first or v2 > b2 or v2 != v2:
                                b2 = v2
                                a2 = at
                            if first or v3 > b3 or v3 != v3:
                                b3 = v3
                                a3 = at
                            first = False
            last = ph * pw - 1    # NaN in the window: argmax the last position (the reference's rule)
            if b0 != b0:
                a0 = last
            if b1 != b1:
                a1 = last
            if b2 != b2:
                a2 = last
            if b3 != b3:
                a3 = last
            o = (row * Q + ow) * C + c
            Y[o] = b0
            Y[o + 1] = b1
            Y[o + 2] = b2
            Y[o + 3] = b3
            AM[o] = uint8(a0)
            AM[o + 1] = uint8(a1)
            AM[o + 2] = uint8(a2)
            AM[o + 3] = uint8(a3)
            j += cuda.blockDim.x * cuda.gridDim.x
        row += cuda.gridDim.y


@_jit
def _k_maxpool_bwd_vec(DY, AM, DX, q):
    N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
    CV = C // 4
    rows = N * H
    rowlen = W * CV
    row = cuda.blockIdx.y
    while row < rows:
        n = row // H
        hp = row - n * H + pt
        oh_lo = 0
        if hp >= ph:
            oh_lo = (hp - ph) // sh + 1
        oh_hi = min(hp // sh, P - 1)
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        while j < rowlen:
            w = j // CV
            c = (j - w * CV) * 4
            wp = w + pl
            ow_lo = 0
            if wp >= pw:
                ow_lo = (wp - pw) // sw + 1
            ow_hi = min(wp // sw, Q - 1)
            d0 = d1 = d2 = d3 = float32(0.0)
            oh = oh_hi
            while oh >= oh_lo:            # window row r = hp - oh*sh ascending
                ow = ow_hi
                while ow >= ow_lo:        # window column ascending
                    want = (hp - oh * sh) * pw + (wp - ow * sw)
                    o = ((n * P + oh) * Q + ow) * C + c
                    if AM[o] == want:
                        d0 += DY[o]
                    if AM[o + 1] == want:
                        d1 += DY[o + 1]
                    if AM[o + 2] == want:
                        d2 += DY[o + 2]
                    if AM[o + 3] == want:
                        d3 += DY[o + 3]
                    ow -= 1
                oh -= 1
            o = (row * W + w) * C + c
            DX[o] = d0
            DX[o + 1] = d1
            DX[o + 2] = d2
            DX[o + 3] = d3
            j += cuda.blockDim.x * cuda.gridDim.x
        row += cuda.gridDim.y


# numba_lanes: a warp reads 32 consecutive channels of one pixel per tap (128 coalesced
# bytes), as a vector kernel does, but with scalar loads, which Numba can emit.  3-D grid:
# x over channels, y over output columns, z over output rows (n, oh): no integer division
# but one per row (Numba's index arithmetic is 64-bit, where a division costs ~70
# instructions; numba_direct does six per output).  Every axis is grid-stride.

def _make_lanes_kernel(PH=0, PW=0):
    """The lanes kernel; PH, PW > 0: for that window only, compiled in (_make_window_max)."""
    window_max = _make_window_max(PH, PW)

    @_jit
    def maxpool_fwd_lanes(X, Y, AM, q):
        N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
        rows = N * P
        row = cuda.blockIdx.z
        while row < rows:
            n = row // P
            h0 = (row - n * P) * sh - pt
            ow = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
            while ow < Q:
                w0 = ow * sw - pl
                o = (row * Q + ow) * C
                c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
                while c < C:
                    best, arg = window_max(X, n * H * W * C + c, h0, w0, H, W, C, ph, pw)
                    Y[o + c] = best
                    AM[o + c] = uint8(arg)
                    c += cuda.blockDim.x * cuda.gridDim.x
                ow += cuda.blockDim.y * cuda.gridDim.y
            row += cuda.gridDim.z
    return maxpool_fwd_lanes


_k_maxpool_fwd_lanes = _make_lanes_kernel()
# Windows with a compiled-in lanes kernel (AlexNet's 3x3, LeNet's 2x2); others: the generic one.
LANES_WINDOWS = ((2, 2), (3, 3))
_K_MAXPOOL_FWD_LANES_FIXED = {w: _make_lanes_kernel(*w) for w in LANES_WINDOWS}


def _grid_lanes(C, Q, rows):
    """(grid, block) of the lanes kernel: up to 32 channel lanes x output columns."""
    lanes = 32 if C >= 32 else 1 << (C - 1).bit_length()    # a power of two >= C
    cols = THREADS // lanes
    grid = (min(_MAX_BLOCKS, -(-C // lanes)), min(_MAX_BLOCKS, -(-Q // cols)), min(_MAX_BLOCKS, rows))
    return grid, (lanes, cols)


def _grid2(rowlen, rows):
    """(grid, block) of the 2-D grid-stride pool kernels: x over a row, y over rows."""
    gx = max(1, min(_MAX_BLOCKS, (rowlen + THREADS - 1) // THREADS))
    gy = max(1, min(_MAX_BLOCKS, rows))
    return (gx, gy), THREADS


@_memo
def _pool_geometry(x_shape, pool, stride, padding):
    (ph, pw), (sh, sw), (pt, _, pl, _), P, Q = checks.pool_geometry(x_shape, pool, stride, padding)
    N, H, W, C = x_shape
    return (N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl)


def _maxpool_forward(x, pool, stride, padding, out, vec, lanes=False):
    _check("x", x, ndim=4)
    q = _pool_geometry(x.shape, pool, stride, padding)
    N, P, Q, C = q[0], q[4], q[5], q[3]
    y_out, am_out = checks.out_pair(out, "(y, argmax)")
    y = _out("out[0] (y)", y_out, (N, P, Q, C), inputs=(("x", x),))
    am = _out("out[1] (argmax)", am_out, (N, P, Q, C), np.uint8, inputs=(("x", x),))
    if lanes:
        grid, block = _grid_lanes(C, Q, N * P)
        kernel = _K_MAXPOOL_FWD_LANES_FIXED.get((q[6], q[7]), _k_maxpool_fwd_lanes)
        _launch(kernel, grid, block, _flat(x), _flat(y), _flat(am), q)
    elif vec and C % 4 == 0:
        grid, block = _grid2(Q * (C // 4), N * P)
        _launch(_k_maxpool_fwd_vec, grid, block, _flat(x), _flat(y), _flat(am), q)
    else:
        total = N * P * Q * C
        _launch(_k_maxpool_fwd, _blocks(total), THREADS, _flat(x), _flat(y), _flat(am), total, q)
    return y, am


def _maxpool_backward(dy, argmax, x_shape, pool, stride, padding, out, vec):
    _check("dy", dy, ndim=4)
    _check("argmax", argmax, dtype=np.uint8, ndim=4)
    x_shape = checks.shape4(x_shape, "x_shape")
    q = _pool_geometry(x_shape, pool, stride, padding)
    checks.pool_grad_shapes(dy.shape, argmax.shape, (q[0], q[4], q[5], q[3]))
    dx = _out("out", out, x_shape, inputs=(("dy", dy), ("argmax", argmax)))
    N, H, W, C = x_shape
    if vec and C % 4 == 0:
        grid, block = _grid2(W * (C // 4), N * H)
        _launch(_k_maxpool_bwd_vec, grid, block, _flat(dy), _flat(argmax), _flat(dx), q)
    else:
        total = N * H * W * C
        _launch(_k_maxpool_bwd, _blocks(total), THREADS, _flat(dy), _flat(argmax), _flat(dx), total, q)
    return dx


def maxpool_forward(x, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """-> (y (N, P, Q, C), argmax uint8 (N, P, Q, C) = r*pool_w + s within the window)."""
    return _maxpool_forward(x, pool, stride, padding, out, False)


def maxpool_backward(dy, argmax, x_shape, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """dx: each input element gathers dy from the windows whose argmax points at it."""
    return _maxpool_backward(dy, argmax, x_shape, pool, stride, padding, out, False)


def maxpool_forward_vec(x, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """maxpool_forward, 4 channels a thread when C % 4 == 0 (else the direct kernel)."""
    return _maxpool_forward(x, pool, stride, padding, out, True)


def maxpool_forward_lanes(x, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """maxpool_forward, a 3-D grid of channel lanes x output columns x output rows."""
    return _maxpool_forward(x, pool, stride, padding, out, False, lanes=True)


def maxpool_backward_vec(dy, argmax, x_shape, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """maxpool_backward, 4 channels a thread when C % 4 == 0 (else the direct kernel)."""
    return _maxpool_backward(dy, argmax, x_shape, pool, stride, padding, out, True)


def ptx_kernels():
    """[(label, python function, explicit signature)] of this module's kernels."""
    if types is None:
        return []
    f32, f64, i32, u8, i64, f, u64 = _ptx_types()
    tup12 = types.UniTuple(types.int64, 12)
    return [
        ("maxpool_fwd", _k_maxpool_fwd.py_func, (f32, f32, u8, i64, tup12)),
        ("maxpool_bwd", _k_maxpool_bwd.py_func, (f32, u8, f32, i64, tup12)),
        ("maxpool_fwd_vec", _k_maxpool_fwd_vec.py_func, (f32, f32, u8, tup12)),
        ("maxpool_fwd_lanes", _k_maxpool_fwd_lanes.py_func, (f32, f32, u8, tup12)),
    ] + [
        (f"maxpool_fwd_lanes_{ph}x{pw}", k.py_func, (f32, f32, u8, tup12))
        for (ph, pw), k in _K_MAXPOOL_FWD_LANES_FIXED.items()
    ] + [
        ("maxpool_bwd_vec", _k_maxpool_bwd_vec.py_func, (f32, u8, f32, tup12)),
    ]
