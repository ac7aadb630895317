"""Keras 3's files, both ways: ``.weights.h5`` weights and ``.keras`` model archives.

``.weights.h5`` (Keras 3's ``save_weights``): an HDF5 file holding, per layer,
``layers/<layer name>/vars/<i>``, the layer's weights in order (kernel, then bias),
and ``vars`` for the model itself.  Weights are matched to the model's layers by name
(Keras 3 and fastcnn name layers alike: ``conv2d``, ``conv2d_1``, ``dense``...) and
checked by shape; a missing or mismatched weight is named.

``.keras`` (Keras 3's ``model.save``): a zip holding ``config.json`` (the architecture
as Keras serialises a Sequential), ``metadata.json`` and ``model.weights.h5`` (as
above).  The layers Keras has and fastcnn builds are Conv2D, MaxPooling2D, Flatten,
Dense, Dropout and Activation (plus the InputLayer); any other layer class, or an
option fastcnn does not build (dilation, channels_first, regularisers...), is refused
by name.  fastcnn's own layers (LRN, RandomCrop, RandomFlip, PCAColorNoise) are
written under the module ``fastcnn.layers``: fastcnn reads them back, Keras does not.
``load_model`` compiles the model as a Keras archive's ``compile_config`` says when
fastcnn has its loss, metrics and optimizer (a fresh optimizer state: the saved one
is not read); fastcnn's archives store no optimizer (``save_checkpoint`` keeps it).

HDF5 needs h5py: ``pip install 'fastcnn[keras]'``.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import warnings
import zipfile

import numpy as np

from . import layers as L
from . import mixed_precision
from .saving import atomic_write

EXTRA = "keras"  # the pyproject extra that installs h5py
KERAS_LAYERS = {"Conv2D": L.Conv2D, "MaxPooling2D": L.MaxPool2D, "Flatten": L.Flatten, "Dense": L.Dense,
                "Dropout": L.Dropout, "Activation": L.Activation, "LeakyReLU": L.LeakyReLU}
FASTCNN_LAYERS = {"LRN": L.LRN, "RandomCrop": L.RandomCrop, "RandomFlip": L.RandomFlip,
                  "PCAColorNoise": L.PCAColorNoise}
# Keras config entries fastcnn has no use for, and the values under which ignoring them is exact.
_NEUTRAL = {"data_format": ("channels_last", None), "dilation_rate": ([1, 1], 1, None),
            "kernel_regularizer": (None,), "bias_regularizer": (None,), "activity_regularizer": (None,),
            "kernel_constraint": (None,), "bias_constraint": (None,), "noise_shape": (None,),
            "quantization_config": (None,), "lora_rank": (None,), "lora_alpha": (None,)}
_IGNORED = {"registered_name"}


def h5py():
    """The h5py module, or an ImportError that names the extra to install."""
    try:
        import h5py as module
    except ImportError as exc:
        raise ImportError(f"Keras's .weights.h5 and .keras files need h5py: "
                          f"pip install 'fastcnn[{EXTRA}]' (or pip install h5py)") from exc
    return module


def file_kind(path) -> str:
    """'keras' for a .keras archive, 'h5' for HDF5 weights (.h5, .hdf5), else 'npz'."""
    name = os.fspath(path).lower()
    if name.endswith(".keras"):
        return "keras"
    return "h5" if name.endswith((".h5", ".hdf5")) else "npz"


# ---------------------------------------------------------------- .weights.h5

def _h5_bytes(model) -> bytes:
    """The model's weights as a Keras 3 .weights.h5 file's bytes."""
    buffer = io.BytesIO()
    with h5py().File(buffer, "w") as f:
        group = f.create_group("layers")
        for layer in model.layers:
            variables = group.create_group(layer.name).create_group("vars")
            variables.attrs["name"] = layer.name
            for i, w in enumerate(layer.get_weights()):
                variables.create_dataset(str(i), data=w)
        f.create_group("vars").attrs["name"] = model.name
    return buffer.getvalue()


def _read_h5(source, what) -> dict:
    """{layer name: [arrays in order]} of a Keras 3 weights file."""
    module = h5py()
    try:
        f = module.File(source, "r")
    except OSError as exc:
        raise ValueError(f"{what} is not a readable HDF5 file (corrupt, truncated, or not HDF5): {exc}") from exc
    with f:
        if "layers" not in f:
            hint = (" (it looks like a Keras 2 / tf.keras .h5 file, which fastcnn does not read; "
                    "re-save it with Keras 3)") if "layer_names" in f.attrs or "model_weights" in f else ""
            raise ValueError(f"{what} is not a Keras 3 weights file: it has no 'layers' group{hint}")
        out = {}
        for name, group in f["layers"].items():
            variables = group.get("vars")
            count = 0 if variables is None else len(variables)
            if count and sorted(variables) != sorted(str(i) for i in range(count)):
                raise ValueError(f"{what}: layer {name!r} has variables {sorted(variables)}, expected 0..{count - 1}")
            out[name] = [np.asarray(variables[str(i)]) for i in range(count)]
        return out


def _assign(model, per_layer: dict, what) -> None:
    """Set the model's weights from {layer name: arrays}, by name, every shape checked."""
    weighted = [l for l in model.layers if l.params]
    with_weights = sorted(n for n, a in per_layer.items() if a)
    missing = [l.name for l in weighted if not per_layer.get(l.name)]
    if missing:
        raise ValueError(f"{what} has no weights for layer(s) {missing}; its layers with weights are "
                         f"{with_weights} (weights are matched by layer name: name the layers alike)")
    extra = sorted(set(with_weights) - {l.name for l in weighted})
    if extra:
        raise ValueError(f"{what} has weights for layer(s) {extra} that the model does not have "
                         f"(the model's layers with weights: {[l.name for l in weighted]})")
    values = []
    for layer in weighted:
        arrays = per_layer[layer.name]
        names = [p.name for p in layer.params]
        if len(arrays) != len(names):
            raise ValueError(f"{what}: layer {layer.name!r} has {len(arrays)} weight(s) in the file, the model's "
                             f"has {len(names)} ({', '.join(names)})")
        for p, a in zip(layer.params, arrays):
            if a.shape != p.shape:
                raise ValueError(f"{what}: weight {layer.name}/{p.name} has shape {a.shape} in the file, "
                                 f"the model expects {p.shape}")
        values += arrays
    model.set_weights(values)


