"""Max-pool variants (kernels/pool.cu): forward with a uint8 argmax, gather backward.

Variants, registered in ``fastcnn.kernels`` at import (no GPU needed to import):
  direct  one thread per output (forward) / input (backward) element, channel fastest
  vec4    the same, 4 channels per thread with 16-byte loads; falls back to ``direct``'s
          kernel when C % 4 != 0 (or a tensor is not 16-byte aligned)
  tiled   window and stride compiled in (2x2/2, 3x3/2, 3x3/1, 2x2/1; see TILES), V = 4, 2
          or 1 channels per thread (C % 4, C % 2, alignment); forward: each thread a block
          of adjacent outputs sharing the overlapping input, loaded once; backward: each
          thread a stride-aligned tile of input pixels, reading dy/argmax of the windows
          that cover it once.  Other windows: the generic kernel with V = 4, 2 or 1.
  vec8    forward only: window and stride compiled in (VEC8), one output x 8 channels per
          thread (two float4 per tap, unrolled); C % 8 or
          alignment or other windows: vec4's kernels.
  vec8x2  vec8 with two adjacent outputs per thread (1 x 2), which share a column of their
          windows (3x3/2: 15 input pixels for 2 outputs instead of 18).
  smem    forward only: window and stride compiled in (SMEM); a block of TP*TQ*8 threads
          stages a TP x TQ output tile's input band (all its rows and columns, 32
          channels) in shared memory with coalesced 16-byte loads, each input element read
          once per tile, then computes one float4 of outputs per thread from shared memory.
          C % 4 == 0 and 16-byte aligned x, y; otherwise (and for other windows) tiled's
          kernels.

Element types: every variant but smem takes float32 and bfloat16 (the kernels are templates
over float / __nv_bfloat16, instances picked by x's or dy's dtype: ``CTYPES``); smem is
float32 only.  A bfloat16 thread moves 2 * lanes bytes, so the alignment a lane count needs
is the element size times the lanes.

Arguments follow the reference's rules and messages.  Both functions take an
optional keyword ``out=``: for the forward a pair ``(y, argmax)`` (float32 and
uint8 CuPy arrays of shape (N, P, Q, C)), for the backward dx (N, H, W, C).
The backward does not scan argmax for values outside the window (the reference
does, on the host); such entries simply match no position and add nothing.

Per-call host cost: the geometry, kernel and grid of a (variant, shape, pool, stride,
padding, device) are worked out once and cached (``_plan``), so a repeated call does the
argument checks, the allocation and the launch only.
"""
from __future__ import annotations

import numpy as np

from ... import dtypes
from .. import checks, registry
from ..checks import cdiv, check_int32
from . import _launch
from ._launch import out_array
from .gemm import THREADS, grid_blocks

_FILE = "pool.cu"
# The C++ element type of each dtype the kernels take (keep in step with POOL_TYPED of pool.cu).
CTYPES = {"float32": "float", "bfloat16": "__nv_bfloat16"}
GENERIC_LANES = (1, 2, 4)
# (ph, pw, sh, sw) -> (forward outputs per thread OH, OW; backward tiles per thread BH, BW).
# Keep in step with the FASTCNN_INSTANTIATE block of kernels/pool.cu.
TILES = {
    (2, 2, 2, 2): (1, 2, 1, 2),   # LeNet: 2 outputs / 2x4 pixels (one window per 2x2) per thread
    (3, 3, 2, 2): (2, 2, 1, 2),   # AlexNet: 5x5 inputs for 2x2 outputs / 2x4 pixels from 2x3 windows
    (3, 3, 1, 1): (1, 2, 1, 2),
    (2, 2, 1, 1): (1, 2, 1, 2),
}


def _fwd_tile_name(t, v, ph, pw, sh, sw, oh, ow):
    return f"maxpool_fwd_tile<{t}, {v}, {ph}, {pw}, {sh}, {sw}, {oh}, {ow}>"


def _bwd_tile_name(t, v, ph, pw, sh, sw, bh, bw):
    return f"maxpool_bwd_tile<{t}, {v}, {ph}, {pw}, {sh}, {sw}, {bh}, {bw}>"


