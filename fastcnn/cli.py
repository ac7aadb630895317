"""The ``fastcnn`` command: info | kernels | summary | train | evaluate | predict | profile | bench | check.

    fastcnn info                         versions, CPU, GPU, which backends are usable (and why not)
    fastcnn summary lenet5|alexnet       the Keras-style layer table
    fastcnn train lenet5 [...]           train with a live progress bar, write history/weights/plot
    fastcnn bench ... / fastcnn check ...  delegated to fastcnn.benchmark / fastcnn.check

``main(argv)`` returns the exit code: 0 done, 1 a clear failure (missing data, unusable
device, ...), 2 bad usage, 130 interrupted (after saving a checkpoint).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# bench and check live in modules of their own, imported only when asked for
# (they pull in CuPy and PyTorch, which `fastcnn info` or `train` should not wait for).
DELEGATED = {"bench": ("fastcnn.benchmark", "benchmark kernels and networks against cuBLAS, cuDNN, PyTorch"),
             "check": ("fastcnn.check", "check every kernel variant against the reference on this machine")}

DATA_SETS = ("mnist-sample", "mnist", "fashion-mnist", "folder", "synthetic")
INPUT_SHAPES = {"lenet5": (28, 28, 1), "alexnet": (227, 227, 3)}
DEFAULT_BATCH = {"lenet5": 200, "alexnet": 128}        # the seed's 200; AlexNet paper's 128
DEFAULT_SYNTHETIC = {"lenet5": (2000, 500), "alexnet": (256, 64)}  # (train, validation) images
DEFAULT_CLASSES = {"lenet5": 10, "alexnet": 1000}
AUGMENT_INPUT = (256, 256, 3)  # AlexNet --augment: random 227x227 crops (and mirror images) of 256x256
FOLDER_VALIDATION = 0.2  # held out of a one-level image folder (no train/ and val/ inside)


class UsageError(Exception):
    """A combination of options that cannot work; the message says what to do instead."""


# ---------------------------------------------------------------------------- info
def _version(*dists) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _fastcnn_version() -> str:
    installed = _version("fastcnn")
    if installed:
        return installed
    import fastcnn
    return getattr(fastcnn, "__version__", "unknown") + " (source checkout, not installed)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_lines() -> list[str]:
    """Name, memory and compute capability of each GPU, from CuPy, else from nvidia-smi."""
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        try:
            lines = []
            for i in range(cupy.cuda.runtime.getDeviceCount()):
                p = cupy.cuda.runtime.getDeviceProperties(i)
                name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
                lines.append(f"GPU {i}: {name}, {p['totalGlobalMem'] / 2**30:.1f} GiB, "
                             f"compute capability {p['major']}.{p['minor']}, {p['multiProcessorCount']} SMs")
            drv, rt = cupy.cuda.runtime.driverGetVersion(), cupy.cuda.runtime.runtimeGetVersion()
            lines.append(f"CUDA driver {drv // 1000}.{drv % 1000 // 10}, runtime {rt // 1000}.{rt % 1000 // 10}")
            return lines or ["GPU: none found by CuPy"]
        except Exception as exc:  # no driver, no device: a fact to report, not a crash
            return [f"GPU: none usable through CuPy ({type(exc).__name__}: {exc})"]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return [f"GPU {i}: {line.strip()} (from nvidia-smi; CuPy is not installed)"
                        for i, line in enumerate(out.stdout.strip().splitlines())]
        except (OSError, subprocess.SubprocessError):
            pass
    return ["GPU: none found (CuPy is not installed and nvidia-smi is absent or found no GPU)"]


def cmd_info(args) -> int:
    print(f"fastcnn     {_fastcnn_version()}")
    print(f"python      {platform.python_version()} ({sys.executable})")
    for label, dists in (("numpy", ("numpy",)),
                         ("cupy", ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")),
                         ("numba", ("numba",)), ("numba-cuda", ("numba-cuda",)),
                         ("torch", ("torch",)), ("tqdm", ("tqdm",)), ("matplotlib", ("matplotlib",))):
        print(f"{label:<11} {_version(*dists) or 'not installed'}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU         {_cpu_name()}, {cores} cores usable ({platform.system()} {platform.machine()})")
    for line in _gpu_lines():
        print(line)
    from fastcnn.backend import availability
    print("backends:")
    for name, why in availability().items():
        print(f"  {name:<10} {'usable' if why is None else 'unavailable: ' + str(why)}")
    return 0


def cmd_kernels(args) -> int:
    from fastcnn.backend import registry
    ops = registry.ops()
    unknown = [op for op in args.ops if op not in ops]
    if unknown:
        raise UsageError(f"no kernel variants for {', '.join(unknown)}; ops with variants: {', '.join(ops)}")
    for op in args.ops or ops:
        used = registry.selected(op)
        print(op)
        for name in registry.variants(op):
            variant = registry.get(op, name)
            print(f"  {'*' if name == used else ' '} {name:<19} {variant.source:<6} {variant.note}")
    print("* used now (the default unless chosen); choose with fastcnn.kernels.use(op, name), "
          "see docs/cuda_kernels.md")
    for module, why in registry.load_errors().items():
        print(f"variants of {module} unavailable: {why}")
    return 0


# ---------------------------------------------------------------------------- models
def _augment(args) -> bool:
    augment = getattr(args, "augment", False)
    if augment and args.model != "alexnet":
        raise UsageError("--augment applies to alexnet only (a mirrored digit is another digit)")
    return augment


def _input_shape(args) -> tuple:
    """The images the model takes: with --augment, AlexNet's 256x256x3 before its random crop."""
    return AUGMENT_INPUT if _augment(args) else INPUT_SHAPES[args.model]


