"""Which kernel variant each primitive runs when none is selected: the one table that says so.

Backends only register variants (``fastcnn.backend.registry.register``); making a variant
the default is a change to this table, nothing else.  It is a module of its own, not a part
of the registry, because it is data about the kernels (it changes when a benchmark finds a
faster variant), while the registry is the mechanism and rarely changes; it imports nothing.

PREFERRED names, per op, the variant for each kind of call:

  highest   float32 arrays under the float32 matmul precision "highest" ('fp32' or 'any' variants)
  high      float32 arrays under "high", TF32 allowed ('tf32', 'fp32' or 'any' variants)
  bfloat16  bfloat16 arrays (variants whose ``dtypes`` include 'bfloat16')

A name that is not registered (a variant this copy does not have, Numba absent) or that
does not fit the kind of call falls back to a fixed rule, ``registry.default``: the first
CUDA C variant registered that fits (under "high" a 'tf32' or 'any' one first, else the
"highest" choice).  Numba variants are never a fallback: they run when picked by name.

TUNED names the ops the ``auto`` variant (fastcnn/backend/cuda/auto.py) tunes per shape, and
for each the variant ``auto`` runs without tuning (during a graph capture, with
FASTCNN_AUTOTUNE=0) and whose output the other candidates must match: ``fp32``; under "high"
it runs ``tf32`` untuned instead (``fp32`` where that refuses the shape).  The untuned
choices are the fastest variants that take every shape in the last H200 run (BENCHMARKS.md).
"""
from __future__ import annotations

from typing import NamedTuple


class Preferred(NamedTuple):
    highest: str    # float32 calls under precision "highest"
    high: str       # float32 calls under "high" (TF32 allowed)
    bfloat16: str   # bfloat16 calls


class Tuned(NamedTuple):
    fp32: str       # auto's untuned choice, and the output the other candidates must match
    tf32: str       # its untuned choice under "high"


# auto tunes float32 calls only: bfloat16 GEMMs and convolutions run the bfloat16 tensor-core
# variants, bfloat16 max-pools the variant auto runs untuned.
PREFERRED = {
    "matmul":                  Preferred("auto", "auto", "tc_bf16"),
    "dense_forward":           Preferred("auto", "auto", "tc_bf16"),
    "conv2d_forward":          Preferred("auto", "auto", "tc_bf16"),
    "conv2d_backward_data":    Preferred("auto", "auto", "tc_bf16"),
    "conv2d_backward_weights": Preferred("auto", "auto", "tc_bf16"),
    "maxpool_forward":         Preferred("auto", "auto", "vec8"),
    "maxpool_backward":        Preferred("auto", "auto", "tiled"),
    # the rest of a step: one CUDA C variant each (cuda/step.py), for both element types
    **{op: Preferred("cuda", "cuda", "cuda") for op in (
        "bias_grad", "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward", "softmax", "softmax_cross_entropy",
        "dropout_forward", "dropout_backward", "crop_forward", "crop_backward", "pca_noise_forward",
        "lrn_forward", "lrn_backward", "sgd_update", "adam_update", "rmsprop_update", "increment",
        "add", "copy", "copy_channels", "gather_rows", "cast")},
}

TUNED = {
    "matmul":                  Tuned("tiled", "tc_tf32"),
    "dense_forward":           Tuned("tiled", "tc_tf32"),
    "conv2d_forward":          Tuned("implicit_gemm", "tc_tf32"),
    "conv2d_backward_data":    Tuned("im2col", "tc_tf32"),
    "conv2d_backward_weights": Tuned("implicit_gemm", "tc_tf32"),
    "maxpool_forward":         Tuned("vec8", "vec8"),
    "maxpool_backward":        Tuned("tiled", "tiled"),
}
