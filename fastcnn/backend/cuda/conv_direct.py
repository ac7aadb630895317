"""Direct convolution variants (kernels/conv_direct.cu) for small channel counts.

Variant ``direct``, registered in ``fastcnn.kernels`` at import (never the default;
no GPU needed to import) for
  conv2d_forward           thread per output pixel, a chunk of K in registers, weights
                           staged in shared memory, fused bias+ReLU
  conv2d_backward_data     thread per input pixel, a chunk of C; each tap's output
                           position computed (stride must divide), sum over K
  conv2d_backward_weights  deterministic two passes: blocks over chunks of the N*P*Q
                           positions write partial dw slices to a workspace, then a
                           fixed-order reduce (one pass when a single chunk suffices)

Correct for any shape; meant for LeNet-like layers (R*S*C, K and C small), slow for
wide layers.  Arguments are validated exactly as in conv.py (its helpers, same
messages) before any launch; every function takes ``out=`` like conv.py's.  The
chunk sizes depend only on the shape and the card's SM count, and the chunk of
channels never changes a result's bits (each output sums the same terms in the
same order whatever the chunk).
"""
from __future__ import annotations

import numpy as np

from .. import registry
from . import _launch
from .conv import checked_backward_data, checked_backward_weights, checked_forward
from ..checks import cdiv, check_int32
from .gemm import sm_count

_FILE = "conv_direct.cu"
CHUNKS = (4, 8, 16)  # channel chunks the templates are instantiated for
NAME_EXPRESSIONS = tuple(f"conv_direct_{kind}<{v}>" for kind in ("fprop", "dgrad", "wgrad") for v in CHUNKS)
THREADS = 128          # FC_DIRECT_THREADS: fprop / dgrad block
WGRAD_THREADS = 256    # FC_WGRAD_THREADS: most threads of a wgrad pass-1 block
WGRAD_ROWS = 128       # most rows of R*S*C per wgrad block
REDUCE_THREADS = 256   # FC_REDUCE_THREADS: wgrad reduce block
_GRID_YZ_MAX = 65535


def _kernel(name: str):
    return _launch.function(_FILE, name, NAME_EXPRESSIONS)


def _chunk(channels: int) -> int:
    """Smallest instantiated chunk that holds ``channels`` (16 for more)."""
    return next((v for v in CHUNKS if channels <= v), CHUNKS[-1])


def _pixel_plan(pixels: int, channels: int) -> int:
    """Channel chunk for a thread-per-pixel kernel: as wide as the channels, narrower while
    the grid has fewer than ~2 blocks per SM (more threads, each re-reading its taps)."""
    chunk = _chunk(channels)
    target = 2 * sm_count()
    while chunk > CHUNKS[0] and cdiv(pixels, THREADS) * cdiv(channels, chunk) < target:
        chunk //= 2
    if cdiv(channels, chunk) > _GRID_YZ_MAX:
        raise ValueError(f"{channels} channels need {cdiv(channels, chunk)} blocks along grid y "
                         f"(at most {_GRID_YZ_MAX})")
    return chunk


