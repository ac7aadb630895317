"""Round trips against Keras 3 itself (PyTorch's CPU build as its backend): what Keras
saves, fastcnn loads and predicts alike; what fastcnn saves, Keras loads and predicts
alike.  Skipped where Keras (or its backend) is not installed."""
import os

import numpy as np
import pytest

import fastcnn

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
pytest.importorskip("h5py")
if int(keras.__version__.split(".")[0]) < 3:
    pytest.skip(f"Keras 3 needed, found {keras.__version__}", allow_module_level=True)

K = keras.layers
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras 3.15 with NumPy 2
TOL = dict(rtol=1e-5, atol=1e-6)


def keras_lenet5():
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        K.Conv2D(6, 5, padding="same", activation="relu", name="conv2d"), K.MaxPooling2D(2, name="max_pooling2d"),
        K.Conv2D(16, 5, padding="valid", activation="relu", name="conv2d_1"),
        K.MaxPooling2D(2, name="max_pooling2d_1"), K.Flatten(name="flatten"),
        K.Dense(120, activation="relu", name="dense"), K.Dense(84, activation="relu", name="dense_1"),
        K.Dense(10, activation="softmax", name="dense_2")])


def images(n, shape=(28, 28, 1), seed=0):
    return np.random.default_rng(seed).random((n,) + shape, dtype=np.float32)


def test_keras_saved_model_and_weights_open_in_fastcnn(tmp_path):
    km = keras_lenet5()
    km.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    x = images(16)
    km.fit(x, np.eye(10, dtype=np.float32)[np.arange(16) % 10], epochs=1, batch_size=8, verbose=0)
    km.save(tmp_path / "lenet5.keras")
    km.save_weights(tmp_path / "lenet5.weights.h5")
    expected = km.predict(x, verbose=0)

    loaded = fastcnn.models.load_model(tmp_path / "lenet5.keras")
    assert loaded.count_params() == 61706
    np.testing.assert_allclose(loaded.predict(x), expected, **TOL)
    ours = fastcnn.models.lenet5()
    ours.load_weights(tmp_path / "lenet5.weights.h5")
    np.testing.assert_allclose(ours.predict(x), expected, **TOL)


def test_fastcnn_saved_model_and_weights_open_in_keras(tmp_path):
    fastcnn.manual_seed(1)
    model = fastcnn.models.lenet5()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    x = images(16, seed=1)
    model.fit(x, np.eye(10, dtype=np.float32)[np.arange(16) % 10], epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "lenet5.keras")
    model.save_weights(tmp_path / "lenet5.weights.h5")
    expected = model.predict(x)

    km = keras.models.load_model(tmp_path / "lenet5.keras")
    assert [l.name for l in km.layers] == [l.name for l in model.layers]
    np.testing.assert_allclose(km.predict(x, verbose=0), expected, **TOL)
    km2 = keras_lenet5()
    km2.load_weights(tmp_path / "lenet5.weights.h5")
    np.testing.assert_allclose(km2.predict(x, verbose=0), expected, **TOL)


def test_grouped_convolution_and_frozen_layer_agree_both_ways(tmp_path):
    """Keras's groups split the channels as fastcnn's (AlexNet's two towers); trainable=False
    travels in the config."""
    km = keras.Sequential([keras.Input(shape=(9, 9, 4)), K.Conv2D(6, 3, groups=2, activation="relu", name="conv2d"),
                           K.Conv2D(4, 3, strides=2, padding="same", groups=2, name="conv2d_1", trainable=False),
                           K.Activation("relu", name="activation"), K.Flatten(name="flatten"),
                           K.Dropout(0.5, name="dropout"), K.Dense(3, activation="softmax", name="dense")])
    x = images(5, (9, 9, 4), seed=2)
    km.save(tmp_path / "k.keras")
    ours = fastcnn.models.load_model(tmp_path / "k.keras")
    assert ours.get_layer("conv2d_1").trainable is False and ours.get_layer("conv2d").groups == 2
    np.testing.assert_allclose(ours.predict(x), km.predict(x, verbose=0), **TOL)
    ours.save(tmp_path / "f.keras")
    back = keras.models.load_model(tmp_path / "f.keras")
    assert back.get_layer("conv2d_1").trainable is False
    np.testing.assert_allclose(back.predict(x, verbose=0), km.predict(x, verbose=0), **TOL)


def test_cross_entropy_equals_keras_until_keras_clips():
    """Keras clips the softmax probabilities to [1e-7, 1 - 1e-7] before the log; fastcnn's
    fused softmax + cross-entropy does not (README, Losses): the same loss until a
    probability falls below 1e-7, then Keras's stops at -log(1e-7) = 16.118."""
    w = np.array([[1.0, -1.0, 0.5], [0.0, 20.0, 0.0]], np.float32)
    x = np.array([[0.3, 0.1], [0.0, 1.0]], np.float32)   # row 2: logits (0, 20, 0), label 0
    y = np.eye(3, dtype=np.float32)[[0, 0]]
    km = keras.Sequential([keras.Input(shape=(2,)), K.Dense(3, activation="softmax", name="dense")])
    km.compile(loss="categorical_crossentropy")
    km.set_weights([w, np.zeros(3, np.float32)])
    ours = fastcnn.Sequential([fastcnn.layers.Dense(3, activation="softmax", input_shape=(2,))])
    ours.compile(loss="categorical_crossentropy")
    ours.set_weights([w, np.zeros(3, np.float32)])
    exact = -np.log(ours.predict(x).astype(np.float64)[[0, 1], [0, 0]])
    assert ours.evaluate(x[:1], y[:1], verbose=0) == pytest.approx(km.evaluate(x[:1], y[:1], verbose=0), rel=1e-6)
    assert ours.evaluate(x[1:], y[1:], verbose=0) == pytest.approx(20.0, rel=1e-6) == pytest.approx(exact[1], rel=1e-6)
    assert km.evaluate(x[1:], y[1:], verbose=0) == pytest.approx(-np.log(1e-7), rel=1e-5)


