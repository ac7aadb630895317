"""Process-wide numerical settings, spelled as PyTorch spells them.

    import fastcnn
    fastcnn.config.set_float32_matmul_precision("high")     # GEMM and convolution may use TF32
    with fastcnn.config.float32_matmul_precision("highest"):  # full fp32 inside the block
        ...

``"highest"`` (the default) computes every float32 GEMM and convolution in float32.
``"high"`` lets them round their float32 inputs to TF32 (10 mantissa bits, as the
tensor cores' ``cvt.rna.tf32.f32`` does: round to nearest, ties away from zero) and
accumulate in float32: the NumPy reference then rounds exactly there, CUDA C
variants registered with ``precision="tf32"`` may run (and ``auto`` considers them),
and variants that have no TF32 form (every Numba kernel) stay float32, since "high"
allows TF32 rather than requires it.  Elementwise ops, pooling, softmax and the
optimizers are float32 in every mode.  PyTorch's ``"medium"`` (bfloat16 GEMM inputs
for float32 tensors) is not offered; bfloat16 comes as Keras's mixed_bfloat16 dtype
policy instead (``fastcnn.mixed_precision``, ``--precision bf16``).
"""
from __future__ import annotations

import contextlib

PRECISIONS = ("highest", "high")
# The primitives that "high" lets round their inputs to TF32; every other one is float32 always.
TF32_PRIMITIVES = ("matmul", "dense_forward", "conv2d_forward", "conv2d_backward_data",
                   "conv2d_backward_weights")
# The command line's names (``--precision``) and the names recorded in history.json,
# bench and profile output: what the GEMM/convolution inputs are rounded to ...
NAMES = {"fp32": "highest", "tf32": "high", "bf16": "highest"}
# ... and the dtype policy (fastcnn.mixed_precision) the model's layers are made with:
# bf16 is Keras's mixed_bfloat16 (bfloat16 activations and weight copies, float32 weights).
POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16"}

_precision = ["highest"]


def _checked(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown float32 matmul precision {precision!r}; choose 'highest' (fp32) or "
                         f"'high' (TF32 allowed in GEMM and convolution)")
    return precision


def set_float32_matmul_precision(precision: str) -> None:
    """``"highest"`` (fp32, the default) or ``"high"`` (TF32 allowed in GEMM and convolution)."""
    _precision[0] = _checked(precision)


def get_float32_matmul_precision() -> str:
    return _precision[0]


def tf32_allowed() -> bool:
    """True when GEMM and convolution may round their float32 inputs to TF32."""
    return _precision[0] == "high"


def precision_name(model=None) -> str:
    """'fp32', 'tf32' or 'bf16': the current precision under its command-line name; 'bf16' for
    a model whose layers compute in bfloat16 (the mixed_bfloat16 policy)."""
    if model is not None and any(layer.compute_dtype == "bfloat16" for layer in model.layers):
        return "bf16"
    return "tf32" if tf32_allowed() else "fp32"


def from_name(name: str) -> str:
    """The float32 matmul precision a command-line name ('fp32', 'tf32' or 'bf16') stands for."""
    if name not in NAMES:
        raise ValueError(f"unknown precision {name!r}; choose one of {sorted(NAMES)}")
    return NAMES[name]


def policy_name(name: str) -> str:
    """The dtype policy a command-line name stands for: 'mixed_bfloat16' for 'bf16', else 'float32'."""
    from_name(name)
    return POLICIES[name]


@contextlib.contextmanager
def float32_matmul_precision(precision: str):
    """``with fastcnn.config.float32_matmul_precision("high"): ...`` sets it for the block."""
    previous = _precision[0]
    set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        _precision[0] = previous
