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

Only 3x3 and 5x5 kernels, stride 1 and padding <= R-1 on every side:
anything else is a ``registry.NotApplicable`` (a ``ValueError``) that says why, raised
from the shapes alone before any GPU call (the ``auto`` variant skips a variant that
refuses a shape).  Workspaces come from ``cupy.empty`` (no host synchronisation:
capturable in a CUDA graph): E*C*K + E*T*C + E*T*K floats, E = (m+R-1)^2,
T = N * ceil(P/m) * ceil(Q/m) tiles.
Every function takes ``out=`` like conv.py's variants.
"""
from __future__ import annotations

import numpy as np

from .. import reference as _ref
from .. import registry
from . import _launch
from .conv import checked_backward_data, checked_forward
from .gemm import TILE_M, TILE_N, THREADS, cdiv, check_int32, grid_blocks

_FILE = "conv_winograd.cu"
NAME, NAME4 = "winograd", "winograd4"  # F(2x2,R x R), F(4x4,R x R), R = 3 or 5
VARIANTS = {NAME: 2, NAME4: 4}  # variant name -> output tile m
KERNEL_SIZES = (3, 5)
# (m, R) -> kernel name prefix in conv_winograd.cu
_PREFIX = {(2, 3): "winograd", (4, 3): "winograd4", (2, 5): "winograd5", (4, 5): "winograd5x4"}


def _refuse(name: str, what: str, w_shape, stride, padding) -> tuple:
    """(stride, padding, R) normalised; NotApplicable unless R x R with R = 3 or 5, stride 1,
    padding <= R-1."""
    stride, padding = _ref._pair(stride, "stride"), _ref._padding(padding)
    R, S = tuple(w_shape)[:2]
    if R != S or R not in KERNEL_SIZES:
        raise registry.NotApplicable(f"{name} {what} handles 3x3 and 5x5 kernels only (Winograd F(mxm,3x3) "
                                     f"and F(mxm,5x5)), got {R}x{S}; use the implicit_gemm variant")
    r = R
    if stride != (1, 1):
        raise registry.NotApplicable(f"{name} {what} handles stride 1 only, got stride {stride}; "
                                     "use the implicit_gemm variant")
    if max(padding) > r - 1:
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
    dev.launch("winograd_gemm", (cdiv(T, TILE_M), cdiv(K, TILE_N), E), (THREADS,),
               (V, U, M, i32(T), i32(C), i32(K), None, i32(0)))
    dev.launch(f"{prefix}_output_transform", (dev.blocks(T * K),), (THREADS,),
               (M, b, y, i32(N), i32(P), i32(Q), i32(K), i32(TH), i32(TW), i32(bool(relu))))


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


for _name, _m in VARIANTS.items():
    _what = f"Winograd F({_m}x{_m},3x3) / F({_m}x{_m},5x5), 3x3 and 5x5 stride 1 only"
    registry.register("conv2d_forward", _name, _forward(_name), source="cuda", default=False,
                      note=f"{_what}: {(_m + 2) ** 2} or {(_m + 4) ** 2} batched GEMMs on the tiled core, "
                           "fused bias+ReLU in the output transform")
    registry.register("conv2d_backward_data", _name, _backward_data(_name), source="cuda", default=False,
                      note=f"{_what}: the forward of dy with flipped/transposed weights")
