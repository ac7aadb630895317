"""The layer and model methods Keras users call: weights and their views, trainable
freezing, configs, Input, get_layer, pop, the *_on_batch methods, evaluate's dict,
metric names, History.params, initializers by Keras's names."""
import numpy as np
import pytest

import fastcnn
from fastcnn import initializers
from fastcnn.datasets import load_mnist_sample, prepare_images, to_categorical
from fastcnn.layers import Conv2D, Dense, Dropout, Flatten, Input, InputLayer, MaxPool2D


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = load_mnist_sample()
    return prepare_images(x[:400]), to_categorical(y[:400], 10)


def lenet(seed=0, optimizer="adam", metrics=("accuracy",)):
    fastcnn.manual_seed(seed)
    model = fastcnn.models.lenet5()
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=list(metrics))
    return model


def test_layer_weights_kernel_bias_and_set_weights():
    model = fastcnn.models.lenet5()
    conv = model.get_layer("conv2d")
    assert conv is model.get_layer(0) is model.get_layer(index=0) and model.get_layer(-1).name == "dense_2"
    assert [w.name for w in conv.weights] == ["kernel", "bias"] and conv.kernel.shape == (5, 5, 1, 6)
    assert conv.bias.shape == (6,) and conv.trainable_weights == conv.weights and conv.non_trainable_weights == []
    assert conv.input_shape == (None, 28, 28, 1) and conv.output_shape == (None, 28, 28, 6)
    new = [np.full((5, 5, 1, 6), 0.5, np.float32), np.arange(6, dtype=np.float32)]
    conv.set_weights(new)
    np.testing.assert_array_equal(model.get_weights()[1], np.arange(6))   # the model's buffer itself
    np.testing.assert_array_equal(conv.get_weights()[0], new[0])
    np.testing.assert_array_equal(conv.bias.numpy(), np.arange(6))
    with pytest.raises(ValueError, match=r"weight conv2d/bias has shape \(6,\), got an array of shape \(5,\)"):
        conv.set_weights([new[0], np.zeros(5)])
    with pytest.raises(ValueError, match="has 2 weights, set_weights got 1"):
        conv.set_weights(new[:1])
    with pytest.raises(AttributeError, match="has no kernel"):
        model.get_layer("flatten").kernel
    with pytest.raises(AttributeError, match="not built"):
        Dense(3).kernel
    with pytest.raises(ValueError, match=r"no layer named 'conv9'; the layers are \['conv2d'"):
        model.get_layer("conv9")
    with pytest.raises(ValueError, match="index 8 is out of range"):
        model.get_layer(8)
    assert len(model.weights) == 10 and model.weights[2] is model.get_layer("conv2d_1").kernel


