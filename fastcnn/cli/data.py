"""The data of fastcnn train and evaluate: a data set as (images, one-hot labels) arrays, or as
batch sources decoded on the way (--stream)."""
from __future__ import annotations

from dataclasses import dataclass

from .common import (DEFAULT_BATCH, DEFAULT_CLASSES, DEFAULT_SYNTHETIC, FOLDER_VALIDATION, UsageError,
                     input_shape)


@dataclass
class Data:
    """What train and evaluate use: (images, one-hot labels) arrays or batch sources."""
    train: object          # (x, y), a batch source (--stream), or None (evaluate)
    validation: object     # the same, for evaluation
    train_count: int
    eval_count: int
    eval_name: str         # how to name the evaluation images
    class_names: list | None   # None: the model's default 10 or 1000 classes
    eval_labels: object    # int64 labels of the evaluation images, in order


def xy(part) -> tuple:
    """(x, y) for fit/evaluate: the arrays, or (source, None)."""
    return part if isinstance(part, tuple) else (part, None)


def close_sources(data: Data) -> None:
    """Stop the decoding threads of --stream's batch sources."""
    for part in (data.train, data.validation):
        if hasattr(part, "close"):
            part.close()


def load_data(args, train=True) -> Data:
    """The data set --data names, checked against the model and options (train=False: the
    evaluation part only)."""
    from fastcnn import datasets
    if args.model == "alexnet" and args.data not in ("synthetic", "folder"):
        raise UsageError(f"AlexNet takes 227x227x3 images and {args.data} has 28x28x1 ones: use "
                         f"--data folder --data-dir DIR (your images) or --data synthetic (throughput only)")
    if args.data != "folder" and args.data_dir is not None and args.data not in ("mnist", "fashion-mnist"):
        raise UsageError(f"--data-dir applies to --data folder, mnist and fashion-mnist, not {args.data}")
    if getattr(args, "stream", False) and args.data != "folder":
        raise UsageError("--stream applies to --data folder (the other data sets are small)")
    if args.data == "mnist-sample":
        (x, y), (xe, ye) = datasets.load_mnist_sample(seed=args.split_seed)
        eval_name = f"validation (the bundled 10,000-digit MNIST sample, 8,000/2,000 split, seed {args.split_seed})"
    elif args.data == "mnist":
        (x, y), (xe, ye) = datasets.load_mnist(args.data_dir)
        eval_name = "MNIST test set"
    elif args.data == "fashion-mnist":
        (x, y), (xe, ye) = datasets.load_fashion_mnist(args.data_dir)
        eval_name = "Fashion-MNIST test set"
    elif args.data == "folder":
        return _load_folder(args, train)
    else:
        n_train, n_eval = DEFAULT_SYNTHETIC[args.model]
        if args.limit:
            n_train, n_eval = args.limit, max(1, args.limit // 4)
        num_classes = DEFAULT_CLASSES[args.model]
        x, y = datasets.synthetic(n_train, input_shape(args), num_classes, seed=args.seed)
        xe, ye = datasets.synthetic(n_eval, input_shape(args), num_classes, seed=args.seed + 1)
        eval_name = "SYNTHETIC validation images (random; accuracy means nothing)"
    if args.limit:
        x, y, xe, ye = x[:args.limit], y[:args.limit], xe[:args.limit], ye[:args.limit]
    return _prepared(x if train else None, y, xe, ye, eval_name, None, DEFAULT_CLASSES[args.model])


def _prepared(x, y, xe, ye, eval_name, class_names, num_classes) -> Data:
    """uint8 images and integer labels -> float32 images in [0, 1] and one-hot rows."""
    import numpy as np

    from fastcnn import datasets

    def part(images, labels):
        return datasets.prepare_images(images), datasets.to_categorical(labels, num_classes)

    return Data(part(x, y) if x is not None else None, part(xe, ye), len(x) if x is not None else 0,
                 len(xe), eval_name, class_names, np.asarray(ye, np.int64))


def _load_folder(args, train: bool) -> Data:
    """--data folder: the model's image size and colours; only the files needed are decoded,
    all at once, or batch by batch as training asks for them (--stream)."""
    import numpy as np

    from fastcnn import datasets
    if args.data_dir is None:
        raise UsageError("--data folder needs --data-dir DIR: one sub-folder of images per class, "
                         "or train/ and val/ folders of those")
    folder = datasets.image_folder(args.data_dir, validation=FOLDER_VALIDATION, seed=args.split_seed)
    trained = getattr(args, "trained_classes", None)  # evaluate: the classes the weights learned
    if trained is not None and list(folder.class_names) != list(trained):
        raise UsageError(f"--data-dir {args.data_dir}: its classes ({', '.join(folder.class_names)}) are not "
                         f"the {len(trained)} the weights were trained on ({', '.join(trained)})")
    print(folder.found(), flush=True)
    height, width, channels = input_shape(args)
    color_mode = "rgb" if channels == 3 else "grayscale"
    train_files = folder.train[:args.limit or None] if train else []
    eval_files = folder.eval[:args.limit or None]
    names = list(folder.class_names)
    eval_labels = np.array([label for _, label in eval_files], dtype=np.int64)
    if getattr(args, "stream", False):
        print(f"streaming {len(train_files) + len(eval_files):,} images of {folder.root}: decoded to "
              f"{height}x{width} {color_mode} batch by batch", flush=True)
        batch = args.batch_size or DEFAULT_BATCH[args.model]

        def source(files, shuffle):
            return datasets.ImageFolderBatches(files, batch, (height, width), color_mode, len(names),
                                               shuffle=shuffle, seed=args.seed) if files else None

        return Data(source(train_files, True), source(eval_files, False), len(train_files), len(eval_files),
                     folder.eval_name, names, eval_labels)
    print(f"decoding {len(train_files) + len(eval_files):,} images of {folder.root} to "
          f"{height}x{width} {color_mode} ...", flush=True)

    def decoded(files):
        return datasets.read_images([path for path, _ in files], (height, width), color_mode,
                                    progress=getattr(args, "verbose", 1) == 1)

    train_labels = [label for _, label in train_files]
    return _prepared(decoded(train_files) if train else None, train_labels, decoded(eval_files), eval_labels,
                     folder.eval_name, names, len(names))
