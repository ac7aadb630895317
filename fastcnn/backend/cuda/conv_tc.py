"""TF32 tensor-core convolutions (kernels/conv_tf32.cu): forward, backward-data,
backward-weights.

Variant ``tc_tf32``: implicit GEMM on mma.sync.m16n8k8 with operands rounded to tf32
(cvt.rna) and fp32 accumulation; 128x64x16 block tiles gathered from the NHWC tensors by
cp.async into a 3-stage pipeline; forward fuses bias+ReLU; backward-weights is split-K
with the deterministic reduce.  Registered for the "high" float32 matmul precision only
(``fastcnn.config``).  Argument checks, ``out=`` buffers and launch plans are conv.py's
own (its factories, given this kernel file): only the kernels differ.
"""
from __future__ import annotations

from .. import registry
from . import _launch
from .conv import _backward_data, _backward_weights, _forward

_FILE = "conv_tf32.cu"
TILE_N = 64          # TILE_M is conv.py's 128
THREADS = 128


def implicit_tf32(kind: str, variant: str):
    """conv.py's (kernel, N-tile width, threads) for the tensor-core kernels."""
    if variant != "tc_tf32":
        raise ValueError(f"unknown TF32 convolution variant {variant!r}; the one there is: 'tc_tf32'")
    _launch.require_tensor_cores("the tc_tf32 convolution")
    return _launch.function(_FILE, f"conv_{kind}_tf32"), TILE_N, THREADS


conv2d_forward = _forward("tc_tf32", implicit_tf32)
conv2d_backward_data = _backward_data("tc_tf32", implicit_tf32)
conv2d_backward_weights = _backward_weights("tc_tf32", implicit_tf32)
for _fn in (conv2d_forward, conv2d_backward_data, conv2d_backward_weights):
    _fn.__module__ = __name__

_NOTE = "TF32 tensor cores: implicit GEMM on mma.sync m16n8k8, 128x64x16 tiles, cp.async pipeline{}"
registry.register("conv2d_forward", "tc_tf32", conv2d_forward, source="cuda", precision="tf32",
                  note=_NOTE.format(", fused bias+ReLU"))
registry.register("conv2d_backward_data", "tc_tf32", conv2d_backward_data, source="cuda", precision="tf32",
                  note=_NOTE.format("; taps off the stride grid load zeros but still cost MMAs"))
registry.register("conv2d_backward_weights", "tc_tf32", conv2d_backward_weights, source="cuda",
                  precision="tf32", note=_NOTE.format(", split-K with ordered reduce"))
