"""Winograd convolution (kernels/conv_winograd.cu): forward and backward-data, fp32.

Variants, registered in ``fastcnn.kernels`` at import (no GPU needed):
  winograd    F(2x2, 3x3): 4x4 input tiles, 16 GEMMs; 2.25x fewer multiplications
              F(2x2, 5x5): 6x6 input tiles, 36 GEMMs; 25/9 = 2.8x fewer
  winograd4   F(4x4, 3x3): 6x6 input tiles, 36 GEMMs; 4x fewer, but ceil(P/4) tiles
              waste more on 13x13 maps and the transforms round more (still ~1e-6)
              F(4x4, 5x5): 8x8 input tiles, 64 GEMMs; 25/4 = 6.25x fewer (points 0, +-1,
              +-2, +-1/2, inf; float32 error ~5e-6 relative on AlexNet conv2)
each (picking the kernels by the weights' R x R, R = 3 or 5) with
  conv2d_forward        weight transform U = G g G^T, input transform V = B^T d B per
                        tile, batched GEMMs M[e] = V[e] @ U[e] on the tiled core of
                        gemm_tile.cuh, output transform A^T M A with fused bias + ReLU
  conv2d_backward_data  the same forward on dy with the weights flipped in (r, s) and
                        transposed in (C, K) (done inside the weight transform), padding
                        (R-1-top, R-1-bottom, R-1-left, R-1-right), no bias or ReLU
  conv2d_backward_weights  F(R x R, m x m): each m x m tile of dy is the "filter" of a
                        correlation with its x patch; V as in the forward, Wt = G' dy G'^T,
                        batched GEMMs Mw[e] = V[e]^T @ Wt[e] reducing over the T tiles (split
                        in chunks to fill whole waves, ``wgrad_splits``), dw = A'^T Mw A'.
                        Any padding.  AlexNet conv2 in 9.9 G multiplications instead of 57 G.

Only 3x3 and 5x5 kernels, stride 1 and padding <= R-1 on every side (backward-weights: any):
anything else is a ``registry.NotApplicable`` (a ``ValueError``) that says why, raised
from the shapes alone before any GPU call (the ``auto`` variant skips a variant that
refuses a shape).  Workspaces come from ``cupy.empty`` (no host synchronisation:
capturable in a CUDA graph): E*C*K + E*T*C + E*T*K floats, E = (m+R-1)^2,
T = N * ceil(P/m) * ceil(Q/m) tiles (backward-weights: E*T*C + E*T*K + splits*E*C*K).
Every function takes ``out=`` like conv.py's variants.
"""
from __future__ import annotations

import numpy as np

from .. import checks, registry
from ..checks import cdiv, check_int32
from . import _launch
from .conv import checked_backward_data, checked_backward_weights, checked_forward
from .gemm import TILE_M, TILE_N, THREADS, grid_blocks, sm_count

_FILE = "conv_winograd.cu"
NAME, NAME4 = "winograd", "winograd4"  # F(2x2,R x R), F(4x4,R x R), R = 3 or 5
VARIANTS = {NAME: 2, NAME4: 4}  # variant name -> output tile m
KERNEL_SIZES = (3, 5)
# (m, R) -> kernel name prefix in conv_winograd.cu
_PREFIX = {(2, 3): "winograd", (4, 3): "winograd4", (2, 5): "winograd5", (4, 5): "winograd5x4"}


def _refuse(name: str, what: str, w_shape, stride, padding, any_padding: bool = False) -> tuple:
    """(stride, padding, R) normalised; NotApplicable unless R x R with R = 3 or 5, stride 1,
    padding <= R-1 (any padding with ``any_padding``: backward-weights)."""
    stride, padding = checks.pair(stride, "stride"), checks.padding(padding)
    R, S = tuple(w_shape)[:2]
    if R != S or R not in KERNEL_SIZES:
        raise registry.NotApplicable(f"{name} {what} handles 3x3 and 5x5 kernels only (Winograd F(mxm,3x3) "
                                     f"and F(mxm,5x5)), got {R}x{S}; use the implicit_gemm variant")
    r = R
    if stride != (1, 1):
        raise registry.NotApplicable(f"{name} {what} handles stride 1 only, got stride {stride}; "
                                     "use the implicit_gemm variant")
    if max(padding) > r - 1 and not any_padding:
        raise registry.NotApplicable(f"{name} {what} handles padding up to {r - 1} per side ({r}x{r} kernel), "
                                     f"got {padding}; use the implicit_gemm variant")
    return stride, padding, r


def _shape_of(name: str, a) -> tuple:
    shape = getattr(a, "shape", None)
    if shape is None or len(shape) != 4:
        _launch.check(name, a, ndim=4)  # the usual TypeError / ValueError naming the argument
    return tuple(shape)


