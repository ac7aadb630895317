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
