"""GEMM variants (kernels/gemm.cu): ``matmul`` and ``dense_forward``.

Variants, registered in ``fastcnn.kernels`` at import (no GPU needed to import):
  naive   one thread per output element (gemm_naive<TA,TB>): the obviously-right one
  tiled   128x128x8 block tiles, 8x8 register blocking per thread, 16-byte loads,
          split-K with a deterministic reduce when M x N gives too few blocks
  tiled_db  the same with two shared buffers (one barrier per K slice instead of two)

Every function takes an optional keyword ``out=`` (a C-contiguous float32 CuPy
array of the result's shape) to write into a buffer the caller owns: tests
poison it with NaN, a captured graph keeps it static.  ``launch_gemm`` is the
entry point that conv.py shares.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import registry
from ..checks import cdiv, check_int32
from . import _launch

_FILE = "gemm.cu"
_FORMS = ((0, 0), (0, 1), (1, 0), (1, 1))
NAME_EXPRESSIONS = (tuple(f"gemm_{kind}<{ta}, {tb}>" for kind in ("naive", "tiled") for ta, tb in _FORMS)
                    + tuple(f"gemm_tiled<{ta}, {tb}, 2>" for ta, tb in _FORMS))
_TILED = {"tiled": "", "tiled_db": ", 2"}  # variant -> template tail of gemm_tiled (shared buffers)
TILE_M = TILE_N = 128
THREADS = 256
def _kernel(name: str):
    return _launch.function(_FILE, name, NAME_EXPRESSIONS)


@functools.lru_cache(maxsize=None)
def _sm_count(device_id: int) -> int:
    import cupy as cp
    return int(cp.cuda.Device(device_id).attributes["MultiProcessorCount"])


def sm_count() -> int:
    import cupy as cp
    return _sm_count(cp.cuda.Device().id)


def grid_blocks(n: int, threads: int = THREADS) -> int:
    """Blocks for a grid-stride 1-D launch over n items (capped: the kernels loop)."""
    return min(_launch.blocks(n, threads), 32 * sm_count())


def split_k_plan(M: int, N: int, K: int, tile_n: int = TILE_N) -> tuple[int, int]:
    """(splits, kchunk): split K when the M x N tiles alone cannot fill the GPU.

    Depends only on the shape and the card's SM count, so results are reproducible
    on a given card.  kchunk is a multiple of 8 (the tile depth) and no slice is empty.
    """
    tiles = cdiv(M, TILE_M) * cdiv(N, tile_n)
    sms = sm_count()
    if K < 1024 or tiles >= sms:
        return 1, K
    splits = max(1, min(cdiv(2 * sms, tiles), K // 512, 64))
    kchunk = cdiv(cdiv(K, splits), 8) * 8
    return cdiv(K, kchunk), kchunk


def launch_gemm(variant: str, a, b, out, M: int, N: int, K: int, trans_a: bool, trans_b: bool,
                bias=None, relu: bool = False) -> None:
    """out (M, N) = relu?(op(a) @ op(b) + bias); arguments already checked by the caller.

    a is (M, K) or, with trans_a, (K, M); b is (K, N) or, with trans_b, (N, K).
    """
    check_int32(M=M, N=N, K=K, M_times_N=M * N)
    ta, tb = int(bool(trans_a)), int(bool(trans_b))
    args_tail = (np.int32(M), np.int32(N), np.int32(K))
    if variant == "naive":
        kernel = _kernel(f"gemm_naive<{ta}, {tb}>")
        kernel((grid_blocks(M * N),), (THREADS,), (a, b, out) + args_tail + (bias, np.int32(bool(relu))))
        return
    if variant not in _TILED:
        raise ValueError(f"unknown GEMM variant {variant!r}; choose 'naive', 'tiled' or 'tiled_db'")
    launch_tiles(_kernel(f"gemm_tiled<{ta}, {tb}{_TILED[variant]}>"), THREADS, TILE_N,
                 a, b, out, M, N, K, bias, relu)


def launch_tiles(kernel, threads: int, tile_n: int, a, b, out, M: int, N: int, K: int, bias, relu, *,
                 partial=None, reduce=None) -> None:
    """Launch a block-tiled GEMM kernel (A, B, C, M, N, K, bias, relu, kchunk) on 128-row
    tiles of ``tile_n`` columns, split-K through a float32 workspace when the tiles alone
    cannot fill the GPU: ``partial`` (default ``kernel``: its instance writing float32)
    writes the slices, ``reduce`` (default gemm_splitk_reduce) sums them into ``out``."""
    import cupy as cp
    args_tail = (np.int32(M), np.int32(N), np.int32(K))
    splits, kchunk = split_k_plan(M, N, K, tile_n)
    grid = (cdiv(M, TILE_M), cdiv(N, tile_n), splits)
    if splits == 1:
        kernel(grid, (threads,), (a, b, out) + args_tail + (bias, np.int32(bool(relu)), np.int32(kchunk)))
        return
    check_int32(workspace=splits * M * N)
    ws = cp.empty(splits * M * N, dtype=np.float32)
    (partial or kernel)(grid, (threads,), (a, b, ws) + args_tail + (None, np.int32(0), np.int32(kchunk)))
    (reduce or _kernel("gemm_splitk_reduce"))((grid_blocks(M * N),), (THREADS,),
                                              (ws, out, np.int32(M), np.int32(N), np.int32(splits),
                                               bias, np.int32(bool(relu))))


def matmul_out_dtype(dtype, out):
    """matmul's result type: its operands' (``dtype``), or float32 where bfloat16 operands
    are given a float32 ``out=`` (weight gradients: fp32 accumulation, no rounding)."""
    if np.dtype(dtype) != np.float32 and out is not None and getattr(out, "dtype", None) == np.float32:
        return np.dtype(np.float32)
    return np.dtype(dtype)


def _matmul(variant: str, launch=launch_gemm, dtype=np.float32):
    """matmul of ``variant`` on ``dtype`` operands, launched by ``launch`` (launch_gemm's signature)."""
    def matmul(a, b, trans_a=False, trans_b=False, *, out=None):
        """op(a) @ op(b) for 2-D CuPy arrays of the variant's element type; op transposes when
        trans_* is true."""
        _launch.check("a", a, dtype=dtype, ndim=2)
        _launch.check("b", b, dtype=dtype, ndim=2)
        M, Ka = (a.shape[1], a.shape[0]) if trans_a else a.shape
        Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if Ka != Kb:
            raise ValueError(f"inner dimensions differ: op(a) is {(M, Ka)}, op(b) is {(Kb, N)}")
        out = _launch.out_array("out", out, (M, N), dtype=matmul_out_dtype(dtype, out))
        launch(variant, a, b, out, M, N, Ka, trans_a, trans_b)
        return out
    matmul.__name__ = matmul.__qualname__ = f"matmul_{variant}"
    return matmul


def _dense_forward(variant: str, launch=launch_gemm, dtype=np.float32):
    """dense_forward of ``variant`` on ``dtype`` x and w (the bias and accumulation stay
    float32), launched by ``launch`` (launch_gemm's signature)."""
    def dense_forward(x, w, b, relu, *, out=None):
        """relu?(x @ w + b): x (batch, in), w (in, out), b (out,) float32 or None; out in x's type."""
        _launch.check("x", x, dtype=dtype, ndim=2)
        _launch.check("w", w, dtype=dtype, ndim=2)
        if x.shape[1] != w.shape[0]:
            raise ValueError(f"x has {x.shape[1]} features but w expects {w.shape[0]} "
                             f"(w is (in, out) = {w.shape})")
        if b is not None:
            _launch.check("b", b, ndim=1)
            if b.shape[0] != w.shape[1]:
                raise ValueError(f"bias length {b.shape[0]} does not match the {w.shape[1]} outputs of w")
        M, K = x.shape
        N = w.shape[1]
        out = _launch.out_array("out", out, (M, N), dtype=dtype)
        launch(variant, x, w, out, M, N, K, False, False, bias=b, relu=bool(relu))
        return out
    dense_forward.__name__ = dense_forward.__qualname__ = f"dense_forward_{variant}"
    return dense_forward


registry.register("matmul", "naive", _matmul("naive"), source="cuda",
                  note="one thread per output, dot product over K (obviously right)")
registry.register("matmul", "tiled", _matmul("tiled"), source="cuda",
                  note="128x128x8 smem tiles, 8x8 register blocking, float4 loads, split-K for small M*N")
registry.register("matmul", "tiled_db", _matmul("tiled_db"), source="cuda",
                  note="tiled with two shared buffers: one barrier per K slice instead of two")
registry.register("dense_forward", "naive", _dense_forward("naive"), source="cuda",
                  note="naive GEMM with fused bias+ReLU epilogue")
registry.register("dense_forward", "tiled", _dense_forward("tiled"), source="cuda",
                  note="tiled GEMM with fused bias+ReLU epilogue")
registry.register("dense_forward", "tiled_db", _dense_forward("tiled_db"), source="cuda",
                  note="tiled_db GEMM with fused bias+ReLU epilogue")