def _build(args, num_classes: int | None = None):
    from fastcnn import models
    num_classes = num_classes or DEFAULT_CLASSES[args.model]
    if args.model == "lenet5":
        return models.lenet5(num_classes=num_classes)
    return models.alexnet(num_classes=num_classes, variant=args.variant or "single", augment=_augment(args))


def cmd_summary(args) -> int:
    if args.model == "lenet5" and args.variant not in (None, "single"):
        raise UsageError("--variant applies to alexnet only")
    _build(args).summary(print_fn=print)
    return 0


# ---------------------------------------------------------------------------- train
@dataclass
class _Data:
    """What train and evaluate use: (images, one-hot labels) arrays or batch sources."""
    train: object          # (x, y), a batch source (--stream), or None (evaluate)
    validation: object     # the same, for evaluation
    train_count: int
    eval_count: int
    eval_name: str         # how to name the evaluation images
    class_names: list | None   # None: the model's default 10 or 1000 classes
    eval_labels: object    # int64 labels of the evaluation images, in order


def _xy(part) -> tuple:
    """(x, y) for fit/evaluate: the arrays, or (source, None)."""
    return part if isinstance(part, tuple) else (part, None)


def _close(data: _Data) -> None:
    """Stop the decoding threads of --stream's batch sources."""
    for part in (data.train, data.validation):
        if hasattr(part, "close"):
            part.close()


def _load_data(args, train=True) -> _Data:
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
        x, y = datasets.synthetic(n_train, _input_shape(args), num_classes, seed=args.seed)
        xe, ye = datasets.synthetic(n_eval, _input_shape(args), num_classes, seed=args.seed + 1)
        eval_name = "SYNTHETIC validation images (random; accuracy means nothing)"
    if args.limit:
        x, y, xe, ye = x[:args.limit], y[:args.limit], xe[:args.limit], ye[:args.limit]
    return _prepared(x if train else None, y, xe, ye, eval_name, None, DEFAULT_CLASSES[args.model])