def save_weights(model, path) -> None:
    """Keras 3's .weights.h5, written atomically."""
    data = _h5_bytes(model)
    atomic_write(path, lambda f: f.write(data))


def read_weights(path) -> dict:
    """{layer name: [its arrays in order]} of a Keras 3 .weights.h5 file or .keras archive."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if file_kind(path) == "keras":
        with _open_archive(path) as archive:
            return _read_h5(io.BytesIO(archive.read("model.weights.h5")), f"{path}:model.weights.h5")
    return _read_h5(path, path)


def load_weights(model, path) -> None:
    """Weights from a Keras 3 .weights.h5 file or .keras archive into the built model."""
    _assign(model, read_weights(path), os.fspath(path))


# ---------------------------------------------------------------- configuration

def _keras_layer(layer) -> dict:
    config = layer.get_config()
    if type(layer) in KERAS_LAYERS.values():
        class_name = next(k for k, v in KERAS_LAYERS.items() if type(layer) is v)
        module = "keras.layers"
        for key in ("kernel_initializer", "bias_initializer"):
            if key in config:
                name = "".join(part.capitalize() for part in config[key].split("_"))
                config[key] = {"module": "keras.initializers", "class_name": name, "config": {},
                               "registered_name": None}
        if class_name in ("Conv2D", "MaxPooling2D"):
            config["data_format"] = "channels_last"
        if class_name == "Dropout":
            config["seed"] = None  # fastcnn's seed keys its own Philox stream, not Keras's generator
    else:
        class_name, module = type(layer).__name__, "fastcnn.layers"
    entry = {"module": module, "class_name": class_name, "config": config, "registered_name": None}
    if layer.built:
        entry["build_config"] = {"input_shape": list(layer.input_shape)}
    return entry


def model_config(model) -> dict:
    """The Sequential's configuration as Keras 3 writes it (``model.get_config()``)."""
    layers = []
    if model.built:
        layers.append({"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                       "config": {"batch_shape": list(model.input_shape), "dtype": "float32",
                                  "sparse": False, "name": "input_layer"}})
    layers += [_keras_layer(layer) for layer in model.layers]
    config = {"name": model.name, "trainable": True, "dtype": "float32", "layers": layers}
    if model.built:
        config["build_input_shape"] = list(model.input_shape)
    return config


