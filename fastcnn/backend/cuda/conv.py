"""Convolution variants (kernels/conv.cu): forward, backward-data, backward-weights.

Variants, registered in ``fastcnn.kernels`` at import (no GPU needed to import):
  im2col          explicit im2col buffer (our kernel), our tiled GEMM, fused bias+ReLU
                  epilogue; dgrad is a GEMM into column gradients then a col2im gather
  implicit_gemm   no buffer: the GEMM tiles are gathered from the NHWC tensors on the
                  fly (docs/cuda_kernels.md, section 0); forward fuses bias+ReLU; wgrad is
                  split-K with a deterministic reduce; 128 x 128 block tiles
  implicit_gemm96 the same kernels with 128 x 96 tiles (6 columns a thread instead of
                  8): for 96 output channels (AlexNet conv1) a 128-wide tile idles a
                  quarter of its FMAs; fewer registers also let two blocks share an SM
  implicit_gemm_db, implicit_gemm96_db  the same two with two shared buffers in the
                  main loop (one barrier per K slice instead of two)

Arguments are validated with the reference backend's own rules (same messages),
then checked for device/dtype/contiguity before any launch.  Every function
takes an optional keyword ``out=`` (C-contiguous float32 CuPy array of the
result's shape) to write into a caller-owned buffer.
"""
from __future__ import annotations

import numpy as np

from .. import checks, registry
from ..checks import cdiv, check_int32
from . import _launch
from ._launch import out_array
from .gemm import THREADS, TILE_M, grid_blocks, launch_gemm, split_k_plan

_FILE = "conv.cu"
# Per variant: columns a thread computes (the GEMM N tile is 64 + 16 * (TN - 4) wide) and
# shared buffers of the main loop (1, or 2: one barrier per K slice).
# Keep in step with the FASTCNN_INSTANTIATE block of kernels/conv.cu.
_TILES = {"implicit_gemm": (8, 1), "implicit_gemm96": (6, 1),
          "implicit_gemm_db": (8, 2), "implicit_gemm96_db": (6, 2)}


def _template(kind: str, tn: int, stages: int) -> str:
    return f"conv_{kind}_implicit<{tn}>" if stages == 1 else f"conv_{kind}_implicit<{tn}, {stages}>"


NAME_EXPRESSIONS = tuple(_template(kind, tn, st) for kind in ("fprop", "dgrad", "wgrad")
                         for tn, st in sorted(set(_TILES.values())))


def _kernel(name: str):
    return _launch.function(_FILE, name, NAME_EXPRESSIONS)


def _implicit(kind: str, variant: str):
    """(kernel, N-tile width, threads a block) of an implicit-GEMM variant; ``kind`` is
    fprop, dgrad or wgrad.  Every such kernel takes conv.cu's arguments and 128-row tiles."""
    tn, stages = _TILES[variant]
    return _kernel(_template(kind, tn, stages)), 64 + 16 * (tn - 4), THREADS


def _dims(N, H, W, C, K, R, S, P, Q, stride, padding):
    """The int32 shape tail every conv.cu kernel takes."""
    check_int32(x_size=N * H * W * C, y_size=N * P * Q * K, w_size=R * S * C * K)
    top, _, left, _ = padding
    return tuple(np.int32(v) for v in (N, H, W, C, K, R, S, P, Q, stride[0], stride[1], top, left))


def checked_forward(x, w, b, stride, padding, out, dtype=np.float32):
    """Validate a forward call; returns (shape facts, y, dims) with y the output buffer."""
    _launch.check("x", x, dtype=dtype, ndim=4)
    _launch.check("w", w, dtype=dtype, ndim=4)
    N, H, W, C = x.shape
    R, S, _, K = w.shape
    stride, padding, P, Q = checks.conv_geometry(x.shape, w.shape, stride, padding)
    if b is not None:
        _launch.check("b", b, ndim=1)
        checks.bias_length(b.shape[0], K, "output channels of w")
    y = out_array("out", out, (N, P, Q, K), dtype=dtype)
    return (N, H, W, C, K, R, S, P, Q, stride, padding), y, _dims(N, H, W, C, K, R, S, P, Q, stride, padding)