def _prepared(x, y, xe, ye, eval_name, class_names, num_classes) -> _Data:
    """uint8 images and integer labels -> float32 images in [0, 1] and one-hot rows."""
    import numpy as np

    from fastcnn import datasets

    def part(images, labels):
        return datasets.prepare_images(images), datasets.to_categorical(labels, num_classes)

    return _Data(part(x, y) if x is not None else None, part(xe, ye), len(x) if x is not None else 0,
                 len(xe), eval_name, class_names, np.asarray(ye, np.int64))


def _load_folder(args, train: bool) -> _Data:
    """--data folder: the model's image size and colours; only the files needed are decoded,
    all at once, or batch by batch as training asks for them (--stream)."""
    import numpy as np

    from fastcnn import datasets
    if args.data_dir is None:
        raise UsageError("--data folder needs --data-dir DIR: one sub-folder of images per class, "
                         "or train/ and val/ folders of those")
    folder = datasets.image_folder(args.data_dir, validation=FOLDER_VALIDATION, seed=args.split_seed)
    height, width, channels = _input_shape(args)
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

        return _Data(source(train_files, True), source(eval_files, False), len(train_files), len(eval_files),
                     folder.eval_name, names, eval_labels)
    print(f"decoding {len(train_files) + len(eval_files):,} images of {folder.root} to "
          f"{height}x{width} {color_mode} ...", flush=True)

    def decoded(files):
        return datasets.read_images([path for path, _ in files], (height, width), color_mode,
                                    progress=getattr(args, "verbose", 1) == 1)

    train_labels = [label for _, label in train_files]
    return _prepared(decoded(train_files) if train else None, train_labels, decoded(eval_files), eval_labels,
                     folder.eval_name, names, len(names))


def _place(model, device: str) -> str:
    """Move the model to the device asked for; with 'auto', the GPU when usable. Returns a note."""
    from fastcnn.backend import BackendUnavailable
    if device != "auto":
        model.to(device)  # 'cuda' without a GPU raises BackendUnavailable with the reason
        return ""
    try:
        model.to("cuda")
        return ""
    except BackendUnavailable as exc:
        model.to("cpu")
        return f" (GPU not used: {exc})"


def _current_gpu() -> str:
    try:
        import cupy
        p = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        return f"{name}, compute capability {p['major']}.{p['minor']}"
    except Exception as exc:  # the name is a courtesy; training goes on without it
        return f"GPU name unknown: {exc}"


def _optimizer(args):
    """Adam for LeNet-5 (the Keras seed); for AlexNet the paper's SGD: momentum 0.9, weight
    decay 0.0005, learning rate 0.01.  Every option given on the command line wins."""
    from fastcnn import optimizers
    paper = args.model == "alexnet"
    name = args.optimizer or ("sgd" if paper else "adam")
    if name == "adam":
        if args.weight_decay:
            raise UsageError("--weight-decay applies to --optimizer sgd (the paper's rule)")
        return optimizers.Adam(learning_rate=args.lr if args.lr is not None else 0.001)
    momentum = args.momentum if args.momentum is not None else (0.9 if paper else 0.0)
    weight_decay = args.weight_decay if args.weight_decay is not None else (5e-4 if paper else 0.0)
    return optimizers.SGD(learning_rate=args.lr if args.lr is not None else 0.01, momentum=momentum,
                          nesterov=args.nesterov, weight_decay=weight_decay)


def _schedule(args) -> list:
    """--reduce-lr / --early-stop as Keras callbacks watching the validation accuracy."""
    from fastcnn import callbacks
    found = []
    if args.reduce_lr is not None:
        found.append(callbacks.ReduceLROnPlateau(monitor="val_accuracy", factor=0.1, patience=args.reduce_lr))
    if args.early_stop is not None:
        found.append(callbacks.EarlyStopping(monitor="val_accuracy", patience=args.early_stop,
                                             restore_best_weights=True))
    return found


