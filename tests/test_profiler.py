"""fastcnn.profiler: every primitive call of a training step, timed and named by layer."""
import json

import numpy as np
import pytest

import fastcnn
from fastcnn import backend, cli, profiler
from fastcnn.backend import reference
from fastcnn.models import lenet5


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    return x, y


def compiled(device="cpu"):
    fastcnn.manual_seed(0)
    model = lenet5()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model.to(device)


def test_every_call_of_a_lenet5_step_is_named_by_layer_and_phase():
    model = compiled()
    prof = model.profile(*batch(), steps=2, warmup=1)
    rows = prof.rows()
    sites = {(r["layer"], r["phase"], r["op"]) for r in rows}
    conv1, conv2 = (layer.name for layer in model.layers if type(layer).__name__ == "Conv2D")
    assert (conv1, "forward", "conv2d_forward") in sites
    assert (conv2, "backward", "conv2d_backward_data") in sites
    assert (conv1, "backward", "conv2d_backward_weights") in sites
    assert (conv1, "backward", "conv2d_backward_data") not in sites   # the input needs no gradient
    assert ("-", "step", "softmax_cross_entropy") in sites and ("-", "step", "adam_update") in sites
    assert {r["variant"] for r in rows[:-1]} == {"reference"}
    assert all(r["calls"] == 1 for r in rows[:-1])                      # means over the 2 steps
    assert rows[-1]["layer"] == "other"
    # the rows and 'other' add up to the step; every grouping gives the same total
    for by in ("call", "op", "layer"):
        assert sum(r["us"] for r in prof.rows(by)) == pytest.approx(prof.step_us())
    conv_row = next(r for r in rows if r["op"] == "conv2d_forward" and r["layer"] == conv1)
    assert conv_row["shapes"] == "16x28x28x1, 5x5x1x6, 6"


def test_profiling_changes_neither_the_model_nor_the_backend():
    model = compiled()
    x, y = batch()
    before = model.get_weights()
    originals = {op: getattr(reference, op) for op in backend.PRIMITIVES}
    model.profile(x, y, steps=1, warmup=2)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.training_state.read_step() == 0
    assert {op: getattr(reference, op) for op in backend.PRIMITIVES} == originals
    assert not profiler.recording() and profiler.state.layer == "-"
    # ... also when the step raises
    with pytest.raises(ZeroDivisionError):
        with profiler.Profile(reference):
            with profiler.scope("conv", "forward"):
                1 / 0
    assert {op: getattr(reference, op) for op in backend.PRIMITIVES} == originals
    assert not profiler.recording() and profiler.state.layer == "-"


def test_calls_outside_the_marked_steps_are_left_out():
    a, b = np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)
    with profiler.Profile(reference) as prof:
        reference.add(a, b)                 # before the first step
        with prof.step():
            reference.add(a, b)
            reference.relu_forward(a)
        reference.add(a, b)                 # after it
    rows = prof.rows("op")
    assert {r["op"]: r["calls"] for r in rows[:-1]} == {"add": 1, "relu_forward": 1}
    assert len(prof.calls) == 4


def test_tables_and_json():
    prof = compiled().profile(*batch(), steps=1, warmup=0)
    text = prof.table()
    assert text.splitlines()[0].split()[:5] == ["layer", "phase", "op", "variant", "shapes"]
    assert "step:" in text.splitlines()[-1] and "host time" in text
    by_op = prof.rows("op")
    assert [r["us"] for r in by_op[:-1]] == sorted((r["us"] for r in by_op[:-1]), reverse=True)
    data = json.loads(json.dumps(prof.to_dict(), allow_nan=False))    # strict JSON: no NaN
    assert data["clock"] == "host" and data["steps"] == 1 and data["by_layer"][-1]["layer"] == "other"


def test_misuse_is_a_clear_error():
    model = compiled()
    x, y = batch()
    with pytest.raises(ValueError, match="by must be one of"):
        model.profile(x, y, steps=1, warmup=0).rows("kernel")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        model.profile(x, y, steps=0)
    with pytest.raises(ValueError, match="expects"):
        model.profile(x[:, :20], y, steps=1)
    with profiler.Profile(reference) as prof:
        with pytest.raises(RuntimeError, match="do not nest"):
            profiler.Profile(reference).__enter__()
    with pytest.raises(RuntimeError, match="no step was marked"):
        prof.rows()
    with pytest.raises(RuntimeError, match="inside `with Profile"):
        with prof.step():
            pass


def test_auto_variant_is_reported_with_its_tuned_choice(monkeypatch):
    from fastcnn.backend.cuda import auto
    x, w = np.zeros((2, 8, 8, 3), np.float32), np.zeros((3, 3, 3, 4), np.float32)
    args, kwargs = (x, w, None, (1, 1), (1, 1, 1, 1), True), {}
    fake_cuda = type("cuda_module", (), {"name": "cuda"})
    assert profiler._variant(fake_cuda, "conv2d_forward", args, kwargs) == "auto"   # not tuned yet
    monkeypatch.setitem(auto._choices, auto._key("conv2d_forward", args, kwargs), "winograd4")
    assert profiler._variant(fake_cuda, "conv2d_forward", args, kwargs) == "auto:winograd4"
    with fastcnn.kernels.using("conv2d_forward", "implicit_gemm"):
        assert profiler._variant(fake_cuda, "conv2d_forward", args, kwargs) == "implicit_gemm"


def test_cli_profile_on_the_cpu(capsys, tmp_path):
    out_json = tmp_path / "p.json"
    code = cli.main(["profile", "lenet5", "--device", "cpu", "--batch-size", "8", "--steps", "1",
                     "--warmup", "0", "--by", "layer", "--json", str(out_json)])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "profile: lenet5, batch 8" in out and "backend: reference" in out
    assert out.splitlines()[2].split()[:2] == ["layer", "calls"]
    data = json.loads(out_json.read_text())
    assert data["model"] == "lenet5" and data["batch_size"] == 8 and data["clock"] == "host"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["profile", "lenet5", "--device", "cpu", "--steps", "0"])
    assert exit_.value.code == 2 and "argument --steps: must be >= 1" in capsys.readouterr().err


@pytest.mark.gpu
def test_profile_on_the_gpu_times_kernels_with_events(capsys):
    model = compiled("cuda")
    prof = model.profile(*batch(200), steps=3, warmup=1)
    rows = prof.rows()
    assert prof.clock_name == "gpu"
    assert any(r["variant"].startswith("auto:") for r in rows)       # tuned in the warm-up step
    assert all(r["us"] >= 0 for r in rows[:-1]) and prof.step_us() > 0
    assert sum(r["us"] for r in rows[:-1]) <= prof.step_us() * 1.001  # one stream: intervals nest in the step
    code = cli.main(["profile", "alexnet", "--device", "cuda", "--batch-size", "8", "--steps", "1"])
    out, _ = capsys.readouterr()
    assert code == 0 and "gpu us" in out and "host us" in out
