"""What the fastcnn commands share: the models and their inputs, usage errors, the device,
the --kernel choices and the --precision."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
from pathlib import Path

DATA_SETS = ("mnist-sample", "mnist", "fashion-mnist", "folder", "synthetic")
INPUT_SHAPES = {"lenet5": (28, 28, 1), "alexnet": (227, 227, 3)}
DEFAULT_BATCH = {"lenet5": 200, "alexnet": 128}        # the seed's 200; AlexNet paper's 128
DEFAULT_SYNTHETIC = {"lenet5": (2000, 500), "alexnet": (256, 64)}  # (train, validation) images
DEFAULT_CLASSES = {"lenet5": 10, "alexnet": 1000}
AUGMENT_INPUT = (256, 256, 3)  # AlexNet --augment: random 227x227 crops (and mirror images) of 256x256
FOLDER_VALIDATION = 0.2  # held out of a one-level image folder (no train/ and val/ inside)
PRECISION_HELP = ("fp32: GEMM and convolution in float32; tf32: they may round their inputs to TF32 "
                  "and use the tensor cores (fastcnn.config precision 'high'; the CPU reference rounds "
                  "as the GPU does, Numba kernels stay fp32); bf16: Keras's mixed_bfloat16 policy, "
                  "bfloat16 activations and weight copies, float32 weights, optimizer and loss "
                  "(not on the Numba backend)")


class UsageError(Exception):
    """A combination of options that cannot work; the message says what to do instead."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block of train is 20 lines): exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- argparse types: a bad value ends in "argument --NAME: <why>" and exit status 2
def _number(kind, text: str, test, rule: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} "
                                         f"{rule}, got {text!r}") from None
    if not (math.isfinite(value) and test(value)):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 1, ">= 1")


def nonnegative_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 0, ">= 0")


def positive_float(text: str) -> float:
    return _number(float, text, lambda v: v > 0, "> 0")


def nonnegative_float(text: str) -> float:
    return _number(float, text, lambda v: v >= 0, ">= 0")


def fraction(text: str) -> float:
    """A momentum or a held-out share: in [0, 1)."""
    return _number(float, text, lambda v: 0 <= v < 1, "in [0, 1)")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_folder(path: Path, text: str) -> None:
    """Raise ArgumentTypeError unless a file can be created in path's nearest existing folder."""
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {base} is a file, not a folder")
    try:  # a real write, not os.access: root passes os.access on read-only mounts and /proc
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {base} is not writable "
                                         f"({exc.strerror or exc})") from None


def output_file(text: str) -> str:
    """A file the command will write (--json, --markdown, --plot): refused now if it cannot be."""
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: the file is read-only")
    _probe_folder(path.parent, text)
    return text


def output_folder(text: str) -> str:
    """A folder the command will write into (created if missing)."""
    path = Path(text).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    _probe_folder(path, text)
    return text


def is_augmented(args) -> bool:
    augment = getattr(args, "augment", False)
    if augment and args.model != "alexnet":
        raise UsageError("--augment applies to alexnet only (a mirrored digit is another digit)")
    return augment


def input_shape(args) -> tuple:
    """The images the model takes: with --augment, AlexNet's 256x256x3 before its random crop."""
    return AUGMENT_INPUT if is_augmented(args) else INPUT_SHAPES[args.model]


def build_model(args, num_classes: int | None = None):
    """The model of args.model, its layers made under the dtype policy of --precision (bf16:
    mixed_bfloat16)."""
    from fastcnn import config, mixed_precision, models
    num_classes = num_classes or DEFAULT_CLASSES[args.model]
    with mixed_precision.policy_scope(config.policy_name(getattr(args, "precision", None) or "fp32")):
        if args.model == "lenet5":
            return models.lenet5(num_classes=num_classes)
        return models.alexnet(num_classes=num_classes, variant=args.variant or "single", augment=is_augmented(args))


def place(model, device: str) -> str:
    """Move the model to the device asked for; with 'auto', the GPU when usable. Returns a note."""
    model.to(device)  # 'cuda' without a GPU raises BackendUnavailable with the reason
    return f" (GPU not used: {model.auto_reason})" if device == "auto" and model.auto_reason else ""


def current_gpu() -> str:
    try:
        import cupy
        p = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        return f"{name}, compute capability {p['major']}.{p['minor']}"
    except Exception as exc:  # the name is a courtesy; training goes on without it
        return f"GPU name unknown: {exc}"


def kernel_choices(pairs, precision: str = "fp32") -> dict:
    """{op: variant} from --kernel OP=VARIANT options, checked against the registry and the
    --precision: a TF32 variant needs tf32; a Numba GEMM/convolution (fp32 only) refuses it; under
    bf16 a GEMM/convolution variant must take bfloat16."""
    from fastcnn import config
    from fastcnn import kernels as registry  # every variant registered
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
        variant = registry.lookup(op, name)
        if variant.precision == "tf32" and precision != "tf32":
            raise UsageError(f"--kernel {pair!r}: {name} computes in TF32; add --precision tf32 to use it")
        if precision == "tf32" and variant.source == "numba" and op in config.TF32_PRIMITIVES:
            raise UsageError(f"--kernel {pair!r}: Numba kernels compute in fp32 only and cannot honour "
                             f"--precision tf32; choose a CUDA C variant (fastcnn kernels {op}) or --precision fp32")
        if precision == "bf16" and op in config.TF32_PRIMITIVES and "bfloat16" not in variant.dtypes:
            raise UsageError(f"--kernel {pair!r}: {name} takes float32 arrays only, and under --precision bf16 "
                             f"every {op} call is on bfloat16 ones; choose a variant that takes them "
                             f"(fastcnn kernels {op}) or --precision fp32")
        chosen[op] = name
    return chosen


def kernels_for(model, kernels: dict) -> dict:
    """The --kernel choices that apply on the model's device; on the CPU reference none (said)."""
    if kernels and model.device != "cuda":
        print(f"NOTE: --kernel ignored: the {model.backend.name} backend has no kernel variants "
              "(they are GPU kernels)")
        return {}
    if kernels:
        print("kernels: " + ", ".join(f"{op}={name}" for op, name in kernels.items()))
    return kernels


def say_precision(precision: str, model) -> None:
    """With --precision tf32 or bf16, say what it means on the model's backend."""
    if precision == "tf32":
        where = ("the NumPy reference rounds the GEMM and convolution inputs to TF32 as the GPU does"
                 if model.device == "cpu" else "GEMM and convolution may use TF32 kernel variants")
        print(f"precision: tf32 ({where}; everything else in fp32)")
    elif precision == "bf16":
        where = "the NumPy reference rounds as the GPU does" if model.device == "cpu" else "bfloat16 kernel variants"
        print(f"precision: bf16 (dtype policy mixed_bfloat16, {where}: bfloat16 activations and weight "
              f"copies; float32 weights, weight gradients, optimizer and loss)")


@contextlib.contextmanager
def using_kernels(kernels: dict, precision: str = "fp32"):
    """The --precision and every --kernel choice in force inside the block."""
    import fastcnn
    with fastcnn.config.float32_matmul_precision(fastcnn.config.from_name(precision)), \
            contextlib.ExitStack() as chosen:
        for op, name in kernels.items():
            chosen.enter_context(fastcnn.kernels.using(op, name))
        yield


def eval_label(args, eval_name: str = "") -> str:
    """'test' for the MNIST-style test sets and an image folder's test/, else 'validation'."""
    if args.data in ("mnist", "fashion-mnist") or (args.data == "folder" and Path(eval_name).name == "test"):
        return "test"
    return "validation"