def test_frozen_layers_are_left_alone_by_every_optimizer(digits):
    x, y = digits
    for optimizer in ("adam", fastcnn.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-3)):
        model = lenet(1, optimizer)
        for layer in model.layers[:4]:
            layer.trainable = False
        before = model.get_weights()
        assert len(model.trainable_weights) == 6 and len(model.non_trainable_weights) == 4
        lines = []
        model.summary(print_fn=lines.append)
        assert "Trainable params: 59,134" in lines and "Non-trainable params: 2,572" in lines
        model.fit(x[:100], y[:100], epochs=1, batch_size=50, verbose=0)
        model.train_on_batch(x[:20], y[:20])
        after = model.get_weights()
        for a, b in zip(before[:4], after[:4]):
            np.testing.assert_array_equal(a, b)
        assert all(not np.array_equal(a, b) for a, b in zip(before[4:], after[4:]))
        model.get_layer(0).trainable = True   # unfrozen: trained from then on, the others kept
        model.train_on_batch(x[:20], y[:20])
        assert not np.array_equal(model.get_weights()[0], after[0])
        np.testing.assert_array_equal(model.get_weights()[2], after[2])
    model.trainable = False
    frozen = model.get_weights()
    model.train_on_batch(x[:20], y[:20])
    for a, b in zip(frozen, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_on_batch_methods_and_evaluate_dict(digits):
    x, y = digits
    model = lenet(2)
    assert model.metrics_names == ["loss", "accuracy"]
    before = model.test_on_batch(x[:32], y[:32])
    assert before == pytest.approx(model.evaluate(x[:32], y[:32], batch_size=32, verbose=0), rel=1e-6)
    w0 = model.get_weights()[0]
    trained = model.train_on_batch(x[:32], y[:32])   # the batch's loss before the update, as Keras
    assert trained == pytest.approx(before, rel=1e-5)
    assert not np.array_equal(model.get_weights()[0], w0)
    assert model.test_on_batch(x[:32], y[:32], return_dict=True)["loss"] < before[0]
    result = model.evaluate(x[:64], y[:64], verbose=0, return_dict=True)
    assert list(result) == ["loss", "accuracy"] and 0 <= result["accuracy"] <= 1
    np.testing.assert_array_equal(model.predict_on_batch(x[:7]), model.predict(x[:7]))
    bare = lenet(2, metrics=())
    assert bare.metrics_names == ["loss"] and isinstance(bare.train_on_batch(x[:8], y[:8]), float)
    with pytest.raises(RuntimeError, match="compile"):
        fastcnn.models.lenet5().train_on_batch(x[:8], y[:8])


def test_acc_metric_name_history_params_and_validation_weights(digits):
    x, y = digits
    model = lenet(3, metrics=["acc"])
    history = model.fit(x[:200], y[:200], epochs=2, batch_size=100, verbose=0, validation_data=(x[200:], y[200:]))
    assert sorted(history.history) == ["acc", "loss", "val_acc", "val_loss"]
    assert history.params == {"verbose": 0, "epochs": 2, "steps": 2}
    assert model.metrics_names == ["loss", "acc"]
    assert list(model.evaluate(x[:50], y[:50], verbose=0, return_dict=True)) == ["loss", "acc"]
    with pytest.raises(ValueError, match="sample weights are not supported"):
        model.fit(x[:200], y[:200], epochs=1, verbose=0, validation_data=(x[200:], y[200:], np.ones(200)))


def test_input_first_in_sequential_and_pop():
    model = fastcnn.Sequential([Input(shape=(28, 28, 1)), Conv2D(4, 3, activation="relu"), MaxPool2D(2),
                                Flatten(), Dense(10, activation="softmax")])
    assert model.built and model.input_shape == (None, 28, 28, 1) and len(model.layers) == 4
    assert model.layers[0].name == "conv2d" and model.output_shape == (None, 10)
    with pytest.raises(ValueError, match="Input.*only come first"):
        fastcnn.Sequential([Conv2D(4, 3, input_shape=(8, 8, 1)), Input(shape=(8, 8, 4))])
    with pytest.raises(ValueError, match="positive sizes"):
        Input(shape=(None, 8, 1))
    assert isinstance(InputLayer(batch_shape=(None, 5)), InputLayer)
    kept = model.get_weights()
    last = model.pop()
    assert last.name == "dense" and model.output_shape == (None, 676)
    model.add(Dense(3, activation="softmax"))
    model.compile(loss="categorical_crossentropy", optimizer="sgd")
    assert model.predict(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 3)
    np.testing.assert_array_equal(model.get_weights()[0], kept[0])
    with pytest.raises(ValueError, match="no layers"):
        fastcnn.Sequential().pop()


def test_layer_configs_round_trip():
    layers = [Conv2D(8, (3, 5), strides=2, padding="same", activation="relu", groups=2, use_bias=False,
                     kernel_initializer="HeNormal", name="c"), MaxPool2D(3, strides=2, padding="same"),
              Dense(7, kernel_initializer="lecun_uniform", bias_initializer="ones", trainable=False),
              Dropout(0.3, seed=4), fastcnn.layers.Activation("softmax"), fastcnn.layers.LeakyReLU(0.2)]
    for layer in layers:
        config = layer.get_config()
        again = type(layer).from_config(config)
        assert again.get_config() == config
    assert layers[0].get_config()["kernel_initializer"] == "he_normal"
    assert layers[2].get_config()["trainable"] is False
    assert fastcnn.layers.LeakyReLU().get_config()["negative_slope"] == 0.3  # Keras's default
    for slope in (-0.1, float("nan"), "0.3"):
        with pytest.raises(ValueError, match="negative_slope"):
            fastcnn.layers.LeakyReLU(slope)


@pytest.mark.parametrize("name, std", [("glorot_uniform", np.sqrt(2 / (400 + 120))), ("glorot_normal", np.sqrt(2 / 520)),
                                       ("he_uniform", np.sqrt(2 / 400)), ("he_normal", np.sqrt(2 / 400)),
                                       ("lecun_uniform", np.sqrt(1 / 400)), ("lecun_normal", np.sqrt(1 / 400)),
                                       ("random_normal", 0.05), ("random_uniform", 0.05 / np.sqrt(3))])
def test_initializers_have_keras_scales(name, std):
    fastcnn.manual_seed(0)
    w = initializers.initialize(name, (400, 120))
    assert w.dtype == np.float32 and w.std() == pytest.approx(std, rel=0.03) and abs(w.mean()) < 0.1 * std
    if name.endswith("_normal") and name != "random_normal":   # truncated at two standard deviations
        assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-7


def test_initializer_names_and_refusals():
    np.testing.assert_array_equal(initializers.initialize("Zeros", (3,)), 0)
    np.testing.assert_array_equal(initializers.initialize("ones", (2, 2)), 1)
    assert initializers.canonical({"class_name": "GlorotUniform", "config": {"seed": 3}}) == "glorot_uniform"
    with pytest.raises(ValueError, match="unknown initializer 'orthogonal'"):
        Dense(3, kernel_initializer="orthogonal")
    fastcnn.manual_seed(0)
    conv = fastcnn.Sequential([Conv2D(4, 3, bias_initializer="ones", input_shape=(5, 5, 2))]).layers[0]
    np.testing.assert_array_equal(conv.bias.numpy(), 1)


@pytest.mark.parametrize("name, cls", [("rmsprop", "RMSprop"), ("adamw", "AdamW")])
def test_rmsprop_and_adamw_by_name_train(digits, name, cls):
    x, y = digits
    model = lenet(4, name)
    assert type(model.optimizer).__name__ == cls
    first = model.evaluate(x, y, verbose=0)[0]
    model.fit(x, y, epochs=2, batch_size=50, verbose=0)
    assert model.evaluate(x, y, verbose=0)[0] < 0.8 * first


def test_rmsprop_state_travels_in_checkpoints(digits, tmp_path):
    x, y = digits
    make = lambda: fastcnn.optimizers.RMSprop(0.001, momentum=0.9, centered=True)
    model = lenet(5, make())
    model.fit(x[:100], y[:100], epochs=1, batch_size=50, verbose=0)
    model.save_checkpoint(tmp_path / "c.npz", epoch=1)
    again = lenet(6, make())
    again.load_checkpoint(tmp_path / "c.npz")
    assert sorted(again.optimizer.get_state()) == ["average_gradient", "momentum", "velocity"]
    model.train_on_batch(x[:50], y[:50])
    again.train_on_batch(x[:50], y[:50])
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="RMSprop needs"):
        fastcnn.optimizers.RMSprop(rho=1.0)
    with pytest.raises(ValueError, match="AdamW needs"):
        fastcnn.optimizers.AdamW(weight_decay=-0.1)
    assert "weight_decay=0.004" in repr(fastcnn.optimizers.get("adamw"))
    with pytest.raises(ValueError, match=r"\['adam', 'adamw', 'rmsprop', 'sgd'\]"):
        fastcnn.optimizers.get("adagrad")


