"""The GPU backend: CuPy arrays, our own CUDA C kernels from kernels/*.cu.

Each primitive of ``fastcnn.backend.PRIMITIVES`` dispatches to the variant
selected in ``fastcnn.kernels`` (the registry), so a Numba variant can stand in
for a CUDA C one.  The variants live beside this file, one module per kernel
file: gemm.py (kernels/gemm.cu), conv.py, pool.py, step.py (the rest of a
training step); gemm_tc.py and conv_tc.py hold the TF32 tensor-core variants.  Importing this package never needs a GPU.
"""
from __future__ import annotations

import numpy as np

from ... import dtypes
from .. import PRIMITIVES, registry

bfloat16 = dtypes.bfloat16

name = "cuda"
device = "cuda"

try:
    import cupy as xp
except ImportError:  # the cuda extra is not installed
    xp = None


def _driver_present() -> bool:
    """Whether the NVIDIA driver's user library (libcuda) can be loaded."""
    import ctypes
    import ctypes.util
    import sys
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    for lib in names + [ctypes.util.find_library("cuda") or ""]:
        try:
            if lib:
                ctypes.CDLL(lib)
                return True
        except OSError:
            continue
    return False


def unavailable_reason() -> str | None:
    """None when a CUDA GPU can run our kernels, else why not (shown by `fastcnn info`)."""
    if xp is None:
        return "CuPy is not installed (pip install 'fastcnn[cuda]')"
    try:
        count = xp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        if not _driver_present():  # the CUDA runtime then says "driver version is insufficient"
            return "no NVIDIA driver / no GPU (libcuda, the driver's library, is not installed)"
        return f"no usable CUDA driver or GPU ({type(exc).__name__}: {exc})"
    if count == 0:
        return "no CUDA GPU found"
    major = xp.cuda.Device().compute_capability
    if int(major) < 70:
        return f"GPU compute capability {major} is below 7.0"
    return None


def asarray(a, dtype=None):
    """A contiguous CuPy array on the current GPU (copies from the host when needed)."""
    return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))


def to_host(a):
    return xp.asnumpy(a) if isinstance(a, xp.ndarray) else np.asarray(a)


def synchronize() -> None:
    xp.cuda.get_current_stream().synchronize()


def _dispatcher(op: str):
    def call(*args, **kwargs):
        # The element type of the first array picks among the variants (bfloat16 ones, or
        # kernels templated over it); every other call is a float32 one.
        if args and getattr(args[0], "dtype", None) == bfloat16:
            return registry.get(op, dtype="bfloat16").fn(*args, **kwargs)
        return registry.get(op).fn(*args, **kwargs)
    call.__name__ = call.__qualname__ = op
    call.__doc__ = f"{op}: runs the selected variant (fastcnn.kernels.selected({op!r}))."
    return call


for _op in PRIMITIVES:
    globals()[_op] = _dispatcher(_op)

# Registering the variants: one module per kernel file (the order is the listing order;
# defaults are fastcnn.backend.preferences's to say).  The Numba variants register when
# fastcnn.backend.numba is imported (fastcnn.kernels imports both).
from . import gemm, gemm_tc, conv, conv_tc, conv_direct, conv_winograd, pool, step, auto  # noqa: E402,F401
