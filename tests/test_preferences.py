"""The declared table of default kernel variants (fastcnn.backend.preferences) and how the
registry and fastcnn.kernels use it; no GPU needed."""
import subprocess
import sys

import pytest

import fastcnn
from fastcnn import backend, config
from fastcnn.backend import preferences, registry

kernels = fastcnn.kernels  # imports every variant source

TUNED_OPS = ("matmul", "dense_forward", "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights",
             "maxpool_forward", "maxpool_backward")

# Each op's default for float32 calls, the same under "highest" and "high" (auto picks TF32
# variants itself under "high"): pinned so that no change to the table or to a backend's
# registrations moves a default unnoticed.
DEFAULTS = {op: ("auto" if op in TUNED_OPS else "cuda") for op in backend.PRIMITIVES}


@pytest.fixture(autouse=True)
def _highest_after():
    yield
    config.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("precision", ["highest", "high"])
def test_every_default_is_pinned(precision):
    with config.float32_matmul_precision(precision):
        assert {op: kernels.get(op).name for op in kernels.ops()} == DEFAULTS


def test_the_table_names_primitives_only_and_each_of_them():
    assert set(preferences.PREFERRED) == set(backend.PRIMITIVES)
    assert set(preferences.TUNED) <= set(preferences.PREFERRED)
    assert set(kernels.ops()) == set(backend.PRIMITIVES)


@pytest.mark.parametrize("kind", preferences.Preferred._fields)
def test_every_registered_preference_is_honoured(kind):
    honoured = 0
    with config.float32_matmul_precision("high" if kind == "high" else "highest"):
        for op, preferred in preferences.PREFERRED.items():
            name = getattr(preferred, kind)
            if name not in kernels.variants(op):
                continue  # not in this copy (a variant still to come, Numba absent): the fixed rule picks
            variant = kernels.lookup(op, name)
            dtype = "bfloat16" if kind == "bfloat16" else "float32"
            if kind != "bfloat16":  # the float32 columns name float32 variants allowed at their precision
                assert dtype in variant.dtypes and (variant.precision != "tf32" or kind == "high"), (op, name)
            elif dtype not in variant.dtypes:
                continue  # a step kernel not templated over bfloat16 yet
            assert variant.source == "cuda", (op, name)
            assert kernels.get(op, dtype=dtype).name == name, (op, kind)
            honoured += 1
    assert honoured >= (0 if kind == "bfloat16" else len(backend.PRIMITIVES))


def test_an_absent_preference_falls_back_to_the_first_cuda_c_variant_of_its_kind(monkeypatch):
    monkeypatch.setattr(registry, "_variants", {op: dict(t) for op, t in registry._variants.items()})
    del registry._variants["matmul"]["auto"]
    assert kernels.get("matmul").name == "naive"              # first CUDA C fp32 variant
    with config.float32_matmul_precision("high"):
        assert kernels.get("matmul").name == "tc_tf32"        # first CUDA C TF32 one
    del registry._variants["matmul"]["tiled"]
    assert kernels.get("matmul").name == "naive"
    registry._variants["matmul"].pop("tc_bf16", None)
    registry.register("matmul", "numba_bf16", lambda: None, "numba", dtypes=("bfloat16",))
    registry.register("matmul", "late_bf16", lambda: None, "cuda", precision="bf16", dtypes=("bfloat16",))
    first = kernels.variants("matmul", source="cuda", dtype="bfloat16")[0]  # late_bf16 unless others take bfloat16
    assert kernels.get("matmul", dtype="bfloat16").name == first != "numba_bf16"


def test_no_backend_declares_defaults():
    with pytest.raises(TypeError):
        registry.register("matmul", "x", lambda: None, "cuda", default=True)


def _fresh_modules(statement):
    code = f"import sys\n{statement}\nprint(sorted(m for m in sys.modules if m.startswith('fastcnn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return eval(out)


def test_the_registry_imports_no_backend():
    modules = _fresh_modules("import fastcnn.backend.registry")
    assert "fastcnn.backend.registry" in modules
    assert not [m for m in modules if m.startswith(("fastcnn.backend.cuda", "fastcnn.backend.numba"))], modules


def test_import_fastcnn_leaves_the_variant_sources_to_fastcnn_kernels():
    assert "fastcnn.kernels" not in _fresh_modules("import fastcnn")
    modules = _fresh_modules("import fastcnn; fastcnn.kernels.ops()")
    assert {"fastcnn.kernels", "fastcnn.backend.cuda", "fastcnn.backend.numba"} <= set(modules)


def test_a_source_that_fails_to_import_is_a_reason(monkeypatch):
    monkeypatch.setattr(kernels, "_load_errors", {})
    monkeypatch.setattr(kernels, "SOURCES", ("fastcnn.backend.no_such_source",))
    kernels._load()
    assert list(kernels.load_errors()) == ["fastcnn.backend.no_such_source"]
    assert "ModuleNotFoundError" in kernels.load_errors()["fastcnn.backend.no_such_source"]