def _fit(model, args, data, batch_size, initial_epoch, saver, logger, checkpoint) -> int:
    """Train from initial_epoch to args.epochs; 130 after Ctrl-C (checkpoint saved), else 0."""
    if initial_epoch < args.epochs:
        try:
            model.fit(*_xy(data.train), epochs=args.epochs, batch_size=batch_size, validation_data=data.validation,
                      shuffle=True, verbose=args.verbose, callbacks=_schedule(args) + [saver, logger],
                      initial_epoch=initial_epoch, graph=False if args.no_graph else None)
        except KeyboardInterrupt:
            done = saver.completed if saver.completed is not None else initial_epoch
            model.save_checkpoint(checkpoint, done)
            print(f"\ninterrupted: saved {checkpoint} ({done} epoch(s) complete; the interrupted epoch "
                  f"will run again). Continue with the same command and --resume.", file=sys.stderr)
            return 130
    else:
        print(f"nothing to train: {initial_epoch} epoch(s) already done (raise --epochs to train more)")
    return 0


def _kernel_choices(pairs) -> dict:
    """{op: variant} from --kernel OP=VARIANT options, checked against the registry."""
    from fastcnn.backend import registry
    chosen = {}
    for pair in pairs or ():
        op, sep, name = pair.partition("=")
        if not sep or not op or not name:
            raise UsageError(f"--kernel {pair!r}: expected OP=VARIANT, e.g. conv2d_forward=implicit_gemm96")
        if op not in registry.ops():
            raise UsageError(f"--kernel {pair!r}: no kernel variants for {op}; ops: {', '.join(registry.ops())}")
        if name not in registry.variants(op):
            raise UsageError(f"--kernel {pair!r}: {op} has no variant {name}; "
                             f"its variants: {', '.join(registry.variants(op))} (fastcnn kernels {op})")
        chosen[op] = name
    return chosen


def _kernels_for(model, kernels: dict) -> dict:
    """The --kernel choices that apply on the model's device; on the CPU reference none (said)."""
    if kernels and model.device != "cuda":
        print(f"NOTE: --kernel ignored: the {model.backend.name} backend has no kernel variants "
              "(they are GPU kernels)")
        return {}
    if kernels:
        print("kernels: " + ", ".join(f"{op}={name}" for op, name in kernels.items()))
    return kernels


@contextlib.contextmanager
def _using_kernels(kernels: dict):
    """Every --kernel choice in force inside the block."""
    import fastcnn
    with contextlib.ExitStack() as chosen:
        for op, name in kernels.items():
            chosen.enter_context(fastcnn.kernels.using(op, name))
        yield


