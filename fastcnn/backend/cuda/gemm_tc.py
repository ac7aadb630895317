"""Tensor-core GEMM (kernels/gemm_tc.cu): ``matmul`` and ``dense_forward``.

Variants (one kernel source, templated over the element type):
  tc_tf32  mma.sync.m16n8k8 on float32 operands rounded to tf32 (cvt.rna), fp32
           accumulation; registered for the "high" float32 matmul precision only
           (``fastcnn.config``).
  tc_bf16  mma.sync.m16n8k16 on bfloat16 operands, fp32 accumulation; float32 bias; the
           result bfloat16 (rounded once, to nearest even), or float32 where matmul is
           given a float32 ``out=`` (weight gradients).
Both: 128x64 block tiles (K depth 16 tf32, 32 bf16), 4 warps of 64x32, a 3-stage cp.async
pipeline, split-K with a deterministic float32 reduce when M x N gives too few blocks.  The
argument checks, ``out=`` convention and split-K plan are gemm.py's own; only the kernel differs.
"""
from __future__ import annotations

from ... import dtypes
from .. import registry
from . import _launch
from ..checks import check_int32
from .gemm import _FORMS, _dense_forward, _matmul, launch_tiles

_FILE = "gemm_tc.cu"
NAME_EXPRESSIONS = (tuple(f"gemm_tf32<{ta}, {tb}>" for ta, tb in _FORMS)
                    + tuple(f"gemm_bf16<{ta}, {tb}, {o}>" for ta, tb in _FORMS for o in (0, 1)))
TILE_N = 64          # TILE_M is gemm.py's 128
THREADS = 128


def _kernel(name: str):
    return _launch.function(_FILE, name, NAME_EXPRESSIONS)


def launch_gemm_tf32(variant: str, a, b, out, M: int, N: int, K: int, trans_a: bool, trans_b: bool,
                     bias=None, relu: bool = False) -> None:
    """gemm.launch_gemm's contract on the tensor cores: out = relu?(op(a) @ op(b) + bias)."""
    if variant != "tc_tf32":
        raise ValueError(f"unknown TF32 GEMM variant {variant!r}; the one there is: 'tc_tf32'")
    check_int32(M=M, N=N, K=K, M_times_N=M * N)
    _launch.require_tensor_cores("the tc_tf32 GEMM")
    kernel = _kernel(f"gemm_tf32<{int(bool(trans_a))}, {int(bool(trans_b))}>")
    launch_tiles(kernel, THREADS, TILE_N, a, b, out, M, N, K, bias, relu)


def launch_gemm_bf16(variant: str, a, b, out, M: int, N: int, K: int, trans_a: bool, trans_b: bool,
                     bias=None, relu: bool = False) -> None:
    """out = relu?(op(a) @ op(b) + bias) for bfloat16 a and b, float32 bias; out bfloat16
    (rounded once) or float32.  Split-K partials are float32 (the instance writing float32),
    summed by gemm_splitk_reduce_bf16 or gemm.cu's gemm_splitk_reduce."""
    if variant != "tc_bf16":
        raise ValueError(f"unknown BF16 GEMM variant {variant!r}; the one there is: 'tc_bf16'")
    check_int32(M=M, N=N, K=K, M_times_N=M * N)
    _launch.require_tensor_cores("the tc_bf16 GEMM")
    form = f"{int(bool(trans_a))}, {int(bool(trans_b))}"
    out_bf16 = dtypes.is_bfloat16(out)
    from .gemm import _kernel as gemm_kernel
    reduce = _kernel("gemm_splitk_reduce_bf16") if out_bf16 else gemm_kernel("gemm_splitk_reduce")
    launch_tiles(_kernel(f"gemm_bf16<{form}, {int(out_bf16)}>"), THREADS, TILE_N, a, b, out, M, N, K, bias, relu,
                 partial=_kernel(f"gemm_bf16<{form}, 0>"), reduce=reduce)


matmul = _matmul("tc_tf32", launch_gemm_tf32)
dense_forward = _dense_forward("tc_tf32", launch_gemm_tf32)
matmul_bf16 = _matmul("tc_bf16", launch_gemm_bf16, dtype=dtypes.bfloat16)
dense_forward_bf16 = _dense_forward("tc_bf16", launch_gemm_bf16, dtype=dtypes.bfloat16)
for _fn in (matmul, dense_forward, matmul_bf16, dense_forward_bf16):
    _fn.__module__ = __name__

_NOTE = "TF32 tensor cores: mma.sync m16n8k8, 128x64x16 tiles, 3-stage cp.async pipeline{}"
registry.register("matmul", "tc_tf32", matmul, source="cuda", precision="tf32",
                  note=_NOTE.format(", split-K for small M*N"))
registry.register("dense_forward", "tc_tf32", dense_forward, source="cuda", precision="tf32",
                  note=_NOTE.format(", fused bias+ReLU epilogue"))
_NOTE_BF16 = "BF16 tensor cores: mma.sync m16n8k16, fp32 accumulation, 128x64x32 tiles, 3-stage cp.async pipeline{}"
registry.register("matmul", "tc_bf16", matmul_bf16, source="cuda", precision="bf16", dtypes=("bfloat16",),
                  note=_NOTE_BF16.format(", split-K for small M*N; bfloat16 out, or float32 out="))
registry.register("dense_forward", "tc_bf16", dense_forward_bf16, source="cuda", precision="bf16",
                  dtypes=("bfloat16",), note=_NOTE_BF16.format(", fused bias+ReLU epilogue, bfloat16 out"))
