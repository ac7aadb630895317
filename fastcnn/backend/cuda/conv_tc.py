"""Tensor-core convolutions (kernels/conv_tc.cu): forward, backward-data, backward-weights.

Variants (one kernel source, templated over the element type):
  tc_tf32  implicit GEMM on mma.sync.m16n8k8 with float32 operands rounded to tf32
           (cvt.rna); registered for the "high" float32 matmul precision only
           (``fastcnn.config``).
  tc_bf16  implicit GEMM on mma.sync.m16n8k16 with bfloat16 x, w, dy; forward: float32
           bias, y bfloat16; backward-data: dx bfloat16; backward-weights: dw float32.
Both: fp32 accumulation, 128x64 block tiles (K depth 16 tf32, 32 bf16) gathered from the
NHWC tensors by cp.async into a 3-stage pipeline; forward fuses bias+ReLU (then one
rounding to bfloat16); backward-weights is split-K with the deterministic reduce.  Argument
checks, ``out=`` buffers and launch plans are conv.py's own (its factories, given this
kernel file): only the kernels differ.
"""
from __future__ import annotations

from ... import dtypes
from .. import registry
from . import _launch
from .conv import _backward_data, _backward_weights, _forward

_FILE = "conv_tc.cu"
TILE_N = 64          # TILE_M is conv.py's 128
THREADS = 128
_VARIANTS = {"tc_tf32": "tf32", "tc_bf16": "bf16"}  # variant -> kernel name suffix


def implicit_tc(kind: str, variant: str):
    """conv.py's (kernel, N-tile width, threads) for the tensor-core kernels."""
    if variant not in _VARIANTS:
        raise ValueError(f"unknown tensor-core convolution variant {variant!r}; choose among {sorted(_VARIANTS)}")
    _launch.require_tensor_cores(f"the {variant} convolution")
    return _launch.function(_FILE, f"conv_{kind}_{_VARIANTS[variant]}"), TILE_N, THREADS


conv2d_forward = _forward("tc_tf32", implicit_tc)
conv2d_backward_data = _backward_data("tc_tf32", implicit_tc)
conv2d_backward_weights = _backward_weights("tc_tf32", implicit_tc)
conv2d_forward_bf16 = _forward("tc_bf16", implicit_tc, dtype=dtypes.bfloat16)
conv2d_backward_data_bf16 = _backward_data("tc_bf16", implicit_tc, dtype=dtypes.bfloat16)
conv2d_backward_weights_bf16 = _backward_weights("tc_bf16", implicit_tc, dtype=dtypes.bfloat16)
for _fn in (conv2d_forward, conv2d_backward_data, conv2d_backward_weights,
            conv2d_forward_bf16, conv2d_backward_data_bf16, conv2d_backward_weights_bf16):
    _fn.__module__ = __name__

_NOTE = "TF32 tensor cores: implicit GEMM on mma.sync m16n8k8, 128x64x16 tiles, cp.async pipeline{}"
registry.register("conv2d_forward", "tc_tf32", conv2d_forward, source="cuda", precision="tf32",
                  note=_NOTE.format(", fused bias+ReLU"))
registry.register("conv2d_backward_data", "tc_tf32", conv2d_backward_data, source="cuda", precision="tf32",
                  note=_NOTE.format("; taps off the stride grid load zeros but still cost MMAs"))
registry.register("conv2d_backward_weights", "tc_tf32", conv2d_backward_weights, source="cuda",
                  precision="tf32", note=_NOTE.format(", split-K with ordered reduce"))
_NOTE_BF16 = "BF16 tensor cores: implicit GEMM on mma.sync m16n8k16, fp32 accumulation, 128x64x32 tiles{}"
registry.register("conv2d_forward", "tc_bf16", conv2d_forward_bf16, source="cuda", precision="bf16",
                  dtypes=("bfloat16",), note=_NOTE_BF16.format(", fused bias+ReLU, bfloat16 out"))
registry.register("conv2d_backward_data", "tc_bf16", conv2d_backward_data_bf16, source="cuda", precision="bf16",
                  dtypes=("bfloat16",), note=_NOTE_BF16.format(", bfloat16 dx"))
registry.register("conv2d_backward_weights", "tc_bf16", conv2d_backward_weights_bf16, source="cuda",
                  precision="bf16", dtypes=("bfloat16",), note=_NOTE_BF16.format(", float32 dw, split-K"))
