"""A compatibility shim that lets numba-cuda 0.30.4 import under NumPy 2.5.

Why: numba-cuda 0.30.4 (``numba/cuda/np/arrayobj.py``) runs
``overload(np.row_stack)(impl_np_vstack)`` at import for every NumPy >= 2.0.
NumPy 2.5 removed ``np.row_stack`` (deprecated since 2.0 as an alias of
``np.vstack``), so ``import numba.cuda`` fails there with
``AttributeError: module 'numpy' has no attribute 'row_stack'``.  Numba itself
already guards the same line with ``numpy_version < (2, 5)``; numba-cuda does
not yet.

What: if, and only if, ``numpy.row_stack`` is missing, set it to
``numpy.vstack`` (what it always was).  Nothing else changes; on NumPy < 2.5
this does nothing.  It must run before ``numba.cuda`` is first imported, which
is why ``fastcnn.backend.numba._launch`` calls ``apply()`` before that; code
that imports ``numba.cuda`` itself before importing fastcnn should call
``fastcnn._numba_compat.apply()`` first.  Remove it once numba-cuda guards the
overload (or once the GPU machines no longer carry NumPy >= 2.5 with
numba-cuda 0.30.x).
"""
from __future__ import annotations

import numpy as np

PATCHED: list[str] = []   # names this module added to numpy, for `fastcnn info` and the tests


def apply() -> list[str]:
    """Add the aliases numba-cuda expects but this NumPy lacks; return what was added."""
    if "row_stack" not in np.__dict__ and not _has(np, "row_stack"):
        np.row_stack = np.vstack
        PATCHED.append("row_stack")
    return list(PATCHED)


def _has(module, attr: str) -> bool:
    # NumPy 2.x raises (or warns) from its module __getattr__ for removed or
    # deprecated names; treat any failure to read the name as "missing".
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            getattr(module, attr)
        except AttributeError:
            return False
    return True


apply()