class _Cuda:
    """The device side of a run: our kernels, CuPy workspaces, grid sizes for this card."""

    @staticmethod
    def empty(n: int):
        import cupy as cp
        return cp.empty(n, dtype=np.float32)

    @staticmethod
    def launch(name: str, grid: tuple, block: tuple, args: tuple) -> None:
        _launch.function(_FILE, name)(grid, block, args)

    @staticmethod
    def blocks(n: int) -> int:
        return grid_blocks(n)

    @staticmethod
    def slots() -> int:
        """Blocks of the Winograd GEMMs resident at once (__launch_bounds__(256, 2))."""
        return 2 * sm_count()


_DEVICE = _Cuda  # the device side run() uses; a test swaps it to prove bad inputs launch nothing


def run(dev, x, w, b, y, N, H, W, C, K, P, Q, pt, pl, relu, flip, m=2, r=3) -> None:
    """y (N,P,Q,K) = relu?(conv_rxr(x (N,H,W,C), g) + b), stride 1, padding top pt / left pl,
    by Winograd F(m x m, r x r), m = 2 or 4, r = 3 or 5.

    g is w (r,r,C,K) (flip False) or w (r,r,K,C) flipped in (r, s) (flip True).  ``dev``
    supplies empty(n), launch(name, grid, block, args) and blocks(n): _Cuda, or a CPU
    emulation of the kernels.  Shapes already checked by the caller.
    """
    prefix = _PREFIX[(m, r)]
    E = (m + r - 1) ** 2  # transformed tile elements = number of GEMMs
    TH, TW = cdiv(P, m), cdiv(Q, m)
    T = N * TH * TW
    check_int32(x_size=N * H * W * C, y_size=N * P * Q * K, V_size=E * T * C, M_size=E * T * K,
                U_size=E * C * K)
    i32 = np.int32
    U, V, M = dev.empty(E * C * K), dev.empty(E * T * C), dev.empty(E * T * K)
    dev.launch(f"{prefix}_weight_transform", (dev.blocks(C * K),), (THREADS,),
               (w, U, i32(C), i32(K), i32(bool(flip))))
    dev.launch(f"{prefix}_input_transform", (dev.blocks(T * C),), (THREADS,),
               (x, V, i32(N), i32(H), i32(W), i32(C), i32(TH), i32(TW), i32(pt), i32(pl)))
    gemm, tile_n = ("winograd_gemm96", 96) if K <= 96 else ("winograd_gemm", TILE_N)  # 96: no idle quarter
    dev.launch(gemm, (cdiv(T, TILE_M), cdiv(K, tile_n), E), (THREADS,),
               (V, U, M, i32(T), i32(C), i32(K), None, i32(0)))
    dev.launch(f"{prefix}_output_transform", (dev.blocks(T * K),), (THREADS,),
               (M, b, y, i32(N), i32(P), i32(Q), i32(K), i32(TH), i32(TW), i32(bool(relu))))


WGRAD_MIN_CHUNK = 256   # tiles per split of the backward-weights GEMMs' reduction, at least
WGRAD_MAX_SPLITS = 8


def wgrad_splits(blocks: int, T: int, slots: int) -> int:
    """How many chunks the backward-weights GEMMs cut their reduction over T tiles into:
    the fewest (up to WGRAD_MAX_SPLITS, chunks of at least WGRAD_MIN_CHUNK tiles) whose
    blocks x splits fill the card's waves of ``slots`` blocks to 90%, else the best filled.
    The E output tiles of C x K alone are often a wave and a bit (AlexNet conv4: 324 blocks
    on 264 slots): splitting trades a small reduce for whole waves."""
    best, best_fill = 1, 0.0
    for splits in range(1, WGRAD_MAX_SPLITS + 1):
        if splits > 1 and T < splits * WGRAD_MIN_CHUNK:
            break
        total = blocks * splits
        fill = total / (cdiv(total, slots) * slots)
        if fill >= 0.9:
            return splits
        if fill > best_fill:
            best, best_fill = splits, fill
    return best


def run_wgrad(dev, x, dy, dw, N, H, W, C, K, P, Q, pt, pl, m=2, r=3) -> None:
    """dw (r,r,C,K) = sum over n, p, q of x[n, p+i-pt, q+j-pl, c] dy[n, p, q, k] by Winograd
    F(r x r, m x m) over the m x m tiles of dy (see kernels/conv_winograd.cu).  ``dev`` as
    for run(), plus slots(); shapes already checked by the caller."""
    prefix = _PREFIX[(m, r)]
    E = (m + r - 1) ** 2
    TH, TW = cdiv(P, m), cdiv(Q, m)
    T = N * TH * TW
    splits = wgrad_splits(cdiv(C, TILE_M) * cdiv(K, TILE_N) * E, T, dev.slots())
    chunk = cdiv(cdiv(T, splits), 8) * 8  # the GEMM core's slices start at multiples of 8
    splits = cdiv(T, chunk)
    check_int32(x_size=N * H * W * C, dy_size=N * P * Q * K, V_size=E * T * C, Wt_size=E * T * K,
                Mw_size=splits * E * C * K)
    i32 = np.int32
    V, Wt, Mw = dev.empty(E * T * C), dev.empty(E * T * K), dev.empty(splits * E * C * K)
    dev.launch(f"{prefix}_input_transform", (dev.blocks(T * C),), (THREADS,),
               (x, V, i32(N), i32(H), i32(W), i32(C), i32(TH), i32(TW), i32(pt), i32(pl)))
    dev.launch(f"{prefix}_wgrad_dy_transform", (dev.blocks(T * K),), (THREADS,),
               (dy, Wt, i32(N), i32(P), i32(Q), i32(K), i32(TH), i32(TW)))
    dev.launch("winograd_wgrad_gemm", (cdiv(C, TILE_M), cdiv(K, TILE_N), E * splits), (THREADS,),
               (V, Wt, Mw, i32(T), i32(C), i32(K), i32(E), i32(chunk), None, i32(0)))
    dev.launch(f"{prefix}_wgrad_output_transform", (dev.blocks(C * K),), (THREADS,),
               (Mw, dw, i32(C), i32(K), i32(splits)))


