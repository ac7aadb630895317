"""The element types fastcnn computes in: float32, and bfloat16 under the mixed_bfloat16 policy.

bfloat16 arrays are arrays of dtype ``ml_dtypes.bfloat16`` on the host (NumPy) and on the
GPU (CuPy 14 takes that dtype when ml_dtypes is installed).  Converting float32 to bfloat16
rounds to nearest, ties to even (``cvt.rn.bf16.f32`` / ``__float2bfloat16_rn`` on the GPU);
converting back is exact.  Every backend decides "is this a bfloat16 tensor" here.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

bfloat16 = np.dtype(ml_dtypes.bfloat16)
float32 = np.dtype(np.float32)
# The names a policy or a kernel variant uses for its element types.
NAMES = {"float32": float32, "bfloat16": bfloat16}


def name(dtype) -> str:
    """'float32' or 'bfloat16' for an array's dtype (ValueError for anything else)."""
    dtype = np.dtype(dtype)
    for key, value in NAMES.items():
        if dtype == value:
            return key
    raise ValueError(f"unsupported element type {dtype}; fastcnn computes in float32 or bfloat16")


def is_bfloat16(a) -> bool:
    return getattr(a, "dtype", None) == bfloat16


def to_bfloat16(a):
    """float32 (or float64) -> bfloat16, round to nearest even, on a's own device (NumPy or CuPy)."""
    return a.astype(bfloat16)


def round_bfloat16(a):
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32."""
    return a.astype(bfloat16).astype(a.dtype)


def to_float32(a):
    """Exact widening of bfloat16 (a float32 array is returned as it is)."""
    return a if a.dtype == float32 else a.astype(np.float32)
