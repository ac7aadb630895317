"""Mixed precision (Keras's dtype policies): the Policy API, layers' dtype=, configs and files."""
import json

import numpy as np
import pytest

import fastcnn
from fastcnn import dtypes, keras_files, layers
from fastcnn import mixed_precision as mp

BF16 = dtypes.bfloat16


@pytest.fixture(autouse=True)
def _float32_after():
    yield
    mp.set_global_policy("float32")


def small_model(dtype="mixed_bfloat16"):
    return fastcnn.Sequential([
        layers.Conv2D(4, 3, padding="same", activation="relu", input_shape=(8, 8, 2), dtype=dtype),
        layers.MaxPool2D(2, dtype=dtype), layers.Flatten(dtype=dtype),
        layers.Dense(6, activation="relu", dtype=dtype), layers.Dense(3, activation="softmax", dtype=dtype)])


# ---------------------------------------------------------------- the Policy API

def test_policies_name_their_compute_and_variable_dtypes():
    assert fastcnn.mixed_precision is mp
    p = mp.Policy("mixed_bfloat16")
    assert (p.name, p.compute_dtype, p.variable_dtype) == ("mixed_bfloat16", "bfloat16", "float32")
    q = mp.Policy("float32")
    assert (q.name, q.compute_dtype, q.variable_dtype) == ("float32", "float32", "float32")
    assert p.mixed and not q.mixed
    assert repr(p) == '<DTypePolicy "mixed_bfloat16">'
    assert p == mp.Policy("mixed_bfloat16") != q
    assert mp.Policy.from_config(p.get_config()) == p


def test_mixed_float16_and_unknown_policies_are_refused_by_name():
    with pytest.raises(ValueError, match="mixed_float16.*not offered yet"):
        mp.Policy("mixed_float16")
    with pytest.raises(ValueError, match="unknown dtype policy 'float16'"):
        mp.Policy("float16")
    with pytest.raises(ValueError, match="not offered yet"):
        layers.Dense(3, dtype="mixed_float16")
    with pytest.raises(TypeError, match="dtype must be"):
        layers.Dense(3, dtype=np.float32)


def test_global_policy_applies_to_layers_made_afterwards():
    assert mp.global_policy() == mp.Policy("float32")
    before = layers.Dense(3)
    mp.set_global_policy("mixed_bfloat16")
    assert mp.global_policy().name == "mixed_bfloat16"
    after, pinned = layers.Dense(3), layers.Dense(3, dtype="float32")
    assert before.dtype_policy.name == "float32" and after.dtype_policy.name == "mixed_bfloat16"
    assert pinned.dtype_policy.name == "float32"
    assert (after.compute_dtype, after.variable_dtype, after.dtype) == ("bfloat16", "float32", "float32")
    mp.set_global_policy(mp.Policy("float32"))
    assert layers.Conv2D(2, 3).compute_dtype == "float32"


# ---------------------------------------------------------------- configs and files

def test_layer_config_carries_the_policy_in_keras_form():
    layer = layers.Conv2D(4, 3, dtype="mixed_bfloat16")
    config = layer.get_config()
    assert config["dtype"] == {"module": "keras", "class_name": "DTypePolicy",
                               "config": {"name": "mixed_bfloat16"}, "registered_name": None}
    again = layers.Conv2D.from_config(config)
    assert again.dtype_policy == layer.dtype_policy and again.get_config() == config
    assert layers.Dense(2).get_config()["dtype"]["config"] == {"name": "float32"}


def test_model_json_and_keras_archive_keep_the_policy_and_float32_weights(tmp_path):
    h5py = pytest.importorskip("h5py")
    model = small_model()
    text = model.to_json()
    entries = json.loads(text)["config"]["layers"][1:]
    assert {e["config"]["dtype"]["config"]["name"] for e in entries} == {"mixed_bfloat16"}
    again = fastcnn.models.model_from_json(text)
    assert [l.dtype_policy.name for l in again.layers] == ["mixed_bfloat16"] * 5
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    loaded = fastcnn.models.load_model(tmp_path / "m.keras")
    assert [l.dtype_policy.name for l in loaded.layers] == ["mixed_bfloat16"] * 5
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    with h5py.File(tmp_path / "m.weights.h5", "r") as f:
        assert f["layers/conv2d/vars/0"].dtype == np.float32


