"""The README's Python examples run as written (the first one trains one epoch, not ten)."""
import re
from pathlib import Path

import pytest

import fastcnn

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


def block(containing: str) -> str:
    found = [b for b in python_blocks() if containing in b]
    assert len(found) == 1, f"one README example should contain {containing!r}, found {len(found)}"
    return found[0]


def test_readme_has_the_examples():
    blocks = python_blocks()
    assert len(blocks) >= 4
    assert "model.fit(" in blocks[0] and "Sequential([" in blocks[1]


def test_training_example_runs_and_learns():
    from conftest import HAS_GPU
    code = block("load_mnist_sample()")
    assert "epochs=10" in code and 'model.to("auto")' in code
    code = code.replace("epochs=10", "epochs=1")
    scope = {}
    exec(compile(code, "README.md example 1", "exec"), scope)
    assert scope["model"].device == ("cuda" if HAS_GPU else "cpu")
    assert scope["accuracy"] > 0.8  # one epoch on the 8,000-digit sample
    assert len(scope["history"].history["val_accuracy"]) == 1


def test_layer_by_layer_example_builds_lenet5():
    scope = {}
    exec(compile(block("Sequential(["), "README.md example 2", "exec"), scope)
    model = scope["model"]
    assert model.count_params() == 61706
    assert [layer.count_params() for layer in model.layers if layer.count_params()] == [156, 2416, 48120, 10164, 850]


def test_kernel_variants_example():
    pytest.importorskip("numba")
    code = block("fastcnn.kernels.use(")
    try:
        exec(compile(code, "README.md example 3", "exec"), {})
        assert fastcnn.kernels.selected("matmul") == "numba_tiled"
    finally:
        fastcnn.kernels.use("matmul", None)
    assert fastcnn.kernels.selected("matmul") != "numba_tiled"


def test_image_folder_example_trains_alexnet(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for name, color in (("cat", (200, 60, 20)), ("dog", (20, 60, 200))):
        for i in range(3):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.new("RGB", (250 + 7 * i, 240), color).save(tmp_path / name / f"{i}.jpg")
    code = block("load_image_folder(")
    assert '"~/imagenette"' in code and "epochs=30" in code and "batch_size=128" in code
    code = code.replace('"~/imagenette"', repr(str(tmp_path))).replace("epochs=30", "epochs=1")
    code = code.replace("batch_size=128", "batch_size=5")   # the second batch is a partial one
    scope = {}
    exec(compile(code, "README.md image folder example", "exec"), scope)
    assert scope["class_names"] == ["cat", "dog"]
    assert scope["model"].output_shape == (None, 2)
    assert scope["X"].shape == (5, 256, 256, 3) and scope["X_val"].shape == (1, 256, 256, 3)
    assert scope["model"].layers[0].output_shape == (None, 227, 227, 3)      # the random crop


def test_alexnet_guide_example_runs(tmp_path):
    """docs/alexnet_on_your_images.md's Python example, on a tiny folder, one epoch (CPU without a GPU)."""
    from conftest import HAS_GPU
    Image = pytest.importorskip("PIL.Image")
    guide = README.parent / "docs" / "alexnet_on_your_images.md"
    (code,) = re.findall(r"^```python\n(.*?)^```", guide.read_text(), re.MULTILINE | re.DOTALL)
    for name, color in (("cat", (200, 60, 20)), ("dog", (20, 60, 200))):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (260, 256 + i), color).save(tmp_path / name / f"{i}.png")
    for old, new in (('"~/imagenette"', repr(str(tmp_path))), ("epochs=90", "epochs=1"),
                     ("batch_size=128", "batch_size=4")):
        assert old in code
        code = code.replace(old, new)
    if not HAS_GPU:
        code = code.replace('model.to("cuda")', "pass  # no GPU here")
    scope = {}
    exec(compile(code, str(guide), "exec"), scope)
    assert scope["names"] == ["cat", "dog"] and scope["model"].optimizer.weight_decay == 5e-4
