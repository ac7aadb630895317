"""Shared test setup: GPU detection, the `gpu` marker, the Numba simulator switch."""
import os

import pytest


def _gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.is_available()
    except Exception:
        return False


HAS_GPU = _gpu_available()

# Without a GPU, Numba kernels run in the CUDA simulator (must be set before numba is imported).
if not HAS_GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (cupy.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