def test_a_keras_config_with_another_policy_is_refused_by_name():
    config = small_model().get_config()
    config["layers"][1]["config"]["dtype"] = {"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}
    with pytest.raises(ValueError, match="layer 'conv2d' has dtype policy.*not offered yet"):
        keras_files.model_from_config(config)
    config["layers"][1]["config"]["dtype"] = "float64"
    with pytest.raises(ValueError, match="unknown dtype policy 'float64'"):
        keras_files.model_from_config(config)


# ---------------------------------------------------------------- computing under mixed_bfloat16

def lenet(dtype="mixed_bfloat16", seed=0):
    fastcnn.manual_seed(seed)
    mp.set_global_policy(dtype)
    model = fastcnn.models.lenet5()
    mp.set_global_policy("float32")
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]


def test_layers_compute_and_pass_bfloat16_with_float32_weights_and_loss():
    model = lenet()
    x, y = batch()
    model.train_on_batch(x, y)
    seen = []
    h = fastcnn.Tensor(x)
    for layer in model.layers[:-1]:
        h = layer(h)
        seen.append(h.dtype)
    assert seen == [BF16] * (len(model.layers) - 1)
    assert model.layers[-1](h).dtype == np.float32            # the softmax, in float32
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert model.predict(x[:4]).dtype == np.float32
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1


def test_the_bfloat16_copy_follows_every_update_and_set_weights():
    model = lenet()
    x, y = batch()

    def copy_is_rounded_master():
        return all(np.array_equal(p.bf16_view.view(np.uint16), p.data.astype(BF16).view(np.uint16))
                   for p in model.parameters())
    model.train_on_batch(x, y)
    assert copy_is_rounded_master()
    for _ in range(2):
        model.train_on_batch(x, y)
    assert copy_is_rounded_master()
    weights = [w + np.float32(0.01) for w in model.get_weights()]
    model.set_weights(weights)
    assert copy_is_rounded_master()
    model.layers[0].set_weights([w * np.float32(2) for w in model.layers[0].get_weights()])
    assert copy_is_rounded_master()


def test_weight_gradients_land_float32_and_activation_gradients_are_bfloat16():
    model = lenet()
    x, y = batch(8)
    state = model.ready_to_train()
    logits = model._forward(fastcnn.Tensor(x), True, True)
    assert logits.dtype == BF16
    from fastcnn.backend import reference as ref
    dlogits = ref.softmax_cross_entropy(logits.data, y, np.zeros(2))
    assert dlogits.dtype == BF16
    logits.backward(dlogits)
    assert state.grads.dtype == np.float32 and np.count_nonzero(state.grads) > 0
    for p in model.parameters():
        assert p.grad is p.grad_view or np.shares_memory(p.grad, state.grads)


def test_one_mixed_step_is_close_to_the_float32_step():
    x, y = batch(64, seed=3)
    a, b = lenet("float32", seed=4), lenet("mixed_bfloat16", seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))
    la, lb = a.train_on_batch(x, y)[0], b.train_on_batch(x, y)[0]
    assert abs(la - lb) < 0.02 * la
    # the float32 gradients of the two steps: 7% apart measured (random images and labels: much
    # of the gradient cancels); a missing or misplaced gradient would be ~100% off
    ga, gb = a.training_state.grads, b.training_state.grads
    assert np.linalg.norm(ga - gb) < 0.1 * np.linalg.norm(ga)


