"""The README's Python examples run as written (on the CPU: without a GPU the
``model.to("cuda")`` line is left out, and the first example trains one epoch, not ten)."""
import re
from pathlib import Path

import pytest

import fastcnn

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


def test_readme_has_the_examples():
    blocks = python_blocks()
    assert len(blocks) >= 3
    assert "model.fit(" in blocks[0] and "Sequential([" in blocks[1] and "fastcnn.kernels.use(" in blocks[2]


def test_training_example_runs_and_learns():
    from conftest import HAS_GPU
    code = python_blocks()[0]
    assert "epochs=10" in code and 'model.to("cuda")' in code
    code = code.replace("epochs=10", "epochs=1")
    if not HAS_GPU:
        code = code.replace('model.to("cuda")', "pass  # no GPU here")
    scope = {}
    exec(compile(code, "README.md example 1", "exec"), scope)
    assert scope["accuracy"] > 0.8  # one epoch on the 8,000-digit sample
    assert len(scope["history"].history["val_accuracy"]) == 1


def test_layer_by_layer_example_builds_lenet5():
    scope = {}
    exec(compile(python_blocks()[1], "README.md example 2", "exec"), scope)
    model = scope["model"]
    assert model.count_params() == 61706
    assert [layer.count_params() for layer in model.layers if layer.count_params()] == [156, 2416, 48120, 10164, 850]


def test_kernel_variants_example():
    pytest.importorskip("numba")
    code = python_blocks()[2]
    try:
        exec(compile(code, "README.md example 3", "exec"), {})
        assert fastcnn.kernels.selected("matmul") == "numba_tiled"
    finally:
        fastcnn.kernels.use("matmul", None)
    assert fastcnn.kernels.selected("matmul") != "numba_tiled"
