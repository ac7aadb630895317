"""Keras 3's files without Keras: .weights.h5 and .keras archives that these tests write
themselves with h5py and zipfile in the layout Keras 3.15 writes (groups
``layers/<name>/vars/<i>``, ``vars`` for the model, an ``optimizer`` group when Keras
trained it; a zip of metadata.json, config.json and model.weights.h5), read by fastcnn;
and the files fastcnn writes, read back with h5py in that layout.  Round trips against
Keras itself: tests/test_keras_roundtrip.py."""
import io
import json
import sys
import zipfile

import numpy as np
import pytest

import fastcnn

from fastcnn.layers import (LRN, Conv2D, Dense, Dropout, Flatten, LeakyReLU, MaxPool2D, PCAColorNoise, RandomCrop,
                            RandomFlip)

h5py = pytest.importorskip("h5py")

LENET_SHAPES = {"conv2d": [(5, 5, 1, 6), (6,)], "conv2d_1": [(5, 5, 6, 16), (16,)], "dense": [(400, 120), (120,)],
                "dense_1": [(120, 84), (84,)], "dense_2": [(84, 10), (10,)]}
NO_WEIGHTS = ["max_pooling2d", "max_pooling2d_1", "flatten"]


def keras_arrays(rng, shapes=LENET_SHAPES):
    return {name: [rng.standard_normal(s).astype(np.float32) for s in ss] for name, ss in shapes.items()}


def write_keras_h5(target, arrays, empty=NO_WEIGHTS, optimizer=True):
    """A weights file as Keras 3's save_weights writes it."""
    with h5py.File(target, "w") as f:
        for name in sorted(list(arrays) + list(empty)):
            group = f.create_group(f"layers/{name}/vars")
            group.attrs["name"] = name
            for i, a in enumerate(arrays.get(name, [])):
                group.create_dataset(str(i), data=a)
        if optimizer:   # Keras stores a compiled model's optimizer variables beside the layers
            opt = f.create_group("optimizer/vars")
            opt.create_dataset("0", data=np.array(3, np.int64))
        f.create_group("vars").attrs["name"] = "sequential"


def keras_layer(class_name, config, build=None):
    """A layer entry of config.json as Keras 3.15 writes it (dtype policy, initializers as objects)."""
    dtype = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
    entry = {"module": "keras.layers", "class_name": class_name, "registered_name": None,
             "config": {"trainable": True, "dtype": dtype, **config}}
    if build is not None:
        entry["build_config"] = {"input_shape": [None, *build]}
    return entry


def init(class_name):
    return {"module": "keras.initializers", "class_name": class_name,
            "config": {"seed": None} if class_name != "Zeros" else {}, "registered_name": None}


def conv(name, filters, padding, build, activation="relu"):
    return keras_layer("Conv2D", {"name": name, "filters": filters, "kernel_size": [5, 5], "strides": [1, 1],
                                  "padding": padding, "data_format": "channels_last", "dilation_rate": [1, 1],
                                  "groups": 1, "activation": activation, "use_bias": True,
                                  "kernel_initializer": init("GlorotUniform"), "bias_initializer": init("Zeros"),
                                  "kernel_regularizer": None, "bias_regularizer": None,
                                  "activity_regularizer": None, "kernel_constraint": None,
                                  "bias_constraint": None}, build)


def dense(name, units, build, activation="relu"):
    return keras_layer("Dense", {"name": name, "units": units, "activation": activation, "use_bias": True,
                                 "kernel_initializer": init("GlorotUniform"), "bias_initializer": init("Zeros"),
                                 "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None,
                                 "bias_constraint": None, "quantization_config": None}, build)


def pool(name):
    return keras_layer("MaxPooling2D", {"name": name, "pool_size": [2, 2], "padding": "valid", "strides": [2, 2],
                                        "data_format": "channels_last"})


