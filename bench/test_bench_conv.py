"""conv cases of fastcnn.benchmark under pytest-benchmark (GPU; skipped without one)."""
import pytest

GROUPS = ("conv",)  # parametrised by bench/conftest.py: one test per case and implementation


@pytest.mark.gpu
def test_conv(run_case, spec):
    run_case(spec)
