"""Winograd convolution (kernels/conv_winograd.cu): forward and backward-data, fp32.

Variants, registered in ``fastcnn.kernels`` at import (no GPU needed):
  winograd    F(2x2, 3x3): 4x4 input tiles, 16 GEMMs; 2.25x fewer multiplications
  winograd4   F(4x4, 3x3): 6x6 input tiles, 36 GEMMs; 4x fewer, but ceil(P/4) tiles
              waste more on 13x13 maps and the transforms round more (still ~1e-6)
each with
  conv2d_forward        weight transform U = G g G^T, input transform V = B^T d B per
                        tile, batched GEMMs M[e] = V[e] @ U[e] on the tiled core of
                        gemm_tile.cuh, output transform A^T M A with fused bias + ReLU
  conv2d_backward_data  the same forward on dy with the weights flipped in (r, s) and
                        transposed in (C, K) (done inside the weight transform), padding
                        (2-top, 2-bottom, 2-left, 2-right), no bias or ReLU

Only 3x3 kernels, stride 1 and padding <= 2 on every side: anything else is a
``ValueError`` that says why, raised from the shapes alone before any GPU call
(the ``auto`` variant skips a variant that refuses a shape).  Workspaces come from
``cupy.empty`` (no host synchronisation: capturable in a CUDA graph):
E*C*K + E*T*C + E*T*K floats, E = (m+2)^2, T = N * ceil(P/m) * ceil(Q/m) tiles.
Every function takes ``out=`` like conv.py's variants.
"""
from __future__ import annotations

import numpy as np

from .. import reference as _ref
from .. import registry
from . import _launch
from .conv import _geometry
from .gemm import TILE_M, TILE_N, THREADS, cdiv, check_int32, grid_blocks, out_array

_FILE = "conv_winograd.cu"
NAME, NAME4 = "winograd", "winograd4"  # F(2x2,3x3), F(4x4,3x3)
_PREFIX = {2: "winograd", 4: "winograd4"}  # kernel name prefixes in conv_winograd.cu


def _refuse(name: str, what: str, w_shape, stride, padding) -> tuple:
    """(stride, padding) normalised; ValueError unless 3x3, stride 1, padding <= 2."""
    stride, padding = _ref._pair(stride, "stride"), _ref._padding(padding)
    R, S = tuple(w_shape)[:2]
    if (R, S) != (3, 3):
        raise registry.NotApplicable(f"{name} {what} handles 3x3 kernels only (Winograd F(mxm,3x3)), got {R}x{S}; "
                         "use the implicit_gemm variant")
    if stride != (1, 1):
        raise registry.NotApplicable(f"{name} {what} handles stride 1 only, got stride {stride}; "
                         "use the implicit_gemm variant")
    if max(padding) > 2:
        raise registry.NotApplicable(f"{name} {what} handles padding up to 2 per side (3x3 kernel), "
                         f"got {padding}; use the implicit_gemm variant")
    return stride, padding


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


_DEVICE = _Cuda  # the tests' CPU emulation of the kernels swaps this (and the array checks)


def run(dev, x, w, b, y, N, H, W, C, K, P, Q, pt, pl, relu, flip, m=2) -> None:
    """y (N,P,Q,K) = relu?(conv3x3(x (N,H,W,C), g) + b), stride 1, padding top pt / left pl,
    by Winograd F(m x m, 3x3), m = 2 or 4.

    g is w (3,3,C,K) (flip False) or w (3,3,K,C) flipped in (r, s) (flip True).  ``dev``
    supplies empty(n), launch(name, grid, block, args) and blocks(n): _Cuda, or a CPU
    emulation of the kernels.  Shapes already checked by the caller.
    """
    prefix = _PREFIX[m]
    E = (m + 2) ** 2  # transformed tile elements = number of GEMMs
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


def _forward(m: int, name: str):
    def conv2d_forward(x, w, b, stride, padding, relu, *, out=None):
        """y (N,P,Q,K) = x (N,H,W,C) * w (3,3,C,K) + b, ReLU if relu; stride 1 only."""
        w_shape = _shape_of("w", w)
        stride, padding = _refuse(name, "conv2d_forward", w_shape, stride, padding)
        _launch.check("x", x, ndim=4)
        _launch.check("w", w, ndim=4)
        N, H, W, C = x.shape
        _, _, Cw, K = w.shape
        if Cw != C:
            raise ValueError(f"channel mismatch: x has {C} channels (NHWC, last axis) but w expects "
                             f"{Cw} (HWIO {w.shape}); is x laid out NCHW?")
        if b is not None:
            _launch.check("b", b, ndim=1)
            if b.shape[0] != K:
                raise ValueError(f"bias length {b.shape[0]} does not match the {K} output channels of w")
        stride, padding, P, Q = _geometry(x.shape, w.shape, stride, padding)
        y = out_array("out", out, (N, P, Q, K))
        run(_DEVICE, x, w, b, y, N, H, W, C, K, P, Q, padding[0], padding[2], relu, flip=False, m=m)
        return y
    conv2d_forward.__name__ = conv2d_forward.__qualname__ = f"conv2d_forward_{name}"
    return conv2d_forward


def _backward_data(m: int, name: str):
    def conv2d_backward_data(dy, w, x_shape, stride, padding, *, out=None):
        """dx (N,H,W,C) from dy (N,P,Q,K) and w (3,3,C,K): the forward of dy with w flipped and
        transposed, padding (2-top, 2-bottom, 2-left, 2-right); stride 1 only."""
        w_shape = _shape_of("w", w)
        stride, padding = _refuse(name, "conv2d_backward_data", w_shape, stride, padding)
        _launch.check("dy", dy, ndim=4)
        _launch.check("w", w, ndim=4)
        N, H, W, C = _ref._shape4(x_shape, "x_shape")
        _, _, Cw, K = w.shape
        if Cw != C:
            raise ValueError(f"channel mismatch: x_shape has {C} channels but w expects {Cw} (HWIO {w.shape})")
        stride, padding, P, Q = _geometry((N, H, W, C), w.shape, stride, padding)
        if dy.shape != (N, P, Q, K):
            raise ValueError(f"dy has shape {dy.shape}, expected {(N, P, Q, K)} for x_shape {tuple(x_shape)}")
        dx = out_array("out", out, (N, H, W, C))
        top, _, left, _ = padding
        # dx = conv(dy (N,P,Q,K), flipped w^T (3,3,K,C)), padding (2-top, .., 2-left, ..), output H x W.
        run(_DEVICE, dy, w, None, dx, N, P, Q, K, C, H, W, 2 - top, 2 - left, False, flip=True, m=m)
        return dx
    conv2d_backward_data.__name__ = conv2d_backward_data.__qualname__ = f"conv2d_backward_data_{name}"
    return conv2d_backward_data


for _m, _name in ((2, NAME), (4, NAME4)):
    _what = f"Winograd F({_m}x{_m},3x3), 3x3 stride 1 only"
    registry.register("conv2d_forward", _name, _forward(_m, _name), source="cuda", default=False,
                      note=f"{_what}: {(_m + 2) ** 2} batched GEMMs on the tiled core, "
                           "fused bias+ReLU in the output transform")
    registry.register("conv2d_backward_data", _name, _backward_data(_m, _name), source="cuda", default=False,
                      note=f"{_what}: the forward of dy with flipped/transposed weights")
