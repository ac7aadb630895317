"""pool cases of fastcnn.benchmark under pytest-benchmark (GPU; skipped without one)."""
import pytest

GROUPS = ("pool",)  # parametrised by bench/conftest.py: one test per case and implementation


@pytest.mark.gpu
def test_pool(run_case, spec):
    run_case(spec)