def test_a_grouped_convolution_trains_under_mixed_bfloat16():
    """AlexNet's two towers: the bfloat16 kernel is sliced per group; each slice's gradient comes back
    float32 onto the one float32 kernel."""
    def grouped(policy):
        fastcnn.manual_seed(5)
        with mp.policy_scope(policy):
            model = fastcnn.Sequential([layers.Conv2D(6, 3, groups=2, activation="relu", input_shape=(9, 9, 4)),
                                        layers.Conv2D(4, 3, strides=2, padding="same", groups=2), layers.Flatten(),
                                        layers.Dense(3, activation="softmax")])
        model.compile(optimizer="sgd")
        return model
    rng = np.random.default_rng(6)
    x, y = rng.random((8, 9, 9, 4), dtype=np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    a, b = grouped("float32"), grouped("mixed_bfloat16")
    la, lb = a.train_on_batch(x, y), b.train_on_batch(x, y)
    assert abs(la - lb) < 0.02 * la
    ga, gb = a.training_state.grads, b.training_state.grads
    assert np.linalg.norm(ga - gb) < 0.05 * np.linalg.norm(ga)
    assert all(np.array_equal(p.bf16_view.view(np.uint16), p.data.astype(BF16).view(np.uint16))
               for p in b.parameters())


def test_functional_ops_read_a_float32_weight_in_bfloat16_and_give_it_a_float32_gradient():
    from fastcnn import functional as F
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((5, 6), dtype=np.float32)
    w = fastcnn.Parameter(rng.standard_normal((6, 4), dtype=np.float32))
    b = fastcnn.Parameter(rng.standard_normal(4, dtype=np.float32))
    x = fastcnn.Tensor(xs, requires_grad=True)
    y = F.dense(F.cast(x, "bfloat16"), w, b)   # no stored copy: the weight is cast for the call
    assert y.dtype == BF16
    gy = rng.standard_normal((5, 4)).astype(BF16)
    y.backward(gy)
    x16, g32 = xs.astype(BF16).astype(np.float32), gy.astype(np.float32)
    assert w.grad.dtype == b.grad.dtype == np.float32 and x.grad.dtype == np.float32
    assert np.array_equal(w.grad, x16.T @ g32) and np.allclose(b.grad, g32.sum(axis=0), rtol=1e-6)
    w16 = w.data.astype(BF16).astype(np.float32)
    assert np.array_equal(x.grad, (g32 @ w16.T).astype(BF16).astype(np.float32))   # rounded once, then widened


def test_summary_shows_the_policy():
    lines = []
    lenet().summary(print_fn=lines.append)
    assert "Dtype policy: mixed_bfloat16 (compute bfloat16, variables float32)" in lines
    lines = []
    small_model("float32").summary(print_fn=lines.append)
    assert "Dtype policy: float32 (compute float32, variables float32)" in lines


def test_checkpoints_record_the_policy_and_resume_refuses_another(tmp_path):
    model = lenet()
    x, y = batch()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model.save_checkpoint(tmp_path / "c.npz", epoch=1)
    again = lenet()
    assert again.load_checkpoint(tmp_path / "c.npz") == 1
    assert all(np.array_equal(u, v) for u, v in zip(again.get_weights(), model.get_weights()))
    assert np.array_equal(again.training_state.params_bf16.view(np.uint16),
                          model.training_state.params_bf16.view(np.uint16))
    with pytest.raises(ValueError, match="dtype policies 'mixed_bfloat16'.*'float32'.*--precision bf16"):
        lenet("float32").load_checkpoint(tmp_path / "c.npz")
    lenet("float32").save_checkpoint(tmp_path / "f.npz", epoch=0)
    with pytest.raises(ValueError, match="dtype policies 'float32'.*'mixed_bfloat16'"):
        lenet().load_checkpoint(tmp_path / "f.npz")


# ---------------------------------------------------------------- against Keras 3 itself

@pytest.fixture
def keras():
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    module = pytest.importorskip("keras")
    if int(module.__version__.split(".")[0]) < 3:
        pytest.skip(f"Keras 3 needed, found {module.__version__}")
    yield module
    module.config.set_dtype_policy("float32")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_a_mixed_bfloat16_layer_agrees_with_keras_within_bfloat16_rounding(keras, kind):
    """Keras rounds x @ w to bfloat16, then adds the bias rounded to bfloat16 and rounds again;
    fastcnn adds the float32 bias before its one rounding.  Each rounding is within 2^-8 of its
    value, so the two differ by at most 2^-8 (|x @ w| + |b| + 2 |y|)."""
    rng = np.random.default_rng(11)
    if kind == "dense":
        x = rng.standard_normal((16, 40), dtype=np.float32)
        ours = layers.Dense(12, activation="relu", dtype="mixed_bfloat16")
        theirs = keras.layers.Dense(12, activation="relu", dtype="mixed_bfloat16")
        shape = (40,)
    else:
        x = rng.standard_normal((4, 9, 9, 3), dtype=np.float32)
        ours = layers.Conv2D(5, 3, padding="same", activation="relu", dtype="mixed_bfloat16")
        theirs = keras.layers.Conv2D(5, 3, padding="same", activation="relu", dtype="mixed_bfloat16")
        shape = (9, 9, 3)
    ours.build(shape)
    theirs.build((None,) + shape)
    weights = [rng.standard_normal(w.shape).astype(np.float32) * np.float32(0.3) for w in ours.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    y = ours(x)
    expected = keras.ops.convert_to_numpy(keras.ops.cast(theirs(x), "float32"))
    assert y.dtype == BF16 and str(theirs(x).dtype).endswith("bfloat16")
    got = y.numpy().astype(np.float32)
    no_bias = ours.__class__.from_config({**ours.get_config(), "use_bias": False, "activation": "linear"})
    no_bias.build(shape)
    no_bias.set_weights(weights[:1])
    xw = np.abs(no_bias(x).numpy().astype(np.float64))
    bound = 2.0 ** -8 * (xw + np.abs(weights[1]) + 2 * np.abs(expected)) + 1e-7
    assert np.all(np.abs(got - expected) <= bound)
    assert np.mean(got == expected) > 0.8   # mostly bit for bit


def test_the_numba_backend_refuses_the_policy_before_any_kernel():
    from fastcnn import backend
    try:
        backend.get("numba")
    except backend.BackendUnavailable as exc:
        pytest.skip(str(exc))
    model = lenet()
    with pytest.raises(ValueError, match="numba backend computes in float32 only.*mixed_bfloat16"):
        model.to("cuda", backend="numba")
    assert model.backend.name == "reference" and model.train_on_batch(*batch(8))   # left as it was
    placed_first = fastcnn.Sequential().to("cuda", backend="numba")   # placed before it has layers
    placed_first.add(layers.Dense(3, activation="softmax", dtype="mixed_bfloat16", input_shape=(4,)))
    with pytest.raises(ValueError, match="numba backend computes in float32 only"):
        placed_first.compile(optimizer="sgd")
    float32 = lenet("float32").to("cuda", backend="numba")
    assert float32.backend.name == "numba"


# ---------------------------------------------------------------- the command line: --precision bf16

def _cli(capsys, *argv):
    from fastcnn import cli
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


QUICK = ("--device", "cpu", "--limit", "200", "--batch-size", "100", "--verbose", "0", "--epochs", "1")


def test_train_bf16_records_it_evaluate_and_predict_read_it_back_resume_refuses_another(capsys, tmp_path,
                                                                                         monkeypatch):
    run = tmp_path / "run"
    code, out, err = _cli(capsys, "train", "lenet5", "--precision", "bf16", "--out", str(run), *QUICK)
    assert code == 0, err
    assert "precision: bf16 (dtype policy mixed_bfloat16" in out
    assert json.loads((run / "history.json").read_text())["precision"] == "bf16"
    assert mp.global_policy().name == "float32"   # the run's policy ends with its model
    with np.load(run / "weights.npz") as weights:
        assert {weights[k].dtype for k in weights.files} == {np.dtype(np.float32)}

    built = []
    from fastcnn.cli import common
    real = common.build_model
    monkeypatch.setattr(common, "build_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    from fastcnn.cli import evaluate
    monkeypatch.setattr(evaluate, "build_model", common.build_model)
    weights = str(run / "weights.npz")
    code, out, err = _cli(capsys, "evaluate", "lenet5", "--weights", weights, "--device", "cpu", "--limit", "100")
    assert code == 0, err
    assert "--precision bf16" in out and built[-1].layers[0].dtype_policy.name == "mixed_bfloat16"
    png = tmp_path / "digit.png"
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    code, out, err = _cli(capsys, "predict", "lenet5", str(png), "--weights", weights, "--device", "cpu")
    assert code == 0, err
    assert "--precision bf16" in out and built[-1].layers[0].dtype_policy.name == "mixed_bfloat16"

    code, out, err = _cli(capsys, "train", "lenet5", "--out", str(run), "--resume", *QUICK[:-1], "2")
    assert code == 2 and "dtype policies 'mixed_bfloat16'" in err and "--precision bf16" in err
    code, out, err = _cli(capsys, "train", "lenet5", "--precision", "bf16", "--out", str(run), "--resume",
                          *QUICK[:-1], "2")
    assert code == 0, err


def test_profile_bf16_records_it_and_shows_activation_memory(capsys, tmp_path):
    sizes = {}
    for precision in ("fp32", "bf16"):
        out_json = tmp_path / f"{precision}.json"
        code, out, err = _cli(capsys, "profile", "lenet5", "--device", "cpu", "--batch-size", "16", "--steps", "1",
                              "--precision", precision, "--json", str(out_json))
        assert code == 0, err
        assert f"on backend reference, precision {precision}" in out and "activation memory per step:" in out
        data = json.loads(out_json.read_text())
        assert data["precision"] == precision
        sizes[precision] = data["activation_bytes"]
    # Per image, what LeNet-5's step holds for backward: conv1's output 28*28*6, pool1's 14*14*6 (conv2's
    # input), conv2's output 10*10*16, pool2's 5*5*16 (flatten is a view), the dense outputs 120, 84, 10
    # and the loss gradient 10: 8104 values; the argmaxes 14*14*6 + 5*5*16 bytes; under bf16 also
    # conv1's bfloat16 copy of the input, 784 values (the float32 batch itself is not counted).
    values, argmax = 4704 + 1176 + 1600 + 400 + 120 + 84 + 10 + 10, 1176 + 400
    assert sizes == {"fp32": 16 * (4 * values + argmax), "bf16": 16 * (2 * (values + 784) + argmax)}


# ---------------------------------------------------------------- accuracy

@pytest.mark.slow
def test_lenet5_mixed_bfloat16_reaches_96_percent_on_the_bundled_sample():
    """The seed's settings (Adam, batch 200, 10 epochs, seed 0) under mixed_bfloat16, on the CPU
    reference's bfloat16 (rounded as the GPU rounds): at least 96% validation accuracy (fp32: 96.75%).
    About 100 s on 2 cores."""
    from fastcnn.datasets import load_mnist_sample, prepare_images, to_categorical
    (x0, y0), (x1, y1) = load_mnist_sample()
    model = lenet()
    model.fit(prepare_images(x0), to_categorical(y0, 10), epochs=10, batch_size=200, verbose=0)
    assert model.training_state.params_bf16 is not None
    loss, accuracy = model.evaluate(prepare_images(x1), to_categorical(y1, 10), verbose=0)
    assert accuracy >= 0.96, (loss, accuracy)


def test_readme_mixed_precision_example_runs():
    from test_readme import block
    scope = {}
    exec(compile(block('set_global_policy("mixed_bfloat16")'), "README.md mixed precision example", "exec"), scope)
    assert scope["model"].layers[0].dtype_policy.name == "mixed_bfloat16"
    assert mp.global_policy().name == "float32"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_keras_loads_a_mixed_bfloat16_archive_as_mixed_bfloat16(keras, tmp_path):
    pytest.importorskip("h5py")
    model = small_model()
    model.save(tmp_path / "m.keras")
    km = keras.models.load_model(tmp_path / "m.keras")
    assert [l.dtype_policy.name for l in km.layers] == ["mixed_bfloat16"] * 5
    x = np.random.default_rng(12).random((6, 8, 8, 2), dtype=np.float32)
    theirs = keras.ops.convert_to_numpy(keras.ops.cast(km(x), "float32"))
    np.testing.assert_allclose(model.predict(x), theirs, atol=2e-2)   # softmax outputs, bfloat16 apart
    assert {w.dtype for w in km.get_weights()} == {np.dtype(np.float32)}
