"""Max-pool variants (kernels/pool.cu): forward with a uint8 argmax, gather backward.

Variants, registered in ``fastcnn.kernels`` at import (no GPU needed to import):
  direct  one thread per output (forward) / input (backward) element, channel fastest
  vec4    the same, 4 channels per thread with 16-byte loads; falls back to ``direct``'s
          kernel when C % 4 != 0

Arguments follow the reference's rules and messages.  Both functions take an
optional keyword ``out=``: for the forward a pair ``(y, argmax)`` (float32 and
uint8 CuPy arrays of shape (N, P, Q, C)), for the backward dx (N, H, W, C).
The backward does not scan argmax for values outside the window (the reference
does, on the host); such entries simply match no position and add nothing.
"""
from __future__ import annotations

import numpy as np

from .. import reference as _ref
from .. import registry
from . import _launch
from .gemm import THREADS, check_int32, grid_blocks, out_array

_FILE = "pool.cu"
NAME_EXPRESSIONS = ("maxpool_fwd<1>", "maxpool_fwd<4>", "maxpool_bwd<1>", "maxpool_bwd<4>")


def _kernel(name: str):
    return _launch.function(_FILE, name, NAME_EXPRESSIONS)


def _geometry(x_shape, pool, stride, padding):
    (ph, pw), stride, padding = _ref._pool_args(pool, stride, padding)
    N, H, W, C = x_shape
    P, Q = _ref._output_size(H, W, ph, pw, stride, padding, "pool")
    check_int32(x_size=N * H * W * C, y_size=N * P * Q * C)
    top, _, left, _ = padding
    dims = tuple(np.int32(v) for v in (N, H, W, C, P, Q, ph, pw, stride[0], stride[1], top, left))
    return P, Q, dims


def _lanes(variant: str, C: int) -> int:
    return 4 if variant == "vec4" and C % 4 == 0 else 1


def _forward(variant: str):
    def maxpool_forward(x, pool, stride, padding, *, out=None):
        """(y, argmax): window maxima (N,P,Q,C) and their uint8 index r*pool_w + s."""
        _launch.check("x", x, ndim=4)
        N, H, W, C = x.shape
        P, Q, dims = _geometry(x.shape, pool, stride, padding)
        if out is None:
            out = (None, None)
        elif not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError("out must be a pair (y, argmax) for maxpool_forward")
        y = out_array("out[0] (y)", out[0], (N, P, Q, C))
        argmax = out_array("out[1] (argmax)", out[1], (N, P, Q, C), dtype=np.uint8)
        v = _lanes(variant, C)
        _kernel(f"maxpool_fwd<{v}>")((grid_blocks(y.size // v),), (THREADS,), (x, y, argmax) + dims)
        return y, argmax
    maxpool_forward.__name__ = maxpool_forward.__qualname__ = f"maxpool_forward_{variant}"
    return maxpool_forward


def _backward(variant: str):
    def maxpool_backward(dy, argmax, x_shape, pool, stride, padding, *, out=None):
        """dx (N,H,W,C): each input element sums dy over the windows whose argmax chose it."""
        _launch.check("dy", dy, ndim=4)
        _launch.check("argmax", argmax, dtype=np.uint8, ndim=4)
        N, H, W, C = _ref._shape4(x_shape, "x_shape")
        P, Q, dims = _geometry((N, H, W, C), pool, stride, padding)
        if dy.shape != (N, P, Q, C) or argmax.shape != dy.shape:
            raise ValueError(f"dy {dy.shape} and argmax {argmax.shape} must both have shape {(N, P, Q, C)}")
        dx = out_array("out", out, (N, H, W, C))
        v = _lanes(variant, C)
        _kernel(f"maxpool_bwd<{v}>")((grid_blocks(dx.size // v),), (THREADS,), (dy, argmax, dx) + dims)
        return dx
    maxpool_backward.__name__ = maxpool_backward.__qualname__ = f"maxpool_backward_{variant}"
    return maxpool_backward


registry.register("maxpool_forward", "direct", _forward("direct"), source="cuda",
                  note="one thread per output element, channel fastest (coalesced NHWC)")
registry.register("maxpool_forward", "vec4", _forward("vec4"), source="cuda", default=True,
                  note="4 channels per thread, float4 loads, uchar4 argmax (C % 4 == 0, else direct)")
registry.register("maxpool_backward", "direct", _backward("direct"), source="cuda",
                  note="gather: each input sums dy of the windows that chose it (no atomics)")
registry.register("maxpool_backward", "vec4", _backward("vec4"), source="cuda", default=True,
                  note="gather, 4 channels per thread, float4/uchar4 loads (C % 4 == 0, else direct)")