def checked_backward_data(dy, w, x_shape, stride, padding, out, dtype=np.float32):
    """Validate a backward-data call; returns (shape facts, dx, dims)."""
    _launch.check("dy", dy, dtype=dtype, ndim=4)
    _launch.check("w", w, dtype=dtype, ndim=4)
    N, H, W, C = x_shape = checks.shape4(x_shape, "x_shape")
    R, S, _, K = w.shape
    stride, padding, P, Q = checks.conv_geometry(x_shape, w.shape, stride, padding, x_name="x_shape")
    checks.expect_shape("dy", dy.shape, (N, P, Q, K))
    dx = out_array("out", out, (N, H, W, C), dtype=dtype)
    return (N, H, W, C, K, R, S, P, Q, stride, padding), dx, _dims(N, H, W, C, K, R, S, P, Q, stride, padding)


def checked_backward_weights(x, dy, w_shape, stride, padding, out, dtype=np.float32):
    """Validate a backward-weights call; returns (shape facts, dw, dims)."""
    _launch.check("x", x, dtype=dtype, ndim=4)
    _launch.check("dy", dy, dtype=dtype, ndim=4)
    R, S, C, K = w_shape = checks.shape4(w_shape, "w_shape")
    N, H, W, _ = x.shape
    stride, padding, P, Q = checks.conv_geometry(x.shape, w_shape, stride, padding, w_name="w_shape")
    checks.expect_shape("dy", dy.shape, (N, P, Q, K))
    dw = out_array("out", out, (R, S, C, K))
    return (N, H, W, C, K, R, S, P, Q, stride, padding), dw, _dims(N, H, W, C, K, R, S, P, Q, stride, padding)


def _im2col(x, N, H, W, C, R, S, P, Q, dims):
    import cupy as cp
    check_int32(im2col_size=N * P * Q * R * S * C)
    col = cp.empty((N * P * Q, R * S * C), dtype=np.float32)
    _kernel("conv_im2col")((grid_blocks(col.size),), (THREADS,), (x, col) + dims)
    return col


def _forward(variant: str, implicit=_implicit, dtype=np.float32):
    def conv2d_forward(x, w, b, stride, padding, relu, *, out=None):
        """y (N,P,Q,K) = x (N,H,W,C) * w (R,S,C,K) + b, ReLU if relu."""
        (N, H, W, C, K, R, S, P, Q, _, _), y, dims = checked_forward(x, w, b, stride, padding, out, dtype)
        relu = bool(relu)
        if variant == "im2col":
            col = _im2col(x, N, H, W, C, R, S, P, Q, dims)
            launch_gemm("tiled", col, w, y, N * P * Q, K, R * S * C, False, False, bias=b, relu=relu)
        else:
            kernel, tile_n, threads = implicit("fprop", variant)
            grid = (cdiv(N * P * Q, TILE_M), cdiv(K, tile_n))
            kernel(grid, (threads,), (x, w, b, y) + dims + (np.int32(relu),))
        return y
    conv2d_forward.__name__ = conv2d_forward.__qualname__ = f"conv2d_forward_{variant}"
    return conv2d_forward


