"""fastcnn evaluate (loss, accuracy, top-5, confusion matrix) and fastcnn predict (top classes of
image files), with saved weights and the run's history.json beside them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastcnn.config import NAMES

from .common import (DATA_SETS, DEFAULT_BATCH, DEFAULT_CLASSES, INPUT_SHAPES, UsageError, build_model, eval_label,
                     input_shape, kernel_choices, kernels_for, place, say_precision, using_kernels)
from .data import close_sources, load_data, xy


def top_k_accuracy(probabilities, labels, k: int) -> float:
    """Share of rows with fewer than k scores above their label's score (top-k accuracy; a tie goes to the label)."""
    import numpy as np
    probabilities = np.asarray(probabilities)
    own = probabilities[np.arange(len(labels)), labels]
    higher = (probabilities > own[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def confusion_matrix(labels, predicted, classes: int):
    """counts[true, predicted] (int64, classes x classes)."""
    import numpy as np
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


def _confusion_text(counts) -> str:
    classes = counts.shape[0]
    width = max(5, len(str(int(counts.max()))) + 1)
    lines = ["confusion matrix (rows: true class, columns: predicted):",
             "true\\pred" + "".join(f"{c:>{width}}" for c in range(classes)) + "   accuracy"]
    for c in range(classes):
        total = int(counts[c].sum())
        acc = f"{counts[c, c] / total:.4f}" if total else "     -"
        lines.append(f"{c:>9}" + "".join(f"{int(v):>{width}}" for v in counts[c]) + f"   {acc} of {total:,}")
    return "\n".join(lines)


def _read_weights(weights) -> dict:
    """The arrays of --weights (an .npz, or Keras 3's .weights.h5 / .keras: named layer/index, layers
    in name order), or a UsageError saying what is wrong with the file."""
    from fastcnn import keras_files
    from fastcnn.saving import load_npz
    try:
        if keras_files.file_kind(weights) != "npz":
            return {f"{name}/{i}": a for name, arrays in sorted(keras_files.read_weights(weights).items())
                    for i, a in enumerate(arrays)}
        return load_npz(weights)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--weights: {exc}") from None


def cmd_evaluate(args) -> int:
    _as_trained(args)
    if args.ten_crop and not args.augment:
        raise UsageError("--ten-crop takes the paper's ten 227x227 patches of 256x256 images: it needs an "
                         "alexnet trained with --augment")
    _read_weights(args.weights)  # before the data set is read: a wrong file is said at once
    args.data = args.data or ("mnist-sample" if args.model == "lenet5" else "synthetic")
    data = load_data(args, train=False)
    eval_name, class_names = data.eval_name, data.class_names
    classes = len(class_names) if class_names else DEFAULT_CLASSES[args.model]
    # --ten-crop: the 256x256 images are cut on the host, so the net runs without its augmentation layers
    model = build_model(argparse.Namespace(**{**vars(args), "augment": False}) if args.ten_crop else args, classes)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    try:
        model.load_weights(args.weights)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--weights: {exc}") from None
    kernels = kernel_choices(args.kernel, args.precision)
    note = place(model, args.device)
    print(f"device: {model.device}, backend: {model.backend.name}{note}")
    say_precision(args.precision, model)
    kernels = kernels_for(model, kernels)
    x, y = xy(data.validation)
    batch_size = args.batch_size or DEFAULT_BATCH[args.model]
    try:
        with using_kernels(kernels, args.precision):
            if args.ten_crop:
                probabilities = _ten_crop_average(model, x, batch_size)
                loss, accuracy = _loss_and_accuracy(probabilities, data.eval_labels)
            else:
                loss, accuracy = model.evaluate(x, y, batch_size=batch_size, verbose=0)
                probabilities = model.predict(x, batch_size=batch_size)
    finally:
        close_sources(data)
    y = data.eval_labels
    predicted = probabilities.argmax(axis=1)
    label = eval_label(args, eval_name)
    how = ", softmax averaged over 10 crops of each image" if args.ten_crop else ""
    print(f"{label} accuracy: {accuracy:.4f} ({label} loss {loss:.4f}) on {data.eval_count:,} images, "
          f"{eval_name}; weights {args.weights}{how}")
    if classes > 5:  # the AlexNet paper's second figure
        print(f"{label} top-5 accuracy: {top_k_accuracy(probabilities, y, 5):.4f}{how}")
    if classes <= 20:
        print(_confusion_text(confusion_matrix(y, predicted, classes)))
        if class_names:
            print("classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(class_names)))
    return 0


def _ten_crop_average(plain, x, batch_size):
    """The paper's test: the softmax averaged over ten 227x227 patches of each 256x256 image
    (datasets.ten_crops), predicted by ``plain``, the net without its augmentation layers."""
    import numpy as np

    from fastcnn import datasets
    height, width = plain.input_shape[1:3]
    batches = (x[i][0] for i in range(len(x))) if not hasattr(x, "shape") else \
        (x[start:start + batch_size] for start in range(0, len(x), batch_size))
    averaged = []
    for images in batches:
        crops = datasets.ten_crops(images, height, width)
        averaged.append(sum(plain.predict(crop, batch_size=batch_size) for crop in crops) / np.float32(10))
    return np.concatenate(averaged)


def _loss_and_accuracy(probabilities, labels):
    """Mean cross-entropy and top-1 accuracy of probability rows against integer labels."""
    import numpy as np
    own = probabilities[np.arange(len(labels)), labels]
    loss = float(np.mean(-np.log(np.maximum(own, np.finfo(np.float32).tiny))))
    return loss, float(np.mean(probabilities.argmax(axis=1) == labels))


def _natural(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# what evaluate and predict take from the history.json that train wrote beside the weights
RUN_FIELDS = {
    "model": lambda v: v in INPUT_SHAPES,
    "variant": lambda v: v in (None, "single", "original"),
    "augment": lambda v: isinstance(v, bool),
    "data": lambda v: v in DATA_SETS,
    "data_dir": lambda v: v is None or isinstance(v, str),
    "classes": lambda v: v is None or (isinstance(v, list) and len(v) > 0 and all(isinstance(n, str) for n in v)),
    "seed": _natural,
    "split_seed": _natural,
    "precision": lambda v: v in NAMES,
}


def _run_meta(weights) -> dict:
    """The fields of RUN_FIELDS that train recorded beside the weights (history.json), each
    checked; {} without that file.  An unreadable file or a malformed field is said on stderr
    and not used."""
    import json
    history = Path(weights).parent / "history.json"
    if not history.is_file():
        return {}
    try:
        meta = json.loads(history.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        print(f"warning: {history} is not readable JSON ({exc}): the data set, classes and model options "
              f"it should record are not used", file=sys.stderr)
        return {}
    if not isinstance(meta, dict):
        print(f"warning: {history} holds no record of a run (a JSON {type(meta).__name__}): not used",
              file=sys.stderr)
        return {}
    bad = [k for k, valid in RUN_FIELDS.items() if k in meta and not valid(meta[k])]
    if bad:
        print(f"warning: {history}: malformed {', '.join(bad)} not used", file=sys.stderr)
    return {k: meta[k] for k in RUN_FIELDS if k in meta and k not in bad}


def _refuse(option: str, given, recorded, history: Path) -> None:
    raise UsageError(f"{option} {given}: the weights were trained with {recorded} ({history}); "
                     f"leave {option} out to use that")


def _as_trained(args) -> dict:
    """The model options (--variant, --augment, --precision; for evaluate, the data set too) as
    the run that wrote --weights used them, where not given; one given that contradicts the run
    is refused.  Returns the record."""
    meta = _run_meta(args.weights)
    history = Path(args.weights).parent / "history.json"
    if meta.get("model", args.model) != args.model:
        raise UsageError(f"--weights {args.weights}: trained for {meta['model']} ({history}), not {args.model}")
    taken = []
    if args.precision is None:
        args.precision = meta.get("precision", "fp32")
        if args.precision != "fp32":
            taken.append(f"--precision {args.precision}")
    if "variant" in meta and args.model == "alexnet":
        if args.variant is None:
            args.variant = meta["variant"]
            taken.append(f"--variant {args.variant}")
        elif args.variant != (meta["variant"] or "single"):
            _refuse("--variant", args.variant, f"--variant {meta['variant'] or 'single'}", history)
    if meta.get("augment") and not args.augment:
        args.augment = True
        taken.append("--augment")
    elif args.augment and meta.get("augment") is False:
        raise UsageError(f"--augment: the weights were trained without it ({history})")
    if hasattr(args, "data"):
        taken += _data_as_trained(args, meta, history)
    if taken:
        print(f"as trained ({history}): {' '.join(taken)}")
    return meta


def _labels_of(data: str):
    """The class names of a data set with fixed classes (None: a folder's own, or random labels)."""
    from fastcnn import datasets
    digits = [str(i) for i in range(10)]
    return {"mnist": digits, "mnist-sample": digits, "fashion-mnist": list(datasets.FASHION_CLASSES)}.get(data)


def _data_as_trained(args, meta: dict, history: Path) -> list:
    """evaluate: --data, --data-dir, --split-seed and --seed from the record where not given;
    a --data whose classes differ from the training data's is refused (a folder's classes are
    checked when it is listed: args.trained_classes)."""
    taken = []
    trained = meta.get("data")
    if args.data is None and trained:
        args.data = trained
        taken.append(f"--data {trained}")
    names = meta.get("classes") if trained == "folder" else _labels_of(trained)
    if trained and args.data != trained and ("synthetic" in (trained, args.data) or
                                             args.data != "folder" and _labels_of(args.data) != names):
        raise UsageError(f"--data {args.data}: the weights were trained on {trained} ({history}), whose "
                         f"classes are not {args.data}'s: the scores would mean nothing; leave --data out "
                         f"to evaluate on {trained}")
    args.trained_classes = names if args.data == "folder" else None
    same = trained == args.data
    if same and args.data_dir is None and meta.get("data_dir"):
        args.data_dir = meta["data_dir"]
        taken.append(f"--data-dir {args.data_dir}")
    for option, name in (("--split-seed", "split_seed"), ("--seed", "seed")):
        recorded, given = (meta.get(name) if same else None), getattr(args, name)
        if given is None:
            setattr(args, name, recorded or 0)
            if recorded:
                taken.append(f"{option} {recorded}")
        elif name == "split_seed" and args.data == "mnist-sample" and recorded not in (None, given):
            raise UsageError(f"--split-seed {given}: the weights were trained with --split-seed {recorded} "
                             f"({history}); another split's validation images include ones it trained on")
    return taken


def _class_names_for(meta: dict, num_classes: int) -> list:
    """The names train recorded beside the weights (history.json), else Fashion-MNIST's or indices."""
    names = meta.get("classes") or _labels_of(meta.get("data"))
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def cmd_predict(args) -> int:
    import numpy as np
    meta = _as_trained(args)

    from fastcnn import datasets
    weights = Path(args.weights)
    last = list(_read_weights(weights).values())[-1]
    if last.ndim != 1 or not last.size:
        raise UsageError(f"--weights: {weights} does not end with a layer's bias: not the weights of a {args.model}")
    num_classes = int(last.shape[0])  # the last layer's bias
    model = build_model(args, num_classes)
    try:
        model.load_weights(weights)
    except ValueError as exc:
        raise UsageError(f"--weights: {exc}") from None
    note = place(model, args.device)
    height, width, channels = input_shape(args)
    images, failed = datasets.try_read_images(args.images, (height, width), "rgb" if channels == 3 else "grayscale")
    with using_kernels({}, args.precision):
        probabilities = iter(model.predict(datasets.prepare_images(images), batch_size=args.batch_size)
                             if len(images) else ())
    names = _class_names_for(meta, num_classes)
    print(f"device: {model.device}, backend: {model.backend.name}{note}; {args.model}, {num_classes} classes, "
          f"weights {weights}")
    for i, path in enumerate(args.images):
        if i in failed:
            print(f"fastcnn predict: error: {failed[i]}", file=sys.stderr, flush=True)
            continue
        row = next(probabilities)
        best = np.argsort(-row, kind="stable")[:args.top]
        print(f"{path}: " + ", ".join(f"{names[i]} {row[i]:.3f}" for i in best), flush=True)
    if failed:
        print(f"fastcnn predict: {len(failed)} of {len(args.images)} image(s) could not be read (above)",
              file=sys.stderr)
        return 1
    return 0
