"""Compile kernels/*.cu once per process through CuPy RawModule, and check arguments.

The header ``common.cuh`` is pasted into each source before compilation, so
its contents are part of CuPy's on-disk cache key (an ``#include`` would not
be).  Nothing here needs a GPU until a kernel is fetched.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from ... import _paths
from .. import checks

COMPILE_OPTIONS = ("-std=c++17",)
_INCLUDE = re.compile(r'^#include\s+"([\w.]+)"\s*$', re.MULTILINE)


def kernel_source(filename: str) -> str:
    """The source of kernels/<filename> with its local ``#include "x.cuh"`` lines pasted in."""
    text = (_paths.KERNEL_DIR / filename).read_text()
    return _INCLUDE.sub(lambda m: (_paths.KERNEL_DIR / m.group(1)).read_text(), text)


@functools.lru_cache(maxsize=None)
def module(filename: str, name_expressions: tuple[str, ...] = ()):
    """The compiled RawModule of kernels/<filename> (compiled once per process)."""
    import cupy as cp
    return cp.RawModule(code=kernel_source(filename), options=COMPILE_OPTIONS,
                        name_expressions=list(name_expressions) or None)


def function(filename: str, name: str, name_expressions: tuple[str, ...] = ()):
    """One kernel of kernels/<filename>; ``name`` may be a template instance listed in name_expressions."""
    return module(filename, name_expressions).get_function(name)


def check(name: str, a, *, dtype=np.float32, ndim: int | None = None, shape=None):
    """Refuse, before any launch, an argument the kernels would read wrongly."""
    import cupy as cp
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name} must be a CuPy array on the GPU, got {type(a).__name__}; "
                        "move it with fastcnn.backend.get('cuda').asarray(...)")
    check_layout(name, a, dtype=dtype, ndim=ndim, shape=shape)
    if a.device.id != cp.cuda.Device().id:
        raise ValueError(f"{name} lives on GPU {a.device.id} but the current device is "
                         f"{cp.cuda.Device().id}")
    return a


def check_layout(name: str, a, *, dtype=np.float32, ndim: int | None = None, shape=None):
    """The part of ``check`` that does not depend on where the array lives."""
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype.name}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if shape is not None:
        checks.expect_shape(name, a.shape, shape)
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (kernels ignore strides); "
                         "pass cupy.ascontiguousarray(...)")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")


def out_array(name: str, out, shape, dtype=np.float32):
    """A fresh result array, or the caller's ``out`` after checking it (the ``out=`` convention)."""
    import cupy as cp
    if out is None:
        return cp.empty(shape, dtype=dtype)
    return check(name, out, dtype=dtype, shape=shape)


@functools.lru_cache(maxsize=None)
def _compute_capability(device_id: int) -> int:
    import cupy as cp
    return int(cp.cuda.Device(device_id).compute_capability)


def compute_capability() -> int:
    """The current GPU's compute capability as CuPy spells it (90 for an H100/H200)."""
    import cupy as cp
    return _compute_capability(cp.cuda.Device().id)


def require_tensor_cores(what: str) -> None:
    """Refuse (registry.NotApplicable: auto then uses another variant) a GPU without TF32
    and BF16 mma.sync (compute capability below 8.0)."""
    cc = compute_capability()
    if cc < 80:
        from ..registry import NotApplicable
        raise NotApplicable(f"{what} needs TF32/BF16 tensor cores (compute capability 8.0 or newer); "
                            f"this GPU has {cc // 10}.{cc % 10}")


def blocks(n: int, threads: int) -> int:
    """Number of blocks of ``threads`` that cover ``n`` items."""
    return max(1, checks.cdiv(n, threads))