def _backward_data(variant: str, implicit=_implicit, dtype=np.float32):
    def conv2d_backward_data(dy, w, x_shape, stride, padding, *, out=None):
        """dx (N,H,W,C) from dy (N,P,Q,K) and w (R,S,C,K)."""
        (N, H, W, C, K, R, S, P, Q, _, _), dx, dims = checked_backward_data(dy, w, x_shape, stride, padding, out,
                                                                            dtype)
        if variant == "im2col":
            import cupy as cp
            check_int32(im2col_size=N * P * Q * R * S * C)
            dcol = cp.empty((N * P * Q, R * S * C), dtype=np.float32)
            # dcol (NPQ x RSC) = dy (NPQ x K) @ w^T, w viewed as (RSC x K)
            launch_gemm("tiled", dy, w, dcol, N * P * Q, R * S * C, K, False, True)
            _kernel("conv_col2im")((grid_blocks(dx.size),), (THREADS,), (dcol, dx) + dims)
        else:
            kernel, tile_n, threads = implicit("dgrad", variant)
            grid = (cdiv(N * H * W, TILE_M), cdiv(C, tile_n))
            kernel(grid, (threads,), (dy, w, dx) + dims)
        return dx
    conv2d_backward_data.__name__ = conv2d_backward_data.__qualname__ = f"conv2d_backward_data_{variant}"
    return conv2d_backward_data


def _backward_weights(variant: str, implicit=_implicit, dtype=np.float32):
    def conv2d_backward_weights(x, dy, w_shape, stride, padding, *, out=None):
        """dw (R,S,C,K) = patches(x)^T @ dy, summed over N*P*Q in a fixed order."""
        import cupy as cp
        (N, H, W, C, K, R, S, P, Q, _, _), dw, dims = checked_backward_weights(x, dy, w_shape, stride, padding, out,
                                                                               dtype)
        M, KG = R * S * C, N * P * Q
        if variant == "im2col":
            col = _im2col(x, N, H, W, C, R, S, P, Q, dims)
            # dw (RSC x K) = col^T @ dy, col stored (NPQ x RSC)
            launch_gemm("tiled", col, dy, dw, M, K, KG, True, False)
            return dw
        kernel, tile_n, threads = implicit("wgrad", variant)
        splits, kchunk = split_k_plan(M, K, KG, tile_n=tile_n)
        grid = (cdiv(M, TILE_M), cdiv(K, tile_n), splits)
        if splits == 1:
            kernel(grid, (threads,), (x, dy, dw) + dims + (np.int32(kchunk),))
            return dw
        check_int32(workspace=splits * M * K)
        ws = cp.empty(splits * M * K, dtype=np.float32)
        kernel(grid, (threads,), (x, dy, ws) + dims + (np.int32(kchunk),))
        _kernel("gemm_splitk_reduce")((grid_blocks(M * K),), (THREADS,),
                                      (ws, dw, np.int32(M), np.int32(K), np.int32(splits), None, np.int32(0)))
        return dw
    conv2d_backward_weights.__name__ = conv2d_backward_weights.__qualname__ = \
        f"conv2d_backward_weights_{variant}"
    return conv2d_backward_weights


_NOTES = {
    "im2col": "explicit im2col buffer (R*S x the input) + tiled GEMM{}",
    "implicit_gemm": "implicit GEMM: tiles gathered from NHWC on the fly, no buffer{}",
    "implicit_gemm96": "implicit GEMM with 128x96 tiles (96 output channels), 2 blocks/SM{}",
    "implicit_gemm_db": "implicit_gemm with two shared buffers, one barrier per K slice{}",
    "implicit_gemm96_db": "implicit_gemm96 with two shared buffers, one barrier per K slice{}",
}
for _variant in _NOTES:
    registry.register("conv2d_forward", _variant, _forward(_variant), source="cuda",
                      note=_NOTES[_variant].format(", fused bias+ReLU"))
    registry.register("conv2d_backward_data", _variant, _backward_data(_variant), source="cuda",
                      note=_NOTES[_variant].format(" (NT GEMM + col2im gather)" if _variant == "im2col"
                                                   else "; taps off the stride grid load zeros but still cost FMAs"))
    registry.register("conv2d_backward_weights", _variant, _backward_weights(_variant), source="cuda",
                      note=_NOTES[_variant].format(", split-K with ordered reduce"))