def serialize(model) -> dict:
    """config.json's content: the class, its configuration and its build shape."""
    entry = {"module": "keras", "class_name": "Sequential", "config": model_config(model),
             "registered_name": None, "compile_config": None}
    if model.built:
        entry["build_config"] = {"input_shape": list(model.input_shape)}
    return entry


def to_json(model, **kwargs) -> str:
    return json.dumps(serialize(model), **kwargs)


def _activation(value, where):
    if isinstance(value, dict):   # {'module': 'keras.activations', 'class_name': 'function', 'config': 'relu'}
        value = value.get("config") if isinstance(value.get("config"), str) else value.get("class_name")
    return "linear" if value is None else value


def _layer_from_keras(entry: dict, first: bool):
    class_name = entry.get("class_name")
    config = dict(entry.get("config") or {})
    name = config.get("name", class_name)
    if entry.get("module") == "fastcnn.layers" and class_name in FASTCNN_LAYERS:
        cls = FASTCNN_LAYERS[class_name]
    elif class_name in KERAS_LAYERS:
        cls = KERAS_LAYERS[class_name]
    else:
        raise ValueError(f"layer {name!r} is a {class_name}, which fastcnn does not build (it builds "
                         f"{', '.join(list(KERAS_LAYERS) + list(FASTCNN_LAYERS))})")
    dtype = config.pop("dtype", None)
    try:
        config["dtype"] = mixed_precision.get(dtype)   # None: the global policy, as Keras
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layer {name!r} has dtype policy {dtype!r}, which fastcnn does not build "
                         f"({exc})") from None
    for key, allowed in _NEUTRAL.items():
        if key in config and config.pop(key) not in allowed:
            raise ValueError(f"layer {name!r} ({class_name}) sets {key}={entry['config'][key]!r}, "
                             f"which fastcnn does not build")
    for key in _IGNORED:
        config.pop(key, None)
    if "activation" in config:
        config["activation"] = _activation(config["activation"], name)
    if class_name == "Dropout" and entry.get("module") != "fastcnn.layers":
        config.pop("seed", None)
    build = (entry.get("build_config") or {}).get("input_shape")
    if first and build is not None:
        config["input_shape"] = tuple(build)[1:]
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layer {name!r} ({class_name}): {exc}") from exc


def model_from_config(config: dict):
    """A Sequential from Keras 3's serialised form ({'class_name': 'Sequential', 'config': ...}) or
    from its 'config' part alone (what ``get_config`` gives)."""
    from .model import Sequential
    if "layers" not in config:
        if config.get("class_name") != "Sequential":
            raise ValueError(f"fastcnn builds Sequential models; this one is a {config.get('class_name')!r}")
        config = config.get("config") or {}
    model = Sequential(name=config.get("name", "sequential"))
    entries = list(config.get("layers") or [])
    input_shape = None
    if entries and entries[0].get("class_name") == "InputLayer":
        c = entries.pop(0).get("config") or {}
        shape = c.get("batch_shape") or c.get("batch_input_shape")
        input_shape = tuple(shape)[1:] if shape is not None else None
    if not entries:
        raise ValueError("the model configuration has no layers")
    for i, entry in enumerate(entries):
        layer = _layer_from_keras(entry, first=i == 0 and input_shape is None)
        if i == 0 and input_shape is not None:
            layer._input_shape = tuple(int(d) for d in input_shape)
        model.add(layer)
    if not model.built and config.get("build_input_shape"):
        model.build(tuple(config["build_input_shape"])[1:])
    return model


def model_from_json(text: str):
    return model_from_config(json.loads(text))


# ---------------------------------------------------------------- .keras archives

@contextlib.contextmanager
def _open_archive(path):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path} is not a .keras archive (not a readable zip file): {exc}") from exc
    with archive:
        names = set(archive.namelist())
        missing = [n for n in ("config.json", "model.weights.h5") if n not in names]
        if missing:
            extra = " (its weights are in .npz form, which fastcnn does not read)" \
                if "model.weights.npz" in names else ""
            raise ValueError(f"{path} is not a Keras 3 .keras archive: it lacks {missing}{extra}")
        yield archive