def cmd_train(args) -> int:
    import fastcnn
    from fastcnn import callbacks

    args.data = args.data or ("mnist-sample" if args.model == "lenet5" else "synthetic")
    batch_size = args.batch_size or DEFAULT_BATCH[args.model]
    out = Path(args.out or f"runs/{args.model}-{args.data}")
    checkpoint = out / "checkpoint.npz"
    if args.resume and not checkpoint.is_file():
        raise UsageError(f"--resume: no checkpoint at {checkpoint}; train once without --resume "
                         f"(with the same --out) first")

    kernels = _kernel_choices(args.kernel)
    data = _load_data(args)
    class_names = data.class_names
    num_classes = len(class_names) if class_names else DEFAULT_CLASSES[args.model]
    if args.data == "synthetic":
        print("NOTE: --data synthetic: random images and labels, for throughput only; "
              "the accuracies below mean nothing.")

    fastcnn.manual_seed(args.seed)
    model = _build(args, num_classes)
    model.compile(loss="categorical_crossentropy", optimizer=_optimizer(args), metrics=["accuracy"])
    note = _place(model, args.device)
    backend_name = model.backend.name
    if model.device == "cuda":
        note = f" ({_current_gpu()})" + note
    print(f"device: {model.device}, backend: {backend_name}{note}")
    kernels = _kernels_for(model, kernels)
    eval_name = data.eval_name
    print(f"data: {args.data}: {data.train_count:,} training images; evaluation on {data.eval_count:,} images: "
          f"{eval_name}")

    out.mkdir(parents=True, exist_ok=True)
    initial_epoch = 0
    if args.resume:
        initial_epoch = int(model.load_checkpoint(checkpoint))
        print(f"resuming from {checkpoint}: {initial_epoch} epoch(s) done, training to {args.epochs}")
    meta = {"model": args.model, "variant": args.variant if args.model == "alexnet" else None,
            "augment": _augment(args),
            "data": args.data, "synthetic": args.data == "synthetic", "train_images": data.train_count,
            "eval_images": data.eval_count, "eval_set": eval_name, "classes": class_names,
            "epochs": args.epochs, "batch_size": batch_size,
            "optimizer": repr(model.optimizer), "seed": args.seed,
            "device": str(model.device), "backend": backend_name, "graph": model.device == "cuda" and not args.no_graph,
            "kernels": kernels}
    saver = callbacks.ModelCheckpoint(checkpoint)
    logger = callbacks.JSONLogger(out / "history.json", meta=meta, resume_from=initial_epoch)

    with _using_kernels(kernels):  # the --kernel choices hold for training and evaluation
        start = time.perf_counter()
        try:
            code = _fit(model, args, data, batch_size, initial_epoch, saver, logger, checkpoint)
            if code:
                return code
            seconds = time.perf_counter() - start
            loss, accuracy = model.evaluate(*_xy(data.validation), batch_size=batch_size, verbose=0)
        finally:
            _close(data)
    label = _eval_label(args, eval_name)
    print(f"{label} accuracy: {accuracy:.4f} ({label} loss {loss:.4f}) on {data.eval_count:,} images, "
          f"{eval_name}; training took {seconds:.1f} s on {model.device} ({backend_name})")

    model.save_weights(out / "weights.npz")
    logger.data.update({f"{label}_loss": float(loss), f"{label}_accuracy": float(accuracy),
                        "train_seconds_this_run": round(seconds, 2)})
    logger.write()
    written = [out / "history.json", out / "weights.npz", checkpoint]
    try:
        from fastcnn.plotting import PlotUnavailable, plot_history
        try:
            title = f"{args.model} on {args.data}" + (" (SYNTHETIC)" if args.data == "synthetic" else "")
            written.append(Path(plot_history(logger.data, out / "curves.png", title=title)))
        except PlotUnavailable as exc:
            print(f"no plot: {exc}", file=sys.stderr)
    except ValueError as exc:  # no epochs to draw
        print(f"no plot: {exc}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


# ---------------------------------------------------------------------------- evaluate
def _eval_label(args, eval_name: str = "") -> str:
    """'test' for the MNIST-style test sets and an image folder's test/, else 'validation'."""
    if args.data in ("mnist", "fashion-mnist") or (args.data == "folder" and Path(eval_name).name == "test"):
        return "test"
    return "validation"


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
    args.data = args.data or ("mnist-sample" if args.model == "lenet5" else "synthetic")
    data = _load_data(args, train=False)
    eval_name, class_names = data.eval_name, data.class_names
    classes = len(class_names) if class_names else DEFAULT_CLASSES[args.model]
    model = _build(args, classes)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    try:
        model.load_weights(args.weights)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--weights: {exc}") from None
    kernels = _kernel_choices(args.kernel)
    note = _place(model, args.device)
    print(f"device: {model.device}, backend: {model.backend.name}{note}")
    kernels = _kernels_for(model, kernels)
    x, y = _xy(data.validation)
    batch_size = args.batch_size or DEFAULT_BATCH[args.model]
    try:
        with _using_kernels(kernels):
            loss, accuracy = model.evaluate(x, y, batch_size=batch_size, verbose=0)
            probabilities = model.predict(x, batch_size=batch_size)
    finally:
        _close(data)
    y = data.eval_labels
    predicted = probabilities.argmax(axis=1)
    label = _eval_label(args, eval_name)
    print(f"{label} accuracy: {accuracy:.4f} ({label} loss {loss:.4f}) on {data.eval_count:,} images, "
          f"{eval_name}; weights {args.weights}")
    if classes > 5:  # the AlexNet paper's second figure
        print(f"{label} top-5 accuracy: {top_k_accuracy(probabilities, y, 5):.4f}")
    if classes <= 20:
        print(_confusion_text(confusion_matrix(y, predicted, classes)))
        if class_names:
            print("classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(class_names)))
    return 0


# ---------------------------------------------------------------------------- predict
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
    """--variant and --augment as the run that wrote --weights used them, unless given."""
    meta = _run_meta(args.weights)
    if args.model != meta.get("model"):
        return
    taken = []
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
    model = _build(args, num_classes)
    try:
        model.load_weights(weights)
    except ValueError as exc:
        raise UsageError(f"--weights: {exc}") from None
    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    note = _place(model, args.device)
    height, width, channels = _input_shape(args)
    images = datasets.read_images(args.images, (height, width), "rgb" if channels == 3 else "grayscale")
    probabilities = model.predict(datasets.prepare_images(images), batch_size=args.batch_size or 64)
    names = _class_names_for(weights, num_classes)
    print(f"device: {model.device}, backend: {model.backend.name}{note}; {args.model}, {num_classes} classes, "
          f"weights {weights}")
    for path, row in zip(args.images, probabilities):
        best = np.argsort(-row, kind="stable")[:args.top]
        print(f"{path}: " + ", ".join(f"{names[i]} {row[i]:.3f}" for i in best))
    return 0


# ---------------------------------------------------------------------------- profile
def cmd_profile(args) -> int:
    import json

    import fastcnn
    from fastcnn import datasets

    kernels = _kernel_choices(args.kernel)
    batch_size = args.batch_size or DEFAULT_BATCH[args.model]
    if args.steps < 1 or args.warmup < 0 or batch_size < 1:
        raise UsageError(f"--steps and --batch-size must be >= 1 and --warmup >= 0, got "
                         f"steps={args.steps}, batch_size={batch_size}, warmup={args.warmup}")
    args.optimizer = args.optimizer or ("adam" if args.model == "lenet5" else "sgd")
    classes = DEFAULT_CLASSES[args.model]
    x, y = datasets.synthetic(batch_size, INPUT_SHAPES[args.model], classes, seed=args.seed)
    x, y = datasets.prepare_images(x), datasets.to_categorical(y, classes)
    fastcnn.manual_seed(args.seed)
    model = _build(args)
    model.compile(loss="categorical_crossentropy", optimizer=_optimizer(args), metrics=["accuracy"])
    note = _place(model, args.device)
    if model.device == "cuda":
        note = f" ({_current_gpu()})" + note
    print(f"profile: {args.model}, batch {batch_size} (random images), {model.optimizer!r}, {args.steps} eager "
          f"training step(s) after {args.warmup} warm-up; device: {model.device}, backend: {model.backend.name}{note}")
    kernels = _kernels_for(model, kernels)
    with _using_kernels(kernels):
        prof = model.profile(x, y, steps=args.steps, warmup=args.warmup)
    for by in args.by or ["call", "op"]:
        print()
        print(prof.table(by=by))
    if args.json:
        data = dict(prof.to_dict(), model=args.model, variant=args.variant if args.model == "alexnet" else None,
                    batch_size=batch_size, device=model.device, kernels=kernels, optimizer=repr(model.optimizer))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1, default=float))
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------- bench / check
def _delegate(command: str, argv) -> int:
    module_name, description = DELEGATED[command]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if getattr(exc, "name", None) == module_name:
            print(f"fastcnn {command}: {module_name} is not part of this installation "
                  f"({module_name.replace('.', '/')}.py is missing)", file=sys.stderr)
        else:
            print(f"fastcnn {command}: cannot import {module_name}: {exc} "
                  f"(the GPU extras: pip install 'fastcnn[cuda]')", file=sys.stderr)
        return 1
    doc = (module.__doc__ or "").strip()
    parser = argparse.ArgumentParser(prog=f"fastcnn {command}", description=doc.splitlines()[0] if doc else description)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)


