"""fastcnn.kernels: the kernel variants of every GPU primitive, by op and name.

    >>> import fastcnn
    >>> fastcnn.kernels.variants("conv2d_forward")      # doctest: +SKIP
    ['im2col', 'implicit_gemm', ..., 'auto', 'numba_implicit_gemm']
    >>> fastcnn.kernels.use("conv2d_forward", "im2col")  # doctest: +SKIP

The functions are those of ``fastcnn.backend.registry`` (see its notes on precision and
element types); which variant is each op's default is declared in
``fastcnn.backend.preferences``.  Importing this module imports the variant sources, the
CUDA C modules (``fastcnn.backend.cuda``) and the Numba ones (``fastcnn.backend.numba``),
which register themselves; neither needs a GPU to import.  The registry itself imports
neither, so ``import fastcnn`` stays quick: ``fastcnn.kernels`` is imported on first use.
"""
from __future__ import annotations

import importlib
import warnings

from .backend.registry import (DTYPES, PRECISIONS, NotApplicable, Variant, allowed, default,  # noqa: F401
                               get, lookup, ops, register, selected, use, using, variants)

SOURCES = ("fastcnn.backend.cuda", "fastcnn.backend.numba")

_load_errors: dict[str, str] = {}


def _load() -> None:
    # One source that fails to import (numba missing, or broken) leaves the other's variants
    # usable; the reason is kept for `fastcnn info` and said once as a warning.
    for module in SOURCES:
        try:
            importlib.import_module(module)
        except Exception as exc:
            _load_errors[module] = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, ImportError):
                warnings.warn(f"kernel variants of {module} are unavailable: {_load_errors[module]}")


def load_errors() -> dict[str, str]:
    """{module: why} for the variant sources that could not be imported."""
    return dict(_load_errors)


_load()