def _forward(name: str):
    m = VARIANTS[name]

    def conv2d_forward(x, w, b, stride, padding, relu, *, out=None):
        """y (N,P,Q,K) = x (N,H,W,C) * w (R,R,C,K) + b, ReLU if relu; stride 1 only."""
        w_shape = _shape_of("w", w)
        _, _, r = _refuse(name, "conv2d_forward", w_shape, stride, padding)
        (N, H, W, C, K, _, _, P, Q, _, padding), y, _ = checked_forward(x, w, b, stride, padding, out)
        run(_DEVICE, x, w, b, y, N, H, W, C, K, P, Q, padding[0], padding[2], relu, flip=False, m=m, r=r)
        return y
    conv2d_forward.__name__ = conv2d_forward.__qualname__ = f"conv2d_forward_{name}"
    return conv2d_forward


def _backward_data(name: str):
    m = VARIANTS[name]

    def conv2d_backward_data(dy, w, x_shape, stride, padding, *, out=None):
        """dx (N,H,W,C) from dy (N,P,Q,K) and w (R,R,C,K): the forward of dy with w flipped and
        transposed, padding (R-1-top, R-1-bottom, R-1-left, R-1-right); stride 1 only."""
        w_shape = _shape_of("w", w)
        _, _, r = _refuse(name, "conv2d_backward_data", w_shape, stride, padding)
        (N, H, W, C, K, _, _, P, Q, _, padding), dx, _ = checked_backward_data(dy, w, x_shape, stride, padding, out)
        top, _, left, _ = padding
        # dx = conv(dy (N,P,Q,K), flipped w^T (R,R,K,C)), padding (R-1-top, .., R-1-left, ..), output H x W.
        run(_DEVICE, dy, w, None, dx, N, P, Q, K, C, H, W, r - 1 - top, r - 1 - left, False, flip=True,
            m=m, r=r)
        return dx
    conv2d_backward_data.__name__ = conv2d_backward_data.__qualname__ = f"conv2d_backward_data_{name}"
    return conv2d_backward_data


def _backward_weights(name: str):
    m = VARIANTS[name]

    def conv2d_backward_weights(x, dy, w_shape, stride, padding, *, out=None):
        """dw (R,R,C,K) from x (N,H,W,C) and dy (N,P,Q,K) by Winograd F(RxR, mxm) over dy's
        tiles; stride 1, any padding."""
        _, _, r = _refuse(name, "conv2d_backward_weights", tuple(w_shape), stride, padding, any_padding=True)
        (N, H, W, C, K, _, _, P, Q, _, padding), dw, _ = checked_backward_weights(x, dy, w_shape, stride,
                                                                                   padding, out)
        run_wgrad(_DEVICE, x, dy, dw, N, H, W, C, K, P, Q, padding[0], padding[2], m=m, r=r)
        return dw
    conv2d_backward_weights.__name__ = conv2d_backward_weights.__qualname__ = f"conv2d_backward_weights_{name}"
    return conv2d_backward_weights


for _name, _m in VARIANTS.items():
    _what = f"Winograd F({_m}x{_m},3x3) / F({_m}x{_m},5x5), 3x3 and 5x5 stride 1 only"
    registry.register("conv2d_forward", _name, _forward(_name), source="cuda",
                      note=f"{_what}: {(_m + 2) ** 2} or {(_m + 4) ** 2} batched GEMMs on the tiled core, "
                           "fused bias+ReLU in the output transform")
    registry.register("conv2d_backward_data", _name, _backward_data(_name), source="cuda",
                      note=f"{_what}: the forward of dy with flipped/transposed weights")
    registry.register("conv2d_backward_weights", _name, _backward_weights(_name), source="cuda",
                      note=f"Winograd F(3x3,{_m}x{_m}) / F(5x5,{_m}x{_m}) over dy's tiles, stride 1, any padding: "
                           "batched GEMMs over the tiles, split for whole waves")