# Windows with vec8 forward instances (maxpool_fwd_tile<8, ph, pw, sh, sw, OH, OW>; POOL_VEC8),
# and the outputs per thread (OH, OW) of each vec8 variant.
VEC8 = ((2, 2, 2, 2), (3, 3, 2, 2), (3, 3, 1, 1), (2, 2, 1, 1))
VEC8_OUTPUTS = {"vec8": (1, 1), "vec8x2": (1, 2)}

# (ph, pw, sh, sw) -> (TP, TQ): the smem forward's output tile per block (TP*TQ*8 threads).
# Keep in step with the FASTCNN_INSTANTIATE block of kernels/pool.cu (POOL_SMEM).
SMEM = {
    (2, 2, 2, 2): (4, 8),         # 8x16 pixels x 32 channels = 16 KB per block
    (3, 3, 2, 2): (4, 8),         # 9x17 pixels x 32 channels = 19.6 KB per block
    (3, 3, 1, 1): (4, 8),
    (2, 2, 1, 1): (4, 8),
}
SMEM_CHANNELS = 32                # channels per block (8 float4 chunks)


def _fwd_smem_name(ph, pw, sh, sw, tp, tq):
    return f"maxpool_fwd_smem<{ph}, {pw}, {sh}, {sw}, {tp}, {tq}>"


NAME_EXPRESSIONS = tuple(
    [f"maxpool_{d}<{t}, {v}>" for t in CTYPES.values() for v in GENERIC_LANES for d in ("fwd", "bwd")]
    + [name for t in CTYPES.values() for (ph, pw, sh, sw), (oh, ow, bh, bw) in TILES.items() for v in (1, 2, 4)
       for name in (_fwd_tile_name(t, v, ph, pw, sh, sw, oh, ow), _bwd_tile_name(t, v, ph, pw, sh, sw, bh, bw))]
    + [_fwd_tile_name(t, 8, ph, pw, sh, sw, oh, ow) for t in CTYPES.values() for (ph, pw, sh, sw) in VEC8
       for oh, ow in VEC8_OUTPUTS.values()]
    + [_fwd_smem_name(ph, pw, sh, sw, tp, tq) for (ph, pw, sh, sw), (tp, tq) in SMEM.items()])


def _kernel(name: str):
    return _launch.function(_FILE, name, NAME_EXPRESSIONS)


def _geometry(x_shape, pool, stride, padding):
    (ph, pw), stride, padding, P, Q = checks.pool_geometry(x_shape, pool, stride, padding)
    N, H, W, C = x_shape
    check_int32(x_size=N * H * W * C, y_size=N * P * Q * C)
    top, _, left, _ = padding
    dims = tuple(np.int32(v) for v in (N, H, W, C, P, Q, ph, pw, stride[0], stride[1], top, left))
    return P, Q, dims


# The element types each variant takes: smem's kernel is float32 only.
DTYPES = {variant: ("float32", "bfloat16") for variant in ("direct", "vec4", "tiled", "vec8", "vec8x2")}
DTYPES["smem"] = ("float32",)

# Channels per thread each variant may use, widest first (C and alignment pick among them).
LANES = {"direct": (1,), "vec4": (4, 1), "tiled": (4, 2, 1), "smem": (4, 2, 1), "vec8": (8, 4, 1),
         "vec8x2": (8, 4, 1)}


