"""Numba convolutions as implicit GEMMs on the engine of gemm.py.

Forward: A gathered from the NHWC input (no im2col buffer); backward-data:
gathered from dy, strided taps skipped; backward-weights: split over K when the
output is small.  Only the operand loaders are new; each becomes a GEMM kernel
per tile config in gemm._GEMM_KERNELS.
"""
from __future__ import annotations

from ._launch import _check, _device, _flat, _memo, _out, _ptx_types, cuda, float32, types
from .. import checks
from .gemm import NP, TILE_CONFIGS, _GEMM_KERNELS, _gemm, _make_gemm

@_device
def _conv_fwd_a(X, m, k, M, K, p):
    # m = (n, oh, ow) over N*P*Q; k = (r, s, c) over R*S*C; X is NHWC
    H = p[1]
    W = p[2]
    C = p[3]
    S = p[5]
    P = p[7]
    Q = p[8]
    n = m // (P * Q)
    rem = m - n * (P * Q)
    oh = rem // Q
    ow = rem - oh * Q
    r = k // (S * C)
    rem = k - r * (S * C)
    s = rem // C
    c = rem - s * C
    h = oh * p[9] - p[11] + r
    w = ow * p[10] - p[12] + s
    if h >= 0 and h < H and w >= 0 and w < W:
        return X[((n * H + h) * W + w) * C + c]
    return float32(0.0)


@_device
def _conv_dgrad_a(DY, m, k, M, K, p):
    # m = (n, h, w) over N*H*W; k = (r, s, kout) over R*S*K; only taps that land on an output
    H = p[1]
    W = p[2]
    S = p[5]
    KO = p[6]
    P = p[7]
    Q = p[8]
    sh = p[9]
    sw = p[10]
    n = m // (H * W)
    rem = m - n * (H * W)
    h = rem // W
    w = rem - h * W
    r = k // (S * KO)
    rem = k - r * (S * KO)
    s = rem // KO
    ko = rem - s * KO
    th = h + p[11] - r
    tw = w + p[12] - s
    if th < 0 or tw < 0:
        return float32(0.0)
    oh = th // sh
    ow = tw // sw
    if oh * sh != th or ow * sw != tw or oh >= P or ow >= Q:
        return float32(0.0)
    return DY[((n * P + oh) * Q + ow) * KO + ko]


@_device
def _conv_dgrad_b(Wt, k, n, K, N, p):
    # k = (r, s, kout), n = c: the weights transposed per tap, HWIO (R, S, C, K)
    S = p[5]
    C = p[3]
    KO = p[6]
    r = k // (S * KO)
    rem = k - r * (S * KO)
    s = rem // KO
    ko = rem - s * KO
    return Wt[((r * S + s) * C + n) * KO + ko]


@_device
def _conv_wgrad_a(X, m, k, M, K, p):
    # m = (r, s, c) over R*S*C; k = (n, oh, ow) over N*P*Q: the forward's patch, transposed
    return _conv_fwd_a(X, k, m, K, M, p)


@_device
def _rowmajor_b(B, k, n, K, N, p):
    return B[k * N + n]


# kind: (A loader, B loader)
_CONV_LOADERS = {
    "conv_fwd": (_conv_fwd_a, _rowmajor_b),     # weights HWIO = an (R*S*C) x K matrix
    "conv_dgrad": (_conv_dgrad_a, _conv_dgrad_b),
    "conv_wgrad": (_conv_wgrad_a, _rowmajor_b),  # dy = an (N*P*Q) x K matrix
}
if cuda is not None:
    for _kind, (_la, _lb) in _CONV_LOADERS.items():
        for _cfg, _dims in TILE_CONFIGS.items():
            _GEMM_KERNELS[_kind, _cfg] = _make_gemm(_la, _lb, *_dims)


@_memo
def _conv_geometry(x_shape, w_shape, stride, padding, x_name="x", w_name="w"):
    (sh, sw), (pt, _, pl, _), P, Q = checks.conv_geometry(x_shape, w_shape, stride, padding, x_name, w_name)
    N, H, W, C = x_shape
    R, S, _, K = w_shape
    return (N, H, W, C, R, S, K, P, Q, sh, sw, pt, pl)


def conv2d_forward(x, w, b=None, stride=(1, 1), padding=(0, 0, 0, 0), relu=False, *, out=None):
    """NHWC x, HWIO w -> y (N, P, Q, K); implicit GEMM M=N*P*Q, N=K, K=R*S*C."""
    _check("x", x, ndim=4)
    _check("w", w, ndim=4)
    g = _conv_geometry(x.shape, w.shape, stride, padding)
    N, H, W, C, R, S, K, P, Q = g[:9]
    if b is not None:
        _check("b", b, ndim=1)
        checks.bias_length(b.shape[0], K, "output channels of w")
    out = _out("out", out, (N, P, Q, K), inputs=(("x", x), ("w", w), ("b", b)))
    _gemm("conv_fwd", _flat(x), _flat(w), N * P * Q, K, R * S * C, g, bias=b, relu=relu, C=out)
    return out


def conv2d_backward_data(dy, w, x_shape, stride=(1, 1), padding=(0, 0, 0, 0), *, out=None):
    """dx (N, H, W, C) = implicit GEMM M=N*H*W, N=C, K=R*S*K over the taps that hit an output."""
    _check("dy", dy, ndim=4)
    _check("w", w, ndim=4)
    x_shape = checks.shape4(x_shape, "x_shape")
    g = _conv_geometry(x_shape, w.shape, stride, padding, "x_shape")
    N, H, W, C, R, S, K, P, Q = g[:9]
    checks.expect_shape("dy", dy.shape, (N, P, Q, K))
    out = _out("out", out, (N, H, W, C), inputs=(("dy", dy), ("w", w)))
    _gemm("conv_dgrad", _flat(dy), _flat(w), N * H * W, C, R * S * K, g, C=out)
    return out


def conv2d_backward_weights(x, dy, w_shape, stride=(1, 1), padding=(0, 0, 0, 0), *, out=None):
    """dw (R, S, C, K) = implicit GEMM M=R*S*C, N=K, K=N*P*Q (split along K when small)."""
    _check("x", x, ndim=4)
    _check("dy", dy, ndim=4)
    w_shape = checks.shape4(w_shape, "w_shape")
    g = _conv_geometry(x.shape, w_shape, stride, padding, "x", "w_shape")
    N, H, W, C, R, S, K, P, Q = g[:9]
    checks.expect_shape("dy", dy.shape, (N, P, Q, K))
    out = _out("out", out, (R, S, C, K), inputs=(("x", x), ("dy", dy)))
    _gemm("conv_wgrad", _flat(x), _flat(dy), R * S * C, K, N * P * Q, g, C=out)
    return out


def ptx_kernels():
    """[(label, python function, explicit signature)] of this module's kernels."""
    if types is None:
        return []
    f32, f64, i32, u8, i64, f, u64 = _ptx_types()
    tup16 = types.UniTuple(types.int64, NP)
    return [(f"gemm_{kind}_{cfg}", k.py_func, (f32, f32, f32, f32, i64, i64, i64, i64, tup16))
            for (kind, cfg), k in _GEMM_KERNELS.items() if kind in _CONV_LOADERS]