def wgrad_plan(RSC: int, K: int, NPQ: int, sms: int):
    """(KC, TR, JL, row_tiles, k_tiles, chunks, chunk) of conv_direct_wgrad for one shape.

    TR rows of R*S*C (a multiple of 32) times JL position lanes per block; the N*P*Q
    positions split into ``chunks`` contiguous runs of ``chunk`` (none empty) so that
    the grid has about 4 blocks per SM, each lane keeping at least ~16 positions.
    """
    KC = _chunk(K)
    row_tiles = cdiv(RSC, WGRAD_ROWS)
    TR = cdiv(cdiv(RSC, row_tiles), 32) * 32
    JL = max(1, WGRAD_THREADS // TR)
    k_tiles = cdiv(K, KC)
    tiles = row_tiles * k_tiles
    chunks = max(1, min(cdiv(4 * sms, tiles), cdiv(NPQ, 16 * JL), _GRID_YZ_MAX))
    chunk = cdiv(NPQ, chunks)
    chunks = cdiv(NPQ, chunk)
    return KC, TR, JL, row_tiles, k_tiles, chunks, chunk


def reduce_lanes(chunks: int) -> int:
    """Lanes per output of conv_direct_wgrad_reduce: a power of two, 1 to 32, each lane
    summing about 4 or more chunks (few chunks: more outputs per block instead)."""
    lanes = 1
    while lanes < 32 and 8 * lanes <= chunks:
        lanes *= 2
    return lanes


def conv2d_forward(x, w, b, stride, padding, relu, *, out=None):
    """y (N,P,Q,K) = x (N,H,W,C) * w (R,S,C,K) + b, ReLU if relu."""
    (N, H, W, C, K, R, S, P, Q, _, _), y, dims = checked_forward(x, w, b, stride, padding, out)
    kc = _pixel_plan(N * P * Q, K)
    grid = (cdiv(N * P * Q, THREADS), cdiv(K, kc))
    _kernel(f"conv_direct_fprop<{kc}>")(grid, (THREADS,), (x, w, b, y) + dims + (np.int32(bool(relu)),))
    return y


def conv2d_backward_data(dy, w, x_shape, stride, padding, *, out=None):
    """dx (N,H,W,C) from dy (N,P,Q,K) and w (R,S,C,K)."""
    (N, H, W, C, K, R, S, P, Q, _, _), dx, dims = checked_backward_data(dy, w, x_shape, stride, padding, out)
    cc = _pixel_plan(N * H * W, C)
    grid = (cdiv(N * H * W, THREADS), cdiv(C, cc))
    _kernel(f"conv_direct_dgrad<{cc}>")(grid, (THREADS,), (dy, w, dx) + dims)
    return dx


def conv2d_backward_weights(x, dy, w_shape, stride, padding, *, out=None):
    """dw (R,S,C,K) = patches(x)^T @ dy, summed over N*P*Q in a fixed order."""
    import cupy as cp
    (N, H, W, C, K, R, S, P, Q, _, _), dw, dims = checked_backward_weights(x, dy, w_shape, stride, padding, out)
    M = R * S * C * K
    kc, tr, jl, row_tiles, k_tiles, chunks, chunk = wgrad_plan(R * S * C, K, N * P * Q, sm_count())
    if k_tiles > _GRID_YZ_MAX:
        raise ValueError(f"{K} output channels need {k_tiles} blocks along grid y (at most {_GRID_YZ_MAX})")
    grid = (row_tiles, k_tiles, chunks)
    tail = (np.int32(tr), np.int32(chunk))
    pass1 = _kernel(f"conv_direct_wgrad<{kc}>")
    if chunks == 1:
        pass1(grid, (tr * jl,), (x, dy, dw) + dims + tail)
        return dw
    check_int32(workspace=chunks * M)
    ws = cp.empty(chunks * M, dtype=np.float32)
    pass1(grid, (tr * jl,), (x, dy, ws) + dims + tail)
    lanes = reduce_lanes(chunks)
    _kernel("conv_direct_wgrad_reduce")((cdiv(M, REDUCE_THREADS // lanes),), (REDUCE_THREADS,),
                                        (ws, dw, np.int32(M), np.int32(chunks), np.int32(lanes)))
    return dw


for _fn in (conv2d_forward, conv2d_backward_data, conv2d_backward_weights):
    _fn.__name__ = _fn.__qualname__ = f"{_fn.__name__}_direct"

registry.register("conv2d_forward", "direct", conv2d_forward, source="cuda",
                  note="direct: thread per output pixel x K chunk in registers, smem weights, fused bias+ReLU")
registry.register("conv2d_backward_data", "direct", conv2d_backward_data, source="cuda",
                  note="direct: thread per input pixel x C chunk, tap outputs computed (no search), smem weights")
registry.register("conv2d_backward_weights", "direct", conv2d_backward_weights, source="cuda",
                  note="direct: blocks over N*P*Q chunks write partial dw, then an ordered reduce")
