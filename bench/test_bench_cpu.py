"""CPU: the NumPy reference's LeNet-5 training step (batch 200, Adam) beside PyTorch's CPU build."""
GROUPS = ("cpu",)  # parametrised by bench/conftest.py


def test_cpu(run_case, spec):
    run_case(spec)
