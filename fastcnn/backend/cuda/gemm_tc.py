"""TF32 tensor-core GEMM (kernels/gemm_tf32.cu): ``matmul`` and ``dense_forward``.

Variant ``tc_tf32``: mma.sync.m16n8k8 on operands rounded to tf32 (cvt.rna), fp32
accumulation; 128x64x16 block tiles, 4 warps of 64x32, a 3-stage cp.async pipeline,
split-K with gemm.cu's deterministic reduce when M x N gives too few blocks.  Registered
for the "high" float32 matmul precision only (``fastcnn.config``).  The argument checks,
``out=`` convention and split-K plan are gemm.py's own; only the kernel differs.
"""
from __future__ import annotations

from .. import registry
from . import _launch
from ..checks import check_int32
from .gemm import _FORMS, _dense_forward, _matmul, launch_tiles

_FILE = "gemm_tf32.cu"
NAME_EXPRESSIONS = tuple(f"gemm_tf32<{ta}, {tb}>" for ta, tb in _FORMS)
TILE_N = 64          # TILE_M is gemm.py's 128
THREADS = 128


def launch_gemm_tf32(variant: str, a, b, out, M: int, N: int, K: int, trans_a: bool, trans_b: bool,
                     bias=None, relu: bool = False) -> None:
    """gemm.launch_gemm's contract on the tensor cores: out = relu?(op(a) @ op(b) + bias)."""
    if variant != "tc_tf32":
        raise ValueError(f"unknown TF32 GEMM variant {variant!r}; the one there is: 'tc_tf32'")
    check_int32(M=M, N=N, K=K, M_times_N=M * N)
    _launch.require_tensor_cores("the tc_tf32 GEMM")
    kernel = _launch.function(_FILE, f"gemm_tf32<{int(bool(trans_a))}, {int(bool(trans_b))}>", NAME_EXPRESSIONS)
    launch_tiles(kernel, THREADS, TILE_N, a, b, out, M, N, K, bias, relu)


matmul = _matmul("tc_tf32", launch_gemm_tf32)
dense_forward = _dense_forward("tc_tf32", launch_gemm_tf32)
matmul.__module__ = dense_forward.__module__ = __name__

_NOTE = "TF32 tensor cores: mma.sync m16n8k8, 128x64x16 tiles, 3-stage cp.async pipeline{}"
registry.register("matmul", "tc_tf32", matmul, source="cuda", precision="tf32",
                  note=_NOTE.format(", split-K for small M*N"))
registry.register("dense_forward", "tc_tf32", dense_forward, source="cuda", precision="tf32",
                  note=_NOTE.format(", fused bias+ReLU epilogue"))