# ---------------------------------------------------------------------------- parser
def _add_step_arguments(p) -> None:
    """What both train and profile take: the model, device, batch, optimizer, kernels, seed."""
    p.add_argument("model", choices=sorted(INPUT_SHAPES))
    p.add_argument("--variant", choices=["single", "original"], default="single", help="AlexNet variant")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU when one is usable, else the CPU reference")
    p.add_argument("--batch-size", type=int, default=None, help="200 for lenet5, 128 for alexnet")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=None,
                   help="default: adam for lenet5 (the Keras seed), sgd for alexnet (the paper)")
    p.add_argument("--lr", type=float, default=None, help="learning rate; 0.001 for adam, 0.01 for sgd")
    p.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum; default 0.9 for alexnet (the paper), 0 for lenet5")
    p.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="SGD weight decay, added to the gradient as in the paper; default 0.0005 for "
                        "alexnet, 0 for lenet5")
    p.add_argument("--kernel", action="append", metavar="OP=VARIANT",
                   help="use this kernel variant for a primitive on the GPU (repeatable; "
                        "see fastcnn kernels), e.g. conv2d_forward=implicit_gemm96")
    p.add_argument("--seed", type=int, default=0, help="weights, data order or random images, dropout")


DATA_DIR_HELP = ("folder: the image folder (DIR/<class>/*.jpg, or DIR/train/<class>/ and DIR/val/<class>/); "
                 "mnist, fashion-mnist: the IDX files' directory (default: the cache directory, "
                 "$FASTCNN_DATA or ~/.cache/fastcnn)")