@pytest.mark.parametrize("name, kwargs", [
    ("RMSprop", {}), ("RMSprop", {"momentum": 0.9}), ("RMSprop", {"centered": True}),
    ("RMSprop", {"momentum": 0.5, "centered": True, "rho": 0.8, "epsilon": 1e-5}),
    ("AdamW", {}), ("AdamW", {"weight_decay": 0.1, "beta_1": 0.8}), ("Adam", {"weight_decay": 0.01}),
])
def test_optimizers_follow_keras(name, kwargs):
    """Five steps of fastcnn's optimizer (the NumPy reference, as a model runs it) against Keras's on
    the same parameters and gradients: the same rule and the same defaults."""
    from fastcnn.backend import reference
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(50).astype(np.float32)
    grads = [rng.standard_normal(50).astype(np.float32) for _ in range(5)]
    var = keras.Variable(p0.copy())
    theirs = getattr(keras.optimizers, name)(learning_rate=0.01, **kwargs)
    ours = getattr(fastcnn.optimizers, name)(learning_rate=0.01, **kwargs)
    ours.build(reference, 50)
    p, step = p0.copy(), np.zeros(1, np.int32)
    for g in grads:
        theirs.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        ours.apply(p, g, step)
        reference.increment(step)
    # a few float32 ulps of |p| <= 3 (the two sum in different orders); a wrong rule is off by > 1e-5
    np.testing.assert_allclose(p, keras.ops.convert_to_numpy(var), rtol=1e-6, atol=1e-6)
    defaults = getattr(keras.optimizers, name)()
    for key, value in getattr(fastcnn.optimizers, name)().get_config().items():
        default = defaults.get_config()[key]
        default = 0.0 if key == "weight_decay" and default is None else default   # Keras: None for no decay
        assert default == (pytest.approx(value) if isinstance(value, float) else value), key


@pytest.mark.parametrize("optimizer, expected", [
    (lambda: keras.optimizers.RMSprop(0.002, momentum=0.5), "RMSprop(learning_rate=0.002, rho=0.9, momentum=0.5"),
    (lambda: keras.optimizers.AdamW(weight_decay=0.01), "AdamW(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, weight_decay=0.01)"),
    (lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), "SGD(learning_rate=0.1, momentum=0.9, nesterov=True"),
])
def test_keras_archive_is_compiled_as_keras_compiled_it(tmp_path, optimizer, expected):
    km = keras_lenet5()
    km.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer(), metrics=["acc"])
    km.save(tmp_path / "m.keras")
    model = fastcnn.models.load_model(tmp_path / "m.keras")
    assert repr(model.optimizer).startswith(expected) and model.loss.name == "sparse_categorical_crossentropy"
    assert model.metrics_names == ["loss", "acc"]
    x = images(8, seed=3)
    model.train_on_batch(x, np.arange(8) % 10)   # ready to train on
    assert fastcnn.models.load_model(tmp_path / "m.keras", compile=False).optimizer is None


def test_keras_archive_with_what_fastcnn_lacks_loads_uncompiled_with_a_warning(tmp_path):
    km = keras_lenet5()
    km.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(clipnorm=1.0))
    km.save(tmp_path / "m.keras")
    with pytest.warns(UserWarning, match="not compiled: fastcnn has no optimizer Adam with clipnorm=1.0"):
        model = fastcnn.models.load_model(tmp_path / "m.keras")
    assert model.optimizer is None and model.count_params() == 61706


def test_cli_evaluates_and_predicts_with_keras_weights(tmp_path, capsys):
    from PIL import Image

    from fastcnn import cli
    from fastcnn.datasets import load_mnist_sample, prepare_images, to_categorical
    (x, y), (xv, yv) = load_mnist_sample()
    km = keras_lenet5()
    km.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    km.fit(prepare_images(x[:1000]), to_categorical(y[:1000], 10), epochs=1, batch_size=100, verbose=0)
    km.save_weights(tmp_path / "lenet5.weights.h5")
    km.save(tmp_path / "lenet5.keras")
    _, accuracy = km.evaluate(prepare_images(xv), to_categorical(yv, 10), verbose=0)
    for name in ("lenet5.weights.h5", "lenet5.keras"):
        assert cli.main(["evaluate", "lenet5", "--weights", str(tmp_path / name), "--device", "cpu"]) == 0
        assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out.replace("accuracy: ", "accuracy ")
    Image.fromarray(xv[0].reshape(28, 28)).save(tmp_path / "digit.png")
    assert cli.main(["predict", "lenet5", "--weights", str(tmp_path / "lenet5.weights.h5"), "--device", "cpu",
                     str(tmp_path / "digit.png")]) == 0
    top = int(km.predict(prepare_images(xv[:1]), verbose=0).argmax())
    assert f"digit.png: {top} " in capsys.readouterr().out   # Keras's top class first