def save_model(model, path) -> None:
    """A .keras archive Keras 3's load_model opens (for the layers Keras has), written atomically."""
    from . import __version__
    model.require_built()
    metadata = {"keras_version": "3.0.0",   # the archive format's revision, not a Keras that wrote it
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                "saved_by": f"fastcnn {__version__}"}
    weights, config = _h5_bytes(model), to_json(model)

    def write(f):
        with zipfile.ZipFile(f, "w") as archive:
            archive.writestr("metadata.json", json.dumps(metadata))
            archive.writestr("config.json", config)
            archive.writestr("model.weights.h5", weights, compress_type=zipfile.ZIP_STORED)
    atomic_write(path, write)


_OPTIMIZER_NEUTRAL = {"name": None, "clipnorm": (None,), "global_clipnorm": (None,), "clipvalue": (None,),
                      "use_ema": (False,), "ema_momentum": None, "ema_overwrite_frequency": None,
                      "loss_scale_factor": (None,), "gradient_accumulation_steps": (None,), "amsgrad": (False,)}


def _compile_from(model, compile_config: dict):
    """Compile as Keras's compile_config says; a reason string when fastcnn cannot do it exactly."""
    from . import losses, optimizers
    loss = compile_config.get("loss")
    if isinstance(loss, dict):
        loss = "".join("_" + c.lower() if c.isupper() else c for c in loss.get("class_name", "")).lstrip("_")
    if loss not in losses.LOSSES:
        return f"loss {compile_config.get('loss')!r}"
    metrics = compile_config.get("metrics") or []
    if any(m not in ("accuracy", "acc") for m in metrics) or compile_config.get("weighted_metrics") \
            or compile_config.get("loss_weights"):
        return f"metrics {metrics}"
    entry = compile_config.get("optimizer")
    name = entry.get("class_name") if isinstance(entry, dict) else entry
    cls = {c.__name__: c for c in optimizers.OPTIMIZERS.values()}.get(name) \
        or optimizers.OPTIMIZERS.get(str(name).lower())
    if cls is None:
        return f"optimizer {name!r}"
    config = dict(entry.get("config") or {}) if isinstance(entry, dict) else {}
    for key, allowed in _OPTIMIZER_NEUTRAL.items():
        if allowed is not None and key in config and config[key] not in allowed:
            return f"optimizer {name} with {key}={config[key]!r}"
        config.pop(key, None)
    weight_decay = config.pop("weight_decay", None)
    if weight_decay:   # Keras's is decoupled: fastcnn's Adam and AdamW apply it so, not its SGD or RMSprop
        if not issubclass(cls, optimizers.Adam):
            return f"{name} with Keras's decoupled weight_decay"
        config["weight_decay"] = weight_decay
    if isinstance(config.get("learning_rate"), dict):
        return "a learning-rate schedule"
    if isinstance(config.get("learning_rate"), float):   # Keras keeps it in float32: 0.001 is 0.0010000000474974513
        config["learning_rate"] = float(str(np.float32(config["learning_rate"])))
    try:
        optimizer = cls(**config)
    except (TypeError, ValueError) as exc:
        return f"optimizer {name} ({exc})"
    model.compile(loss=loss, optimizer=optimizer, metrics=metrics)
    return None


def load_model(path, compile=True):  # noqa: A002  (Keras's argument name)
    """A Sequential from a .keras archive (Keras 3's or fastcnn's): architecture and weights; compiled
    as the archive says (loss, optimizer with its settings, accuracy) where it records that and
    fastcnn has them all, with a fresh optimizer state; else a warning says why it is not."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if file_kind(path) != "keras":
        raise ValueError(f"{path}: load_model reads .keras archives; weights files (.weights.h5, .npz) "
                         f"go into a built model with model.load_weights")
    with _open_archive(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except ValueError as exc:
            raise ValueError(f"{path}: config.json is not valid JSON: {exc}") from exc
        try:
            model = model_from_config(config)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        if not model.built:
            raise ValueError(f"{path}: the configuration gives no input shape (no InputLayer or build_config)")
        _assign(model, _read_h5(io.BytesIO(archive.read("model.weights.h5")), f"{path}:model.weights.h5"), path)
    compiled = config.get("compile_config")
    if compile and isinstance(compiled, dict) and (compiled.get("loss") or compiled.get("optimizer")):
        why = _compile_from(model, compiled)
        if why:
            warnings.warn(f"{path}: not compiled: fastcnn has no {why}; call compile() yourself", stacklevel=2)
    return model
