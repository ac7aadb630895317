"""fastcnn evaluate (loss, accuracy, top-5, confusion matrix) and fastcnn predict (top classes of
image files), with saved weights and the run's history.json beside them."""
from __future__ import annotations

import argparse
from pathlib import Path

from fastcnn.config import NAMES

from .common import (DEFAULT_BATCH, DEFAULT_CLASSES, UsageError, build_model, eval_label, input_shape,
                     kernel_choices, kernels_for, place, say_precision, using_kernels)
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


def cmd_evaluate(args) -> int:
    _as_trained(args)
    if args.ten_crop and not args.augment:
        raise UsageError("--ten-crop takes the paper's ten 227x227 patches of 256x256 images: it needs an "
                         "alexnet trained with --augment")
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


def _run_meta(weights) -> dict:
    """What fastcnn train recorded beside the weights (its history.json), or {}."""
    import json
    history = Path(weights).parent / "history.json"
    try:
        meta = json.loads(history.read_text()) if history.is_file() else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _as_trained(args) -> None:
    """--variant, --augment and --precision as the run that wrote --weights used them, unless given."""
    meta = _run_meta(args.weights)
    if args.model != meta.get("model"):
        args.precision = args.precision or "fp32"
        return
    taken = []
    if args.precision is None:
        args.precision = meta.get("precision") if meta.get("precision") in NAMES else "fp32"
        if args.precision != "fp32":
            taken.append(f"--precision {args.precision}")
    if args.variant is None and meta.get("variant"):
        args.variant = meta["variant"]
        taken.append(f"--variant {args.variant}")
    if not args.augment and meta.get("augment"):
        args.augment = True
        taken.append("--augment")
    if taken:
        print(f"as trained ({Path(args.weights).parent / 'history.json'}): {' '.join(taken)}")


def _class_names_for(weights: Path, num_classes: int) -> list:
    """The names train recorded beside the weights (history.json), else Fashion-MNIST's or indices."""
    from fastcnn import datasets
    meta = _run_meta(weights)
    names = meta.get("classes")
    if not names and meta.get("data") == "fashion-mnist":
        names = list(datasets.FASHION_CLASSES)
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def cmd_predict(args) -> int:
    import numpy as np
    _as_trained(args)

    from fastcnn import datasets
    from fastcnn.model import _load_npz
    weights = Path(args.weights)
    try:
        arrays = list(_load_npz(weights).values())
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--weights: {exc}") from None
    num_classes = int(arrays[-1].shape[0])  # the last layer's bias
    model = build_model(args, num_classes)
    try:
        model.load_weights(weights)
    except ValueError as exc:
        raise UsageError(f"--weights: {exc}") from None
    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    note = place(model, args.device)
    height, width, channels = input_shape(args)
    images = datasets.read_images(args.images, (height, width), "rgb" if channels == 3 else "grayscale")
    with using_kernels({}, args.precision):
        probabilities = model.predict(datasets.prepare_images(images), batch_size=args.batch_size or 64)
    names = _class_names_for(weights, num_classes)
    print(f"device: {model.device}, backend: {model.backend.name}{note}; {args.model}, {num_classes} classes, "
          f"weights {weights}")
    for path, row in zip(args.images, probabilities):
        best = np.argsort(-row, kind="stable")[:args.top]
        print(f"{path}: " + ", ".join(f"{names[i]} {row[i]:.3f}" for i in best))
    return 0