STREAM_HELP = ("folder: decode each batch when it is needed, on threads ahead of the GPU, instead of "
               "every image first (for folders larger than memory)")
AUGMENT_HELP = ("alexnet: the paper's augmentation: images at 256x256, a random 227x227 crop of each, "
                "mirrored with probability 1/2, drawn on the device every step (evaluation: the centre crop)")
VARIANT_AS_TRAINED = "AlexNet variant; default: as history.json beside --weights records it, else single"
AUGMENT_AS_TRAINED = ("alexnet trained with --augment: 256x256 images, their centre 227x227 crops; on by itself "
                      "when history.json beside --weights records it")
SPLIT_SEED_HELP = (f"the random split of mnist-sample (8,000/2,000) or of a one-level image folder "
                   f"({1 - FOLDER_VALIDATION:.0%}/{FOLDER_VALIDATION:.0%})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcnn", description="Train LeNet-5 and AlexNet on "
                                     "hand-written CUDA kernels (NumPy reference on the CPU).")
    sub = parser.add_subparsers(dest="command",
                                metavar="{info,kernels,summary,train,evaluate,predict,profile,bench,check}")

    p = sub.add_parser("info", help="versions, CPU, GPU and usable backends")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("kernels", help="every kernel variant of each GPU primitive, and which one is used")
    p.add_argument("ops", nargs="*", metavar="OP", help="only these primitives (e.g. conv2d_forward)")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("summary", help="print a model's layer table")
    p.add_argument("model", choices=sorted(INPUT_SHAPES))
    p.add_argument("--variant", choices=["single", "original"], default=None,
                   help="AlexNet: 'single' tower (default) or the 'original' two-group net with LRN")
    p.add_argument("--augment", action="store_true", help=AUGMENT_HELP)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a model, write history.json, weights.npz, curves.png",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_step_arguments(p)
    p.add_argument("--data", choices=DATA_SETS, default=None,
                   help="mnist-sample for lenet5 (bundled, offline), synthetic for alexnet; "
                        "folder: your images in --data-dir")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--split-seed", type=int, default=0, help=SPLIT_SEED_HELP)
    p.add_argument("--out", default=None, help="output directory (default runs/MODEL-DATA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--no-graph", action="store_true", help="do not capture the step as a CUDA graph")
    p.add_argument("--augment", action="store_true", help=AUGMENT_HELP)
    p.add_argument("--stream", action="store_true", help=STREAM_HELP)
    p.add_argument("--reduce-lr", type=int, default=None, metavar="EPOCHS",
                   help="divide the learning rate by 10 after EPOCHS epochs without a better validation "
                        "accuracy (the AlexNet paper's schedule)")
    p.add_argument("--early-stop", type=int, default=None, metavar="EPOCHS",
                   help="stop after EPOCHS epochs without a better validation accuracy, keeping the best "
                        "epoch's weights")
    p.add_argument("--limit", type=int, default=None,
                   help="use at most N training and N evaluation images (quick runs)")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                   help="1: live bar per epoch, 2: one line per epoch, 0: quiet")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy and confusion matrix of saved weights on a data set",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", choices=sorted(INPUT_SHAPES))
    p.add_argument("--weights", required=True, help="a weights.npz written by fastcnn train (or save_weights)")
    p.add_argument("--variant", choices=["single", "original"], default=None, help=VARIANT_AS_TRAINED)
    p.add_argument("--data", choices=DATA_SETS, default=None,
                   help="mnist-sample (its 2,000-image validation split) for lenet5, synthetic for alexnet; "
                        "mnist and fashion-mnist: their test sets; folder: its val/ folder or held-out part")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--split-seed", type=int, default=0, help=SPLIT_SEED_HELP + " (as in train)")
    p.add_argument("--stream", action="store_true", help=STREAM_HELP)
    p.add_argument("--augment", action="store_true", help=AUGMENT_AS_TRAINED)
    p.add_argument("--limit", type=int, default=None, help="only the first N evaluation images")
    p.add_argument("--seed", type=int, default=0, help="synthetic data: the --seed train was given")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU when one is usable, else the CPU reference")
    p.add_argument("--batch-size", type=int, default=None, help="200 for lenet5, 128 for alexnet")
    p.add_argument("--kernel", action="append", metavar="OP=VARIANT",
                   help="use this kernel variant for a primitive on the GPU (repeatable)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files with saved weights (top classes)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", choices=sorted(INPUT_SHAPES))
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (scaled and centre-cropped to the model's input; LeNet-5 learned "
                        "MNIST's white digits on black)")
    p.add_argument("--weights", required=True, help="a weights.npz written by fastcnn train; class names "
                   "come from the history.json beside it")
    p.add_argument("--variant", choices=["single", "original"], default=None, help=VARIANT_AS_TRAINED)
    p.add_argument("--augment", action="store_true", help=AUGMENT_AS_TRAINED)
    p.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU when one is usable, else the CPU reference")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 64)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("profile", help="time every kernel call of a training step, by layer",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_step_arguments(p)
    p.add_argument("--steps", type=int, default=5, help="profiled steps (the table shows their mean)")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded steps first (compilation, autotuning)")
    p.add_argument("--by", action="append", choices=["call", "op", "layer"],
                   help="group rows by call site, primitive or layer (repeatable; default: call, then op)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the profile as JSON")
    p.set_defaults(func=cmd_profile)

    for name, (_, description) in DELEGATED.items():  # listed for --help; main() dispatches them
        sub.add_parser(name, help=description, add_help=False)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from fastcnn.backend import BackendUnavailable
    from fastcnn.datasets import ChecksumMismatch, DataNotFound, IDXFormatError, ImageFolderError
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"fastcnn {args.command}: {exc}", file=sys.stderr)
        return 2
    except (DataNotFound, ChecksumMismatch, IDXFormatError, ImageFolderError, BackendUnavailable,
            ImportError) as exc:  # ImportError: an optional package a command needs (Pillow for folders)
        print(f"fastcnn {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