def test_cli_trains_with_rmsprop_and_adamw(capsys, tmp_path):
    import json
    from fastcnn import cli
    quick = ["--device", "cpu", "--limit", "200", "--batch-size", "100", "--verbose", "2", "--epochs", "1"]
    for name, expected in (("rmsprop", "RMSprop(learning_rate=0.002, rho=0.9, momentum=0.5"),
                           ("adamw", "AdamW(learning_rate=0.002, beta_1=0.9, beta_2=0.999, epsilon=1e-07, "
                                     "weight_decay=0.01)")):
        extra = ["--momentum", "0.5"] if name == "rmsprop" else ["--weight-decay", "0.01"]
        code = cli.main(["train", "lenet5", *quick, "--optimizer", name, "--lr", "0.002", *extra,
                         "--out", str(tmp_path / name)])
        assert code == 0, capsys.readouterr().err
        assert json.loads((tmp_path / name / "history.json").read_text())["optimizer"].startswith(expected)
    code = cli.main(["train", "lenet5", *quick, "--optimizer", "rmsprop", "--weight-decay", "0.1",
                     "--out", str(tmp_path / "bad")])
    assert code == 2 and "--weight-decay applies to --optimizer sgd or adamw, not rmsprop" in capsys.readouterr().err
    code = cli.main(["train", "lenet5", *quick, "--optimizer", "adamw", "--momentum", "0.9", "--out", str(tmp_path / "b")])
    assert code == 2 and "--momentum applies to --optimizer sgd or rmsprop, not adamw" in capsys.readouterr().err