def _plan(variant: str, forward: bool, x_shape, pool, stride, padding, dtype="float32"):
    """(P, Q, {lanes: (kernel, blocks, threads)} widest first, dims): all a launch needs but
    the arrays, for elements of ``dtype`` ('float32' or 'bfloat16').

    Lanes that C allows are all listed; ``_launch_plan`` takes the widest one whose
    alignment every array meets (a view may start at any 4-byte address)."""
    N, H, W, C = x_shape
    P, Q, dims = _geometry(x_shape, pool, stride, padding)
    ph, pw, sh, sw, top, left = (int(d) for d in dims[6:])
    t = CTYPES[dtype]
    tile = TILES.get((ph, pw, sh, sw)) if variant in ("tiled", "smem") else None
    smem = SMEM.get((ph, pw, sh, sw)) if variant == "smem" and forward else None
    kernels = {}
    for lanes in LANES[variant]:
        if C % lanes:
            continue
        threads = THREADS
        if lanes == 8:
            if not forward or (ph, pw, sh, sw) not in VEC8:
                continue                      # vec4's kernels below
            oh, ow = VEC8_OUTPUTS[variant]
            items = N * cdiv(P, oh) * cdiv(Q, ow) * (C // 8)
            name = _fwd_tile_name(t, 8, ph, pw, sh, sw, oh, ow)
        elif smem is not None and lanes == 4:
            tp, tq = smem
            threads = tp * tq * (SMEM_CHANNELS // 4)
            items = N * cdiv(P, tp) * cdiv(Q, tq) * cdiv(C, SMEM_CHANNELS) * threads
            name = _fwd_smem_name(ph, pw, sh, sw, tp, tq)
        elif tile is None:
            items = (N * P * Q if forward else N * H * W) * (C // lanes)
            name = f"maxpool_{'fwd' if forward else 'bwd'}<{t}, {lanes}>"
        elif forward:
            oh, ow = tile[:2]
            items = N * cdiv(P, oh) * cdiv(Q, ow) * (C // lanes)
            name = _fwd_tile_name(t, lanes, ph, pw, sh, sw, oh, ow)
        else:
            bh, bw = tile[2:]
            items = N * cdiv(H + top, bh * sh) * cdiv(W + left, bw * sw) * (C // lanes)
            name = _bwd_tile_name(t, lanes, ph, pw, sh, sw, bh, bw)
        check_int32(threads=items)
        kernels[lanes] = (_kernel(name), grid_blocks(items, threads), threads)
    return P, Q, kernels, dims


_PLANS: dict = {}


def _hashable(v) -> bool:
    """True for an int or a flat tuple of ints (bools and lists excluded): safe cache keys."""
    if type(v) is int:
        return True
    return type(v) is tuple and all(type(e) is int for e in v)


def _cached_plan(variant, forward, x_shape, pool, stride, padding, dtype="float32"):
    if not (_hashable(pool) and _hashable(stride) and _hashable(padding)):
        return _plan(variant, forward, x_shape, pool, stride, padding, dtype)
    key = (variant, forward, x_shape, pool, stride, padding, dtype, _device())
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        plan = _PLANS[key] = _plan(variant, forward, x_shape, pool, stride, padding, dtype)
    return plan


def _device() -> int:
    import cupy as cp
    return cp.cuda.runtime.getDevice()


def _ptr(a) -> int:
    return a.data.ptr


def _launch_plan(kernels, arrays):
    """(kernel, blocks, threads): the widest lanes every array's address allows (element size *
    lanes bytes: 4*lanes for float32, 2*lanes for bfloat16, lanes for argmax; CuPy's own
    allocations are 256-byte aligned)."""
    for lanes, launch in kernels.items():  # widest first
        if lanes == 1 or all(_ptr(a) % (n * lanes) == 0 for a, n in arrays):
            return launch
    raise AssertionError("unreachable: lanes = 1 is always planned")


def _element_type(name, a, variant):
    """a's dtype name after _launch.check: float32, or bfloat16 for variants that take it."""
    dtype = getattr(a, "dtype", None)
    takes = DTYPES[variant]
    _launch.check(name, a, dtype=dtype if dtype in [dtypes.NAMES[d] for d in takes] else np.float32, ndim=4)
    return dtypes.name(a.dtype)


def _forward(variant: str):
    def maxpool_forward(x, pool, stride, padding, *, out=None):
        """(y, argmax): window maxima (N,P,Q,C) and their uint8 index r*pool_w + s."""
        dtype = _element_type("x", x, variant)
        N, H, W, C = x.shape
        P, Q, kernels, dims = _cached_plan(variant, True, x.shape, pool, stride, padding, dtype)
        out = checks.out_pair(out, "(y, argmax)")
        y = out_array("out[0] (y)", out[0], (N, P, Q, C), dtype=x.dtype)
        argmax = out_array("out[1] (argmax)", out[1], (N, P, Q, C), dtype=np.uint8)
        size = x.dtype.itemsize
        kernel, blocks, threads = _launch_plan(kernels, ((x, size), (y, size), (argmax, 1)))
        kernel((blocks,), (threads,), (x, y, argmax) + dims)
        return y, argmax
    maxpool_forward.__name__ = maxpool_forward.__qualname__ = f"maxpool_forward_{variant}"
    return maxpool_forward


def _backward(variant: str):
    def maxpool_backward(dy, argmax, x_shape, pool, stride, padding, *, out=None):
        """dx (N,H,W,C): each input element sums dy over the windows whose argmax chose it."""
        dtype = _element_type("dy", dy, variant)
        _launch.check("argmax", argmax, dtype=np.uint8, ndim=4)
        N, H, W, C = x_shape = checks.shape4(x_shape, "x_shape")
        P, Q, kernels, dims = _cached_plan(variant, False, x_shape, pool, stride, padding, dtype)
        checks.pool_grad_shapes(dy.shape, argmax.shape, (N, P, Q, C))
        dx = out_array("out", out, (N, H, W, C), dtype=dy.dtype)
        size = dy.dtype.itemsize
        kernel, blocks, threads = _launch_plan(kernels, ((dy, size), (argmax, 1), (dx, size)))
        kernel((blocks,), (threads,), (dy, argmax, dx) + dims)
        return dx
    maxpool_backward.__name__ = maxpool_backward.__qualname__ = f"maxpool_backward_{variant}"
    return maxpool_backward


registry.register("maxpool_forward", "direct", _forward("direct"), source="cuda", dtypes=DTYPES["direct"],
                  note="one thread per output element, channel fastest (coalesced NHWC)")
registry.register("maxpool_forward", "vec4", _forward("vec4"), source="cuda", dtypes=DTYPES["vec4"],
                  note="4 channels per thread, float4 loads, uchar4 argmax (C % 4 == 0, else direct)")
registry.register("maxpool_forward", "tiled", _forward("tiled"), source="cuda", dtypes=DTYPES["tiled"],
                  note="window compiled in; 2x2 (3x3/2) or 1x2 adjacent outputs x 4/2/1 channels per "
                       "thread, shared input loaded once; other windows: generic, 4/2/1 channels")
registry.register("maxpool_forward", "vec8", _forward("vec8"), source="cuda", dtypes=DTYPES["vec8"],
                  note="window compiled in; 1 output x 8 channels per thread, 2 float4 loads per tap, "
                       "uint2 argmax (C % 8, alignment, other windows: vec4's)")
registry.register("maxpool_forward", "vec8x2", _forward("vec8x2"), source="cuda", dtypes=DTYPES["vec8x2"],
                  note="vec8 with 2 adjacent outputs per thread sharing a window column (3x3/2: 15 "
                       "input pixels for 2 outputs, not 18); else vec4's")
registry.register("maxpool_forward", "smem", _forward("smem"), source="cuda", dtypes=DTYPES["smem"],
                  note="window compiled in; a block stages its 4x8-output tile's input band x 32 channels "
                       "in shared memory (coalesced 16-byte loads, each element once), 1 float4 per thread; "
                       "C % 4 or alignment: tiled's kernels")
registry.register("maxpool_backward", "direct", _backward("direct"), source="cuda", dtypes=DTYPES["direct"],
                  note="gather: each input sums dy of the windows that chose it (no atomics)")
registry.register("maxpool_backward", "vec4", _backward("vec4"), source="cuda", dtypes=DTYPES["vec4"],
                  note="gather, 4 channels per thread, float4/uchar4 loads (C % 4 == 0, else direct)")
registry.register("maxpool_backward", "tiled", _backward("tiled"), source="cuda", dtypes=DTYPES["tiled"],
                  note="gather over a stride-aligned tile of input pixels x 4/2/1 channels; dy/argmax "
                       "of the covering windows read once; window compiled in (else generic)")
