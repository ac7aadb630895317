"""The parser, main(), and the small commands: info, kernels, summary, profile, bench/check."""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from fastcnn.config import NAMES

from .common import (DATA_SETS, DEFAULT_BATCH, DEFAULT_CLASSES, FOLDER_VALIDATION, INPUT_SHAPES, PRECISION_HELP, Parser,
                     UsageError, build_model, current_gpu, fraction, kernel_choices, kernels_for, nonnegative_float,
                     nonnegative_int, output_file, place, positive_float, positive_int, using_kernels)
from .evaluate import cmd_evaluate, cmd_predict
from .train import cmd_train, optimizer_for


# bench and check live in modules of their own, imported only when asked for
# (they pull in CuPy and PyTorch, which `fastcnn info` or `train` should not wait for).
DELEGATED = {"bench": ("fastcnn.benchmark", "benchmark kernels and networks against cuBLAS, cuDNN, PyTorch"),
             "check": ("fastcnn.check", "check every kernel variant against the reference on this machine")}


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
            from fastcnn.backend import cuda
            return [f"GPU: none usable: {cuda.unavailable_reason() or f'{type(exc).__name__}: {exc}'}"]
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
    from fastcnn import distribution
    print(f"MPI         {distribution.describe()}")
    from fastcnn.backend import availability
    print("backends:")
    for name, why in availability().items():
        print(f"  {name:<10} {'usable' if why is None else 'unavailable: ' + str(why)}")
    return 0


def cmd_kernels(args) -> int:
    from fastcnn import kernels as registry  # every variant registered
    ops = registry.ops()
    unknown = [op for op in args.ops if op not in ops]
    if unknown:
        raise UsageError(f"no kernel variants for {', '.join(unknown)}; ops with variants: {', '.join(ops)}")
    from fastcnn.backend import availability
    no_gpu = availability()["cuda"]  # None where the GPU backend runs, else why not
    mark = "-" if no_gpu else "*"
    for op in args.ops or ops:
        used = registry.selected(op)
        print(op)
        for name in registry.variants(op):
            variant = registry.lookup(op, name)
            tf32 = " [TF32]" if variant.precision == "tf32" else ""
            print(f"  {mark if name == used else ' '} {name:<19} {variant.source:<6} {variant.note}{tf32}")
    if no_gpu:
        print(f"none of these runs here: {no_gpu}; the NumPy reference runs instead.\n"
              "- the one a GPU would use (the default unless chosen)", end="")
    else:
        print("* in use (the default unless chosen)", end="")
    print("; choose with fastcnn.kernels.use(op, name), see docs/cuda_kernels.md; "
          "[TF32] variants run only with --precision tf32")
    for module, why in registry.load_errors().items():
        print(f"variants of {module} unavailable: {why}")
    return 0


def cmd_summary(args) -> int:
    if args.model == "lenet5" and args.variant not in (None, "single"):
        raise UsageError("--variant applies to alexnet only")
    build_model(args).summary(print_fn=print)
    return 0


def cmd_profile(args) -> int:
    import json

    import fastcnn
    from fastcnn import datasets

    kernels = kernel_choices(args.kernel, args.precision)
    batch_size = args.batch_size or DEFAULT_BATCH[args.model]
    classes = DEFAULT_CLASSES[args.model]
    x, y = datasets.synthetic(batch_size, INPUT_SHAPES[args.model], classes, seed=args.seed)
    x, y = datasets.prepare_images(x), datasets.to_categorical(y, classes)
    fastcnn.manual_seed(args.seed)
    model = build_model(args)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer_for(args), metrics=["accuracy"])
    note = place(model, args.device)
    if model.device == "cuda":
        note = f" ({current_gpu()})" + note
    print(f"profile: {args.model}, batch {batch_size} (random images), {model.optimizer!r}, {args.steps} eager "
          f"training step(s) after {args.warmup} warm-up; device: {model.device}, backend: {model.backend.name}{note}"
          f"; precision: {args.precision}")
    kernels = kernels_for(model, kernels)
    with using_kernels(kernels, args.precision):
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
    parser = Parser(prog=f"fastcnn {command}", description=doc.splitlines()[0] if doc else description)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except OSError as exc:  # a file it writes: one line naming it
        print(f"fastcnn {command}: error: {_os_error(exc)}", file=sys.stderr)
        return 1


def _add_step_arguments(p) -> None:
    """What both train and profile take: the model, device, batch, optimizer, kernels, seed."""
    p.add_argument("model", choices=sorted(INPUT_SHAPES))
    p.add_argument("--variant", choices=["single", "original"], default="single", help="AlexNet variant")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU when one is usable, else the CPU reference")
    p.add_argument("--batch-size", type=positive_int, default=None, help="200 for lenet5, 128 for alexnet")
    p.add_argument("--optimizer", choices=["adam", "adamw", "rmsprop", "sgd"], default=None,
                   help="default: adam for lenet5 (the Keras seed), sgd for alexnet (the paper); "
                        "adamw and rmsprop with Keras's defaults")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate; 0.001 for adam, adamw and rmsprop, 0.01 for sgd")
    p.add_argument("--momentum", type=fraction, default=None,
                   help="SGD (or RMSprop) momentum; default 0.9 for alexnet's SGD (the paper), else 0")
    p.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    p.add_argument("--weight-decay", type=nonnegative_float, default=None,
                   help="SGD weight decay, added to the gradient as in the paper; default 0.0005 for "
                        "alexnet, 0 for lenet5; AdamW's decoupled decay, default 0.004")
    p.add_argument("--kernel", action="append", metavar="OP=VARIANT",
                   help="use this kernel variant for a primitive on the GPU (repeatable; "
                        "see fastcnn kernels), e.g. conv2d_forward=implicit_gemm96")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="weights, data order or random images, dropout")
    p.add_argument("--precision", choices=sorted(NAMES), default="fp32", help=PRECISION_HELP)