def lenet_config():
    layers = [{"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
               "config": {"batch_shape": [None, 28, 28, 1], "dtype": "float32", "sparse": False,
                          "ragged": False, "name": "input_layer", "optional": False}},
              conv("conv2d", 6, "same", (28, 28, 1)), pool("max_pooling2d"),
              conv("conv2d_1", 16, "valid", (14, 14, 6)), pool("max_pooling2d_1"),
              keras_layer("Flatten", {"name": "flatten", "data_format": "channels_last"}, (5, 5, 16)),
              dense("dense", 120, (400,)), dense("dense_1", 84, (120,)),
              dense("dense_2", 10, (84,), activation="softmax")]
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "sequential", "trainable": True, "layers": layers,
                       "build_input_shape": [None, 28, 28, 1]},
            "build_config": {"input_shape": [None, 28, 28, 1]}, "compile_config": None}


def write_keras_archive(path, config, arrays, empty=NO_WEIGHTS):
    weights = io.BytesIO()
    write_keras_h5(weights, arrays, empty)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1", "date_saved": "2026-12-04@20:36:22"}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", weights.getvalue())


def numpy_lenet(arrays, x):
    """LeNet-5's forward in plain NumPy, from Keras's arrays (the oracle for the loaded model)."""
    from fastcnn.backend import reference as ref
    def conv2d(x, w, b, padding):
        pads = fastcnn.functional.resolve_padding(padding, x.shape[1:3], w.shape[:2], (1, 1))
        return np.maximum(ref.conv2d_forward(x, w, b, (1, 1), pads, False), 0)
    def pool2(x):
        n, h, w, c = x.shape
        return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = pool2(conv2d(x, *arrays["conv2d"], "same"))
    x = pool2(conv2d(x, *arrays["conv2d_1"], "valid")).reshape(len(x), -1)
    x = np.maximum(x @ arrays["dense"][0] + arrays["dense"][1], 0)
    x = np.maximum(x @ arrays["dense_1"][0] + arrays["dense_1"][1], 0)
    z = x @ arrays["dense_2"][0] + arrays["dense_2"][1]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_weights_h5_in_keras_layout_loads_by_name(tmp_path, rng):
    arrays = {k: [a * 0.1 for a in v] for k, v in keras_arrays(rng).items()}
    path = tmp_path / "lenet5.weights.h5"
    write_keras_h5(path, arrays)
    model = fastcnn.models.lenet5()
    model.load_weights(path)
    expected = [a for name in LENET_SHAPES for a in arrays[name]]
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_array_equal(got, want)
    x = rng.random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x), numpy_lenet(arrays, x), rtol=1e-5, atol=1e-6)


def test_save_weights_writes_keras_layout(tmp_path, rng):
    fastcnn.manual_seed(3)
    model = fastcnn.models.lenet5()
    model.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "m.weights.h5", "r") as f:
        assert sorted(f["layers"]) == sorted(list(LENET_SHAPES) + NO_WEIGHTS)
        assert f["vars"].attrs["name"] == "lenet5" and len(f["vars"]) == 0
        for layer in model.layers:
            group = f[f"layers/{layer.name}/vars"]
            assert group.attrs["name"] == layer.name
            assert sorted(group) == [str(i) for i in range(len(layer.params))]
            for i, w in enumerate(layer.get_weights()):
                assert group[str(i)].dtype == np.float32
                np.testing.assert_array_equal(group[str(i)][()], w)
    other = fastcnn.models.lenet5()
    other.load_weights(tmp_path / "m.weights.h5")
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    # .npz stays what a .npz name gets
    model.save_weights(tmp_path / "m.npz")
    assert zipfile.is_zipfile(tmp_path / "m.npz") and not h5py.is_hdf5(tmp_path / "m.npz")


def test_keras_archive_loads_architecture_and_weights(tmp_path, rng):
    arrays = {k: [a * 0.1 for a in v] for k, v in keras_arrays(rng).items()}
    path = tmp_path / "lenet5.keras"
    write_keras_archive(path, lenet_config(), arrays)
    model = fastcnn.models.load_model(path)
    assert [(l.name, l.type_name, l.output_shape) for l in model.layers] == [
        (l.name, l.type_name, l.output_shape) for l in fastcnn.models.lenet5().layers]
    assert model.input_shape == (None, 28, 28, 1) and model.count_params() == 61706
    assert [l.activation for l in model.layers if l.params] == ["relu"] * 4 + ["softmax"]
    x = rng.random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x), numpy_lenet(arrays, x), rtol=1e-5, atol=1e-6)
    # a fastcnn model takes the archive's weights too (Keras's load_weights reads archives as well)
    plain = fastcnn.models.lenet5()
    plain.load_weights(path)
    np.testing.assert_array_equal(plain.get_weights()[0], arrays["conv2d"][0])


