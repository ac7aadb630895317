"""Numba kernels for the rest of a training step: elementwise, bias, softmax, LRN, optimisers.

Elementwise grid-stride kernels; bias_grad as a two-pass column reduction
(deterministic); softmax and softmax-xent one block per row with shared-memory
reductions, totals by cuda.atomic.add; LRN across channels; SGD, Adam (AdamW)
and RMSprop over flat buffers.  The Philox-driven ones (dropout, crops, colour
noise) are in philox.py.
"""
from __future__ import annotations

import math

import numpy as np

from ._launch import (FLOAT32_ONLY, SIMULATOR, THREADS, _MAX_BLOCKS, _blocks, _check, _cp, _device, _flat, _jit,
                      _launch, _no_bias, _out, _ptx_types, _scratch, cuda, float32,
                      float64, int32, types)
from .. import checks, reference

# ---------------------------------------------------------------------------
# elementwise, bias, softmax, loss
# ---------------------------------------------------------------------------

@_jit
def _k_relu_fwd(X, Y, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        v = X[i]
        Y[i] = float32(0.0) if v <= float32(0.0) else v    # as numpy.maximum(x, 0): NaN stays, -0.0 -> 0.0
        i += stride


@_jit
def _k_relu_bwd(DY, Y, DX, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        DX[i] = DY[i] * (float32(1.0) if Y[i] > float32(0.0) else float32(0.0))    # the reference's dy * (y > 0)
        i += stride


@_jit
def _k_leaky_relu_fwd(X, Y, slope, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        v = X[i]
        Y[i] = v if v >= float32(0.0) else slope * v    # the reference's where(x >= 0, x, x * slope)
        i += stride


@_jit
def _k_leaky_relu_bwd(DY, X, DX, slope, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        DX[i] = DY[i] * (float32(1.0) if X[i] >= float32(0.0) else slope)
        i += stride


@_jit
def _k_add(A, B, C, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        C[i] = A[i] + B[i]
        i += stride


@_jit
def _k_copy(D, S, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        D[i] = S[i]
        i += stride


@_jit
def _k_increment(step):
    if cuda.grid(1) == 0:
        step[0] += 1


def relu_forward(x, *, out=None):
    _check("x", x)
    y = _out("out", out, x.shape)
    _launch(_k_relu_fwd, _blocks(x.size), THREADS, _flat(x), _flat(y), x.size)
    return y


def relu_backward(dy, y, *, out=None):
    _check("dy", dy)
    _check("y", y, shape=dy.shape)
    dx = _out("out", out, dy.shape)
    _launch(_k_relu_bwd, _blocks(dy.size), THREADS, _flat(dy), _flat(y), _flat(dx), dy.size)
    return dx


def leaky_relu_forward(x, negative_slope, *, out=None):
    _check("x", x)
    slope = np.float32(checks.leaky_slope(negative_slope))
    y = _out("out", out, x.shape)
    _launch(_k_leaky_relu_fwd, _blocks(x.size), THREADS, _flat(x), _flat(y), slope, x.size)
    return y


def leaky_relu_backward(dy, x, negative_slope, *, out=None):
    _check("dy", dy)
    _check("x", x, shape=dy.shape)
    slope = np.float32(checks.leaky_slope(negative_slope))
    dx = _out("out", out, dy.shape)
    _launch(_k_leaky_relu_bwd, _blocks(dy.size), THREADS, _flat(dy), _flat(x), _flat(dx), slope, dy.size)
    return dx


def add(a, b, *, out=None):
    _check("a", a)
    _check("b", b, shape=a.shape)
    c = _out("out", out, a.shape)
    _launch(_k_add, _blocks(a.size), THREADS, _flat(a), _flat(b), _flat(c), a.size)
    return c


def copy(dst, src):
    """dst[...] = src (in place); same shape and dtype (any dtype: e.g. int32 label buffers)."""
    _check("dst", dst, dtype=getattr(dst, "dtype", np.float32))
    _check("src", src, dtype=dst.dtype, shape=dst.shape)
    _launch(_k_copy, _blocks(dst.size), THREADS, _flat(dst), _flat(src), dst.size)


def cast(x, dtype, *, out=None):
    """x converted to dtype: float32 to float32 is a copy; bfloat16 either way is refused (this
    backend computes in float32 only)."""
    if reference.cast_dtype(dtype) != np.float32:
        raise TypeError(f"cast to bfloat16: {FLOAT32_ONLY}")
    _check("x", x)
    y = _out("out", out, x.shape, inputs=(("x", x),))
    _launch(_k_copy, _blocks(x.size), THREADS, _flat(y), _flat(x), x.size)
    return y


def _no_bf16_copy(p_bf16):
    if p_bf16 is not None:
        raise TypeError(f"p_bf16 (a bfloat16 copy of the weights): {FLOAT32_ONLY}")


@_jit
def _k_copy_channels(D, S, rows, width, dst_C, dst_start, src_C, src_start):
    """Block (32, y): lanes walk a row's channels, rows grid-stride over y."""
    r = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    while r < rows:
        c = cuda.threadIdx.x
        while c < width:
            D[r * dst_C + dst_start + c] = S[r * src_C + src_start + c]
            c += cuda.blockDim.x
        r += cuda.blockDim.y * cuda.gridDim.y


def copy_channels(dst, src, dst_start, src_start, width):
    """dst[..., dst_start:dst_start+width] = src[..., src_start:src_start+width] (in place, float32)."""
    _check("dst", dst)
    _check("src", src)
    checks.channel_range(dst.shape, src.shape, dst_start, src_start, width)
    rows = dst.size // dst.shape[-1]
    rows_per_block = THREADS // 32
    grid = (1, max(1, min(_MAX_BLOCKS, -(-rows // rows_per_block))))
    _launch(_k_copy_channels, grid, (32, rows_per_block), _flat(dst), _flat(src), rows, int(width),
            dst.shape[-1], int(dst_start), src.shape[-1], int(src_start))


@_jit
def _k_gather_rows(D, S, rows, n, row_len, src_rows):
    """Block (32, y): lanes walk a row's words, the picked rows grid-stride over y."""
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    while i < n:
        r = rows[i]
        c = cuda.threadIdx.x
        while c < row_len:
            if r >= 0 and r < src_rows:
                D[i * row_len + c] = S[r * row_len + c]
            else:   # never read past the source: the row becomes all-ones bits (NaN / -1)
                D[i * row_len + c] = -1
            c += cuda.blockDim.x
        i += cuda.blockDim.y * cuda.gridDim.y


def gather_rows(dst, src, rows):
    """dst[i] = src[rows[i]] (in place; float32 or int32 rows, rows int32)."""
    _check("dst", dst, dtype=getattr(dst, "dtype", np.float32))
    _check("src", src, dtype=dst.dtype)
    _check("rows", rows, dtype=np.int32, ndim=1)
    checks.gather_shapes(dst, src, rows)
    n = dst.shape[0]
    rows_per_block = THREADS // 32
    grid = (1, max(1, min(_MAX_BLOCKS, -(-n // rows_per_block))))
    words = dst.view(np.int32) if dst.dtype == np.float32 else dst   # bit-exact moves, NaN payloads too
    source = src.view(np.int32) if src.dtype == np.float32 else src
    _launch(_k_gather_rows, grid, (32, rows_per_block), _flat(words), _flat(source), _flat(rows), n,
            dst.size // n, src.shape[0])


def increment(step):
    """step[0] += 1 on the device (int32 array of shape (1,))."""
    _check("step", step, dtype=np.int32, shape=(1,))
    _launch(_k_increment, 1, 1, step)


BIAS_TX, BIAS_TY = 32, 8


@_jit
def _k_bias_partial(DY, part, rows, K, rows_per_split):
    """part[z, col] = sum of DY[r, col] over this split's rows (block: 32 columns x 8 row lanes)."""
    sm = cuda.shared.array((BIAS_TY, BIAS_TX), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    col = cuda.blockIdx.x * BIAS_TX + tx
    z = cuda.blockIdx.y
    r0 = z * rows_per_split
    r1 = min(rows, r0 + rows_per_split)
    acc = float32(0.0)
    if col < K:
        r = r0 + ty
        while r < r1:
            acc += DY[r * K + col]
            r += BIAS_TY
    sm[ty, tx] = acc
    cuda.syncthreads()
    if ty == 0 and col < K:
        v = float32(0.0)
        for t in range(BIAS_TY):
            v += sm[t, tx]
        part[z * K + col] = v


@_jit
def _k_bias_final(part, out, K, splits):
    col = cuda.grid(1)
    while col < K:
        v = float32(0.0)
        for z in range(splits):
            v += part[z * K + col]
        out[col] = v
        col += cuda.gridsize(1)


def bias_grad(dy, *, out=None):
    """Sum of dy over every axis but the last (two passes, no atomics: deterministic)."""
    _check("dy", dy)
    K = dy.shape[-1]
    rows = dy.size // K
    splits = max(1, min(256, rows // 256))
    rows_per_split = (rows + splits - 1) // splits
    splits = (rows + rows_per_split - 1) // rows_per_split
    out = _out("out", out, (K,), inputs=(("dy", dy),))
    part = _scratch(splits * K)
    _launch(_k_bias_partial, ((K + BIAS_TX - 1) // BIAS_TX, splits), (BIAS_TX, BIAS_TY),
            _flat(dy), part, rows, K, rows_per_split)
    _launch(_k_bias_final, _blocks(K), THREADS, part, out, K, splits)
    return out


ROW_THREADS = 64   # softmax kernels: one block of 64 threads per row


@_device
def _block_max_arg(sv, si, tid):
    """Tree reduction over ROW_THREADS (value, index) pairs: max value, lowest index on ties."""
    half = ROW_THREADS // 2
    while half > 0:
        if tid < half:
            v2 = sv[tid + half]
            i2 = si[tid + half]
            if v2 > sv[tid] or (v2 == sv[tid] and i2 < si[tid]):
                sv[tid] = v2
                si[tid] = i2
        cuda.syncthreads()
        half //= 2


@_device
def _block_sum(sv, tid):
    half = ROW_THREADS // 2
    while half > 0:
        if tid < half:
            sv[tid] += sv[tid + half]
        cuda.syncthreads()
        half //= 2


@_device
def _row_max(X, base, ncls, sv, si, tid):
    """(max, first argmax) of X[base : base + ncls], computed by the whole block."""
    best = -math.inf
    arg = ncls
    j = tid
    while j < ncls:
        v = X[base + j]
        if v > best or arg == ncls:
            best = v
            arg = j
        j += ROW_THREADS
    sv[tid] = best
    si[tid] = arg
    cuda.syncthreads()
    _block_max_arg(sv, si, tid)
    best = sv[0]
    arg = si[0]
    cuda.syncthreads()
    return best, arg


@_device
def _row_expsum(X, base, ncls, mx, sv, tid):
    acc = float32(0.0)
    j = tid
    while j < ncls:
        acc += math.exp(X[base + j] - mx)
        j += ROW_THREADS
    sv[tid] = acc
    cuda.syncthreads()
    _block_sum(sv, tid)
    total = sv[0]
    cuda.syncthreads()
    return total


@_jit
def _k_softmax(X, Y, ncls):
    sv = cuda.shared.array(ROW_THREADS, float32)
    si = cuda.shared.array(ROW_THREADS, int32)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    base = row * ncls
    mx, _ = _row_max(X, base, ncls, sv, si, tid)
    total = _row_expsum(X, base, ncls, mx, sv, tid)
    inv = float32(1.0) / total
    j = tid
    while j < ncls:
        Y[base + j] = math.exp(X[base + j] - mx) * inv
        j += ROW_THREADS


@_jit
def _k_xent_int(X, labels, D, totals, ncls, inv_n):
    """Rows of logits X with int class labels: D = (softmax - onehot)/N; totals += (loss, correct)."""
    sv = cuda.shared.array(ROW_THREADS, float32)
    si = cuda.shared.array(ROW_THREADS, int32)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    base = row * ncls
    label = labels[row]
    mx, arg = _row_max(X, base, ncls, sv, si, tid)
    total = _row_expsum(X, base, ncls, mx, sv, tid)
    inv = float32(1.0) / total
    j = tid
    while j < ncls:
        sm = math.exp(X[base + j] - mx) * inv
        if j == label:
            sm -= float32(1.0)
        D[base + j] = sm * inv_n
        j += ROW_THREADS
    if tid == 0:
        loss = math.log(float64(total)) - (float64(X[base + label]) - float64(mx))
        cuda.atomic.add(totals, 0, loss)
        if arg == label:
            cuda.atomic.add(totals, 1, float64(1.0))


@_jit
def _k_xent_onehot(X, Yt, D, totals, ncls, inv_n):
    """Rows of logits X with float (one-hot or soft) targets Yt.

    Row loss = logsumexp(z) - sum(y * z) = log(sum exp s) - sum(y * s) + max(z) * (1 - sum y)
    with s = z - max(z), as the reference computes it.
    """
    sv = cuda.shared.array(ROW_THREADS, float32)
    sy = cuda.shared.array(ROW_THREADS, float32)
    si = cuda.shared.array(ROW_THREADS, int32)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    base = row * ncls
    _, label = _row_max(Yt, base, ncls, sv, si, tid)
    mx, arg = _row_max(X, base, ncls, sv, si, tid)
    total = _row_expsum(X, base, ncls, mx, sv, tid)
    inv = float32(1.0) / total
    ys = float32(0.0)     # this thread's share of sum(y * s)
    ysum = float32(0.0)   # and of sum(y)
    j = tid
    while j < ncls:
        x = X[base + j]
        y = Yt[base + j]
        D[base + j] = (math.exp(x - mx) * inv - y) * inv_n
        ys += y * (x - mx)
        ysum += y
        j += ROW_THREADS
    sv[tid] = ys
    sy[tid] = ysum
    cuda.syncthreads()
    _block_sum(sv, tid)
    _block_sum(sy, tid)
    if tid == 0:
        loss = (math.log(float64(total)) - float64(sv[0])
                + float64(mx) * (1.0 - float64(sy[0])))
        cuda.atomic.add(totals, 0, loss)
        if arg == label:
            cuda.atomic.add(totals, 1, float64(1.0))


def softmax(x, *, out=None):
    """Row softmax of a 2-D array (one block per row)."""
    _check("x", x, ndim=2)
    y = _out("out", out, x.shape, inputs=(("x", x),))
    _launch(_k_softmax, x.shape[0], ROW_THREADS, _flat(x), _flat(y), x.shape[1])
    return y


def softmax_cross_entropy(logits, labels, totals, *, out=None):
    """-> dlogits = (softmax - onehot)/N; totals (float64 (2,)) += [sum of losses, correct]."""
    _check("logits", logits, ndim=2)
    _check("totals", totals, dtype=np.float64, shape=(2,))
    n, ncls = logits.shape
    if not isinstance(labels, np.ndarray if SIMULATOR else _cp.ndarray):
        _check("labels", labels)   # raises the TypeError naming labels
    d = _out("out", out, logits.shape, inputs=(("logits", logits), ("labels", labels)))
    inv_n = np.float32(1.0 / n)
    if labels.ndim == 1:
        _check("labels", labels, dtype=np.int32, shape=(n,))
        if SIMULATOR and (labels.min() < 0 or labels.max() >= ncls):
            raise ValueError(f"labels must lie in [0, {ncls}), got [{labels.min()}, {labels.max()}]")
        _launch(_k_xent_int, n, ROW_THREADS, _flat(logits), labels, _flat(d), totals, ncls, inv_n)
    else:
        _check("labels", labels, dtype=np.float32, shape=(n, ncls))
        _launch(_k_xent_onehot, n, ROW_THREADS, _flat(logits), _flat(labels), _flat(d), totals,
                ncls, inv_n)
    return d


# ---------------------------------------------------------------------------
# local response normalisation across channels
# ---------------------------------------------------------------------------
# window of channel c: [c - size//2, c + size//2] (size odd), clipped to [0, C)

@_jit
def _k_lrn_fwd(X, Y, SC, total, C, size, alpha, beta, k):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    half = size // 2
    while i < total:
        c = i % C
        base = i - c
        lo = max(0, c - half)
        hi = min(C - 1, c - half + size - 1)
        acc = float32(0.0)
        for j in range(lo, hi + 1):
            v = X[base + j]
            acc += v * v
        s = k + alpha * acc
        SC[i] = s
        Y[i] = X[i] * math.pow(s, -beta)
        i += stride


@_jit
def _k_lrn_bwd(DY, X, Y, SC, DX, total, C, size, coef, beta):
    # dx_c = dy_c * s_c^-beta + coef * x_c * sum_{j : c in window(j)} dy_j y_j / s_j,
    # coef = -2 alpha beta
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    half = size // 2
    while i < total:
        c = i % C
        base = i - c
        lo = max(0, c + half - size + 1)
        hi = min(C - 1, c + half)
        acc = float32(0.0)
        for j in range(lo, hi + 1):
            acc += DY[base + j] * Y[base + j] / SC[base + j]
        DX[i] = acc * X[i] * coef + DY[i] * math.pow(SC[i], -beta)
        i += stride


def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0, *, out=None):
    """-> (y, scale): scale = k + alpha * sum of x^2 over ``size`` channels; y = x * scale**-beta."""
    _check("x", x)
    size, alpha, beta, k = checks.lrn_args(size, alpha, beta, k)
    y_out, s_out = checks.out_pair(out, "(y, scale)")
    y = _out("out[0] (y)", y_out, x.shape, inputs=(("x", x),))
    sc = _out("out[1] (scale)", s_out, x.shape, inputs=(("x", x), ("out[0] (y)", y)))
    _launch(_k_lrn_fwd, _blocks(x.size), THREADS, _flat(x), _flat(y), _flat(sc), x.size,
            x.shape[-1], size, np.float32(alpha), np.float32(beta), np.float32(k))
    return y, sc


def lrn_backward(dy, x, y, scale, size=5, alpha=1e-4, beta=0.75, k=2.0, *, out=None):
    _check("dy", dy)
    for argname, a in (("x", x), ("y", y), ("scale", scale)):
        _check(argname, a, shape=dy.shape)
    size, alpha, beta, k = checks.lrn_args(size, alpha, beta, k)
    dx = _out("out", out, dy.shape, inputs=(("dy", dy), ("x", x), ("y", y), ("scale", scale)))
    _launch(_k_lrn_bwd, _blocks(dy.size), THREADS, _flat(dy), _flat(x), _flat(y), _flat(scale),
            _flat(dx), dy.size, dy.shape[-1], size, np.float32(-2.0 * alpha * beta), np.float32(beta))
    return dx


# ---------------------------------------------------------------------------
# optimisers over flat buffers
# ---------------------------------------------------------------------------

@_jit
def _k_sgd(P, G, V, n, lr, momentum, mode, wd):
    # mode 0: plain; 1: momentum; 2: Nesterov momentum (Keras's rules); wd: weight decay
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        g = G[i]
        if wd != 0:
            g = g + wd * P[i]
        if mode == 0:
            P[i] -= lr * g
        else:
            v = momentum * V[i] - lr * g
            V[i] = v
            if mode == 1:
                P[i] += v
            else:
                P[i] += momentum * v - lr * g
        i += stride


@_jit
def _k_adam(P, G, M, V, n, step, lr, beta1, beta2, eps, wd, lr_f):
    # lr, beta1, beta2 arrive as float64 so that lr_t and 1 - beta are rounded once, as the reference does;
    # wd != 0: AdamW's decoupled decay p -= (p * wd) * lr first (wd, lr_f float32)
    t = float64(step[0] + 1)
    lr_t = float32(lr * math.sqrt(1.0 - math.pow(beta2, t)) / (1.0 - math.pow(beta1, t)))
    b1 = float32(beta1)
    b2 = float32(beta2)
    c1 = float32(1.0 - beta1)
    c2 = float32(1.0 - beta2)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        if wd != 0:
            P[i] -= P[i] * wd * lr_f
        g = G[i]
        m = b1 * M[i] + c1 * g
        v = b2 * V[i] + c2 * g * g
        M[i] = m
        V[i] = v
        P[i] -= lr_t * m / (math.sqrt(v) + eps)
        i += stride


@_jit
def _k_rmsprop(P, G, V, MOM, A, n, lr, rho, one_minus_rho, momentum, eps, use_momentum, centered):
    # Keras's RMSprop; MOM and A are read only with their flag set (else any array)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        g = G[i]
        v = rho * V[i] + one_minus_rho * (g * g)
        V[i] = v
        if centered:
            a = rho * A[i] + one_minus_rho * g
            A[i] = a
            d = v - a * a + eps
        else:
            d = v + eps
        inc = lr * g / math.sqrt(d)
        if use_momentum:
            m = momentum * MOM[i] + inc
            MOM[i] = m
            P[i] -= m
        else:
            P[i] -= inc
        i += stride


def sgd_update(p, g, v, lr, momentum=0.0, nesterov=False, weight_decay=0.0, *, p_bf16=None):
    """In place: v = momentum*v - lr*g; p += v (Nesterov: p += momentum*v - lr*g); v None if momentum == 0;
    g + weight_decay * p in place of g when weight_decay != 0.  p_bf16 is refused (float32 only)."""
    _no_bf16_copy(p_bf16)
    _check("p", p, ndim=1)
    _check("g", g, shape=p.shape)
    momentum = float(momentum)
    if momentum == 0.0:
        mode = 0
        v = _no_bias()
    else:
        if v is None:
            raise ValueError("v (the velocity buffer) is required when momentum != 0")
        _check("v", v, shape=p.shape)
        mode = 2 if nesterov else 1
    _launch(_k_sgd, _blocks(p.size, cap=4096), THREADS, p, g, v, p.size, np.float32(lr),
            np.float32(momentum), mode, np.float32(weight_decay))


def adam_update(p, g, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.0, *, p_bf16=None):
    """In place, Keras's Adam with t = step[0] + 1 (step itself is not changed); weight_decay != 0:
    AdamW's p -= p * weight_decay * lr first.  p_bf16 is refused (float32 only)."""
    _no_bf16_copy(p_bf16)
    _check("p", p, ndim=1)
    for argname, a in (("g", g), ("m", m), ("v", v)):
        _check(argname, a, shape=p.shape)
    _check("step", step, dtype=np.int32, shape=(1,))
    _launch(_k_adam, _blocks(p.size, cap=4096), THREADS, p, g, m, v, p.size, step,
            float(lr), float(beta1), float(beta2), np.float32(eps), np.float32(weight_decay), np.float32(lr))


def rmsprop_update(p, g, v, mom, avg, lr=1e-3, rho=0.9, momentum=0.0, eps=1e-7, *, p_bf16=None):
    """In place, Keras's RMSprop; mom None when momentum == 0, avg None unless centered.  p_bf16 is
    refused (float32 only)."""
    _no_bf16_copy(p_bf16)
    _check("p", p, ndim=1)
    for argname, a in (("g", g), ("v", v), ("mom", mom), ("avg", avg)):
        if a is not None:
            _check(argname, a, shape=p.shape)
    if (mom is None) != (float(momentum) == 0.0):
        raise ValueError(f"mom (the momentum buffer) is required exactly when momentum != 0 (got {momentum})")
    _launch(_k_rmsprop, _blocks(p.size, cap=4096), THREADS, p, g, v, _no_bias() if mom is None else mom,
            _no_bias() if avg is None else avg, p.size, np.float32(lr), np.float32(rho), np.float32(1.0 - float(rho)),
            np.float32(momentum), np.float32(eps), int(mom is not None), int(avg is not None))


def ptx_kernels():
    """[(label, python function, explicit signature)] of this module's kernels."""
    if types is None:
        return []
    f32, f64, i32, u8, i64, f, u64 = _ptx_types()
    return [
        ("relu_fwd", _k_relu_fwd.py_func, (f32, f32, i64)),
        ("relu_bwd", _k_relu_bwd.py_func, (f32, f32, f32, i64)),
        ("leaky_relu_fwd", _k_leaky_relu_fwd.py_func, (f32, f32, f, i64)),
        ("leaky_relu_bwd", _k_leaky_relu_bwd.py_func, (f32, f32, f32, f, i64)),
        ("add", _k_add.py_func, (f32, f32, f32, i64)),
        ("copy", _k_copy.py_func, (f32, f32, i64)),
        ("copy_channels", _k_copy_channels.py_func, (f32, f32, i64, i64, i64, i64, i64, i64)),
        ("gather_rows", _k_gather_rows.py_func, (i32, i32, i32, i64, i64, i64)),
        ("increment", _k_increment.py_func, (i32,)),
        ("bias_partial", _k_bias_partial.py_func, (f32, f32, i64, i64, i64)),
        ("bias_final", _k_bias_final.py_func, (f32, f32, i64, i64)),
        ("softmax", _k_softmax.py_func, (f32, f32, i64)),
        ("xent_int", _k_xent_int.py_func, (f32, i32, f32, f64, i64, f)),
        ("xent_onehot", _k_xent_onehot.py_func, (f32, f32, f32, f64, i64, f)),
        ("lrn_fwd", _k_lrn_fwd.py_func, (f32, f32, f32, i64, i64, i64, f, f, f)),
        ("lrn_bwd", _k_lrn_bwd.py_func, (f32, f32, f32, f32, f32, i64, i64, i64, f, f)),
        ("sgd", _k_sgd.py_func, (f32, f32, f32, i64, f, f, i64, f)),
        ("adam", _k_adam.py_func, (f32, f32, f32, f32, i64, i32, types.float64, types.float64,
                                   types.float64, f, f, f)),
        ("rmsprop", _k_rmsprop.py_func, (f32, f32, f32, f32, f32, i64, f, f, f, f, f, i64, i64)),
    ]