DATA_DIR_HELP = ("folder: the image folder (DIR/<class>/*.jpg, or DIR/train/<class>/ and DIR/val/<class>/); "
                 "mnist, fashion-mnist: the IDX files' directory (default: the cache directory, "
                 "$FASTCNN_DATA or ~/.cache/fastcnn)")
STREAM_HELP = ("folder: decode each batch when it is needed, on threads ahead of the GPU, instead of "
               "every image first (for folders larger than memory)")
AUGMENT_HELP = ("alexnet: the paper's augmentation: images at 256x256, a random 227x227 crop of each, "
                "mirrored with probability 1/2, plus the colour noise along ImageNet's RGB principal "
                "components, drawn on the device every step (evaluation: the centre crop)")
VARIANT_AS_TRAINED = "AlexNet variant; default: as history.json beside --weights records it, else single"
AUGMENT_AS_TRAINED = ("alexnet trained with --augment: 256x256 images, their centre 227x227 crops; on by itself "
                      "when history.json beside --weights records it")
PRECISION_AS_TRAINED = PRECISION_HELP + "; default: as history.json beside --weights records it, else fp32"
SPLIT_SEED_HELP = (f"the random split of mnist-sample (8,000/2,000) or of a one-level image folder "
                   f"({1 - FOLDER_VALIDATION:.0%}/{FOLDER_VALIDATION:.0%})").replace("%", "%%")  # argparse's %


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fastcnn", description="Train LeNet-5 and AlexNet on "
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
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="the number of epochs, >= 1 (0 would replace trained weights by untrained ones)")
    p.add_argument("--split-seed", type=nonnegative_int, default=0, help=SPLIT_SEED_HELP)
    p.add_argument("--out", default=None, help="output directory (default runs/MODEL-DATA)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from its checkpoint.npz, exactly where it stopped")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (without this or --resume, a folder holding a run is refused)")
    p.add_argument("--no-graph", action="store_true", help="do not capture the step as a CUDA graph")
    p.add_argument("--augment", action="store_true", help=AUGMENT_HELP)
    p.add_argument("--stream", action="store_true", help=STREAM_HELP)
    p.add_argument("--reduce-lr", type=nonnegative_int, default=None, metavar="EPOCHS",
                   help="divide the learning rate by 10 after EPOCHS epochs without a better validation "
                        "accuracy (the AlexNet paper's schedule)")
    p.add_argument("--early-stop", type=nonnegative_int, default=None, metavar="EPOCHS",
                   help="stop after EPOCHS epochs without a better validation accuracy, keeping the best "
                        "epoch's weights")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="use at most N training and N evaluation images (quick runs)")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                   help="1: live bar per epoch, 2: one line per epoch, 0: quiet")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes mpirun or srun started (one GPU each): "
                        "--batch-size is the global batch; rank 0 prints and writes the files")
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
    p.add_argument("--split-seed", type=nonnegative_int, default=None,
                   help=SPLIT_SEED_HELP + "; default: as history.json beside --weights records it, else 0")
    p.add_argument("--stream", action="store_true", help=STREAM_HELP)
    p.add_argument("--augment", action="store_true", help=AUGMENT_AS_TRAINED)
    p.add_argument("--ten-crop", action="store_true",
                   help="with --augment: the paper's test, softmax averaged over the four corner and the centre "
                        "227x227 patches of each 256x256 image and their mirror images")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N evaluation images")
    p.add_argument("--seed", type=nonnegative_int, default=None,
                   help="synthetic data: the --seed train was given (default: as history.json records it, else 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU when one is usable, else the CPU reference")
    p.add_argument("--batch-size", type=positive_int, default=None, help="200 for lenet5, 128 for alexnet")
    p.add_argument("--kernel", action="append", metavar="OP=VARIANT",
                   help="use this kernel variant for a primitive on the GPU (repeatable)")
    p.add_argument("--precision", choices=sorted(NAMES), default=None, help=PRECISION_AS_TRAINED)
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
    p.add_argument("--top", type=positive_int, default=3, help="how many classes to show per image")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU when one is usable, else the CPU reference")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--precision", choices=sorted(NAMES), default=None, help=PRECISION_AS_TRAINED)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("profile", help="time every kernel call of a training step, by layer",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_step_arguments(p)
    p.add_argument("--steps", type=positive_int, default=5, help="profiled steps (the table shows their mean)")
    p.add_argument("--warmup", type=nonnegative_int, default=1, help="unrecorded steps first (compilation, autotuning)")
    p.add_argument("--by", action="append", choices=["call", "op", "layer"],
                   help="group rows by call site, primitive or layer (repeatable; default: call, then op)")
    p.add_argument("--json", type=output_file, default=None, metavar="FILE", help="also write the profile as JSON")
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
    except KeyboardInterrupt:
        print(f"\nfastcnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except (DataNotFound, ChecksumMismatch, IDXFormatError, ImageFolderError, BackendUnavailable,
            ImportError) as exc:  # ImportError: an optional package a command needs (Pillow for folders)
        print(f"fastcnn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or folder it reads or writes (permissions, a full disk): named
        print(f"fastcnn {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 1


def _os_error(exc: OSError) -> str:
    """'PATH: Permission denied' rather than '[Errno 13] Permission denied: PATH'."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    return f"{exc.filename}: {exc.strerror}"