def test_fastcnn_archive_round_trip_with_its_own_layers(tmp_path, rng):
    """Groups, LRN, the augmentation layers, frozen layers, initializer names: all come back."""
    fastcnn.manual_seed(5)
    model = fastcnn.Sequential([
        RandomCrop(10, 10, input_shape=(12, 12, 3)), RandomFlip(), PCAColorNoise(0.1),
        Conv2D(8, 3, padding="same", activation="relu", kernel_initializer="he_normal"),
        LRN(size=3), Conv2D(4, 3, groups=2, activation="relu", bias_initializer="ones"), MaxPool2D(2),
        Flatten(), Dense(6, activation="relu", trainable=False), LeakyReLU(0.1), Dropout(0.25),
        Dense(3, activation="softmax"),
    ], name="small")
    model.save(tmp_path / "small.keras")
    back = fastcnn.models.load_model(tmp_path / "small.keras")
    assert back.name == "small"
    for a, b in zip(model.layers, back.layers):   # a Dropout's seed is Keras's to draw (written as None)
        assert type(a) is type(b)
        assert {**a.get_config(), "seed": 0} == {**b.get_config(), "seed": 0} if a.type_name == "Dropout" \
            else a.get_config() == b.get_config()
    assert back.get_layer("dense").trainable is False
    for a, b in zip(model.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = rng.random((2, 12, 12, 3), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(x), back.predict(x))
    with zipfile.ZipFile(tmp_path / "small.keras") as z:
        assert sorted(z.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
        config = json.loads(z.read("config.json"))
        assert json.loads(z.read("metadata.json"))["saved_by"].startswith("fastcnn")
    classes = [(e["module"], e["class_name"]) for e in config["config"]["layers"]]
    assert classes[:4] == [("keras.layers", "InputLayer"), ("fastcnn.layers", "RandomCrop"),
                           ("fastcnn.layers", "RandomFlip"), ("fastcnn.layers", "PCAColorNoise")]
    assert ("keras.layers", "Conv2D") in classes and ("fastcnn.layers", "LRN") in classes
    assert ("keras.layers", "LeakyReLU") in classes  # Keras's own class: Keras builds it too


def test_json_and_config_round_trip():
    model = fastcnn.models.lenet5()
    text = model.to_json()
    assert json.loads(text)["class_name"] == "Sequential"
    again = fastcnn.models.model_from_json(text)
    assert [l.get_config() for l in again.layers] == [l.get_config() for l in model.layers]
    assert fastcnn.Sequential.from_config(model.get_config()).count_params() == 61706


def expect(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


def test_mismatches_are_named(tmp_path, rng):
    model = fastcnn.models.lenet5()
    before = model.get_weights()
    arrays = keras_arrays(rng)
    path = tmp_path / "w.weights.h5"

    renamed = dict(arrays)
    renamed["dense_7"] = renamed.pop("dense_1")
    write_keras_h5(path, renamed)
    expect(ValueError, r"no weights for layer\(s\) \['dense_1'\].*dense_7", lambda: model.load_weights(path))

    wrong = dict(arrays, dense=[arrays["dense"][0][:300], arrays["dense"][1]])
    write_keras_h5(path, wrong)
    expect(ValueError, r"dense/kernel has shape \(300, 120\) in the file, the model expects \(400, 120\)",
           lambda: model.load_weights(path))

    write_keras_h5(path, dict(arrays, dense=arrays["dense"][:1]))
    expect(ValueError, r"layer 'dense' has 1 weight\(s\) in the file, the model's has 2 \(kernel, bias\)",
           lambda: model.load_weights(path))

    write_keras_h5(path, dict(arrays, extra_dense=arrays["dense"]))
    expect(ValueError, r"weights for layer\(s\) \['extra_dense'\] that the model does not have",
           lambda: model.load_weights(path))
    for a, b in zip(before, model.get_weights()):   # a refused file changes nothing
        np.testing.assert_array_equal(a, b)


def test_bad_files_are_refused_with_one_line(tmp_path, rng):
    model = fastcnn.models.lenet5()
    npz_named_h5 = tmp_path / "old.h5"
    with open(npz_named_h5, "wb") as f:   # what save_weights("x.h5") used to write
        np.savez(f, a=np.zeros(3))
    expect(ValueError, "not a readable HDF5 file", lambda: model.load_weights(npz_named_h5))
    keras2 = tmp_path / "keras2.h5"
    with h5py.File(keras2, "w") as f:
        f.attrs["layer_names"] = [b"conv2d"]
    expect(ValueError, "Keras 2", lambda: model.load_weights(keras2))
    expect(FileNotFoundError, "not found", lambda: model.load_weights(tmp_path / "none.weights.h5"))

    not_zip = tmp_path / "m.keras"
    not_zip.write_text("hello")
    expect(ValueError, "not a .keras archive", lambda: fastcnn.models.load_model(not_zip))
    with zipfile.ZipFile(tmp_path / "half.keras", "w") as z:
        z.writestr("config.json", json.dumps(lenet_config()))
    expect(ValueError, r"lacks \['model.weights.h5'\]", lambda: fastcnn.models.load_model(tmp_path / "half.keras"))
    expect(ValueError, "load_model reads .keras", lambda: fastcnn.models.load_model(npz_named_h5))
    expect(ValueError, "save writes .keras", lambda: model.save(tmp_path / "m.h5"))
    expect(ValueError, "written by model.save", lambda: model.save_weights(tmp_path / "m.keras"))


def test_a_keras_leaky_relu_builds():
    config = lenet_config()
    config["config"]["layers"].insert(7, keras_layer("LeakyReLU", {"name": "leaky_re_lu", "negative_slope": 0.2},
                                                     (120,)))
    model = fastcnn.models.model_from_json(json.dumps(config))
    layer = model.get_layer("leaky_re_lu")
    assert type(layer) is LeakyReLU and layer.negative_slope == 0.2 and layer.output_shape == (None, 120)


@pytest.mark.parametrize("change, match", [
    (lambda c: c["config"]["layers"].insert(2, keras_layer("BatchNormalization", {"name": "batch_normalization"})),
     r"layer 'batch_normalization' is a BatchNormalization, which fastcnn does not build"),
    (lambda c: c["config"]["layers"][1]["config"].update(dilation_rate=[2, 2]),
     r"layer 'conv2d' \(Conv2D\) sets dilation_rate=\[2, 2\]"),
    (lambda c: c["config"]["layers"][1]["config"].update(data_format="channels_first"),
     r"sets data_format='channels_first'"),
    (lambda c: c["config"]["layers"][6]["config"].update(activation="tanh"),
     r"layer 'dense' \(Dense\): unknown activation 'tanh'"),
    (lambda c: c["config"]["layers"][6]["config"].update(kernel_initializer={
        "class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 1.0}}), r"RandomNormal with \{'stddev': 1.0\}"),
    (lambda c: c.update(class_name="Functional"), r"fastcnn builds Sequential models; this one is a 'Functional'"),
])
def test_unbuildable_configurations_are_refused_by_name(tmp_path, rng, change, match):
    config = lenet_config()
    change(config)
    write_keras_archive(tmp_path / "m.keras", config, keras_arrays(rng))
    expect(ValueError, match, lambda: fastcnn.models.load_model(tmp_path / "m.keras"))


def test_without_h5py_the_message_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    model = fastcnn.models.lenet5()
    expect(ImportError, r"pip install 'fastcnn\[keras\]'", lambda: model.save_weights(tmp_path / "m.weights.h5"))
    assert not (tmp_path / "m.weights.h5").exists()
    model.save_weights(tmp_path / "m.npz")   # npz needs nothing more


def test_readme_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL) if "load_model(" in b]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(blocks[0], "README.md Keras files example", "exec"), scope)
    assert (tmp_path / "lenet5.keras").exists() and h5py.is_hdf5(tmp_path / "lenet5.weights.h5")
    for a, b in zip(scope["model"].get_weights(), scope["again"].get_weights()):
        np.testing.assert_array_equal(a, b)
