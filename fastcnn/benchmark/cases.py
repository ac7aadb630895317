"""The case tables: one Spec per measured row, fastcnn's side of each case, the groups."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .workloads import (
    ALEXNET_BATCH, BLOCKED_GROUPS, CONV_LAYERS, CONV_OPS, CONV_PASSES, ConvLayer, GEMM_SHAPES,
    LENET_BATCH, LENET_INFER_BATCH, NETS, POOL_LAYERS, PoolLayer, _conv_sets, _gemm_sets,
    _pool_sets, _randn, _rel_err,
)
from .baselines import (
    _conv_torch_ref, _make_cupy_gemm, _make_torch_conv, _make_torch_cpu_lenet, _make_torch_net,
    _make_torch_gemm_bf16, _make_torch_pool, _pool_torch_ref, _torch_ok, torch_tf32,
)


# ------------------------------------------------------------------ benchmark specs
@dataclass
class Spec:
    """One thing to time.  ``make()`` allocates the data and returns ``(fn, sets, check)``:
    ``fn(i)`` launches one call on input set i, ``check()`` (or None) returns a relative
    error against a baseline's output.  ``work`` is FLOPs, bytes or images per call."""
    group: str
    case: str
    shape: str
    impl: str
    role: str
    unit: str
    work: float
    make: Callable
    lib: str = "cupy"          # 'cupy', 'torch' (GPU events of that library) or 'cpu'
    precision: str = "fp32"
    compare_to: str | None = None
    context: Callable = contextlib.nullcontext
    flush: bool = True
    note: str = ""

    @property
    def block(self) -> bool:
        """Time with gputime's blocking kernel (GPU time) rather than as the host queues."""
        return self.group in BLOCKED_GROUPS

    @property
    def id(self) -> str:
        return re.sub(r"[^\w.^-]+", "_", f"{self.case}-{self.impl}").strip("_")

    def label(self) -> str:
        return f"{self.group} {self.case} {self.impl}"


def _figure(unit: str, work: float, time_us: float) -> float:
    if unit == "TFLOP/s":
        return work / time_us / 1e6
    if unit == "GB/s":
        return work / time_us / 1e3
    return work / time_us * 1e6  # img/s


@contextlib.contextmanager
def cupy_tf32(enabled: bool):
    """cuBLAS through CuPy: TF32 tensor cores on or off for float32 matmul.

    CuPy picks the compute type per dtype (``_routines_linalg.get_compute_type``,
    first default from the CUPY_TF32 environment variable); we set it explicitly
    and restore it afterwards."""
    from cupy._core import _routines_linalg as lg
    before = lg.get_compute_type(np.dtype(np.float32))
    lg.set_compute_type(np.dtype(np.float32),
                        lg.COMPUTE_TYPE_TF32 if enabled else lg.COMPUTE_TYPE_FP32)
    try:
        yield
    finally:
        lg.set_compute_type(np.dtype(np.float32), before)


def _variants(op: str) -> list:
    """(registry.Variant, is the default, precision) of every way to time ``op``'s variants:
    each in its own precision, 'tf32' ones under fastcnn.config "high"; ``auto`` in fp32 and,
    where the op has TF32 variants, in TF32 too."""
    from .. import kernels as registry  # every variant registered
    try:
        names = registry.variants(op)
        default = registry.get(op).name
        tf32 = registry.variants(op, precision="tf32")
    except ValueError:
        return []
    found = []
    for variant in (registry.lookup(op, n) for n in names):
        precisions = (variant.precision,) if variant.precision != "any" else ("fp32", "tf32") if tf32 else ("fp32",)
        found += [(variant, variant.name == default, p) for p in precisions]
    return found


def _variant_impl(variant, default: bool, precision: str = "fp32") -> str:
    tf32 = " TF32" if precision == "tf32" and "tf32" not in variant.name.lower() else ""
    return f"fastcnn:{variant.name}{'*' if default else ''}{tf32}"


def _in_precision(precision: str) -> Callable:
    """A Spec context: fastcnn's GEMM and convolution in ``precision`` ('fp32', 'tf32'; 'bf16' runs under
    "highest", its bfloat16 comes from the model's dtype policy)."""
    from .. import config
    return lambda: config.float32_matmul_precision(config.from_name(precision))


def registry_has_bf16(op: str) -> bool:
    """Whether ``op`` has a variant that takes bfloat16 (then its rows get a bf16 baseline)."""
    from .. import kernels as registry  # every variant registered
    return op in registry.ops() and bool(registry.variants(op, dtype="bfloat16"))


def _bf16_registered() -> bool:
    """Whether every GEMM and convolution has a variant that takes bfloat16 (then the networks
    get bf16 rows: the mixed_bfloat16 policy)."""
    from .. import config
    from .. import kernels as registry  # every variant registered
    return all(registry.variants(op, dtype="bfloat16") for op in config.TF32_PRIMITIVES if op in registry.ops())


def _tf32_registered() -> bool:
    """Whether any GEMM or convolution has a TF32 variant (then the networks get TF32 rows)."""
    from .. import config
    from .. import kernels as registry  # every variant registered
    return any(registry.variants(op, precision="tf32") for op in config.TF32_PRIMITIVES if op in registry.ops())


# ---- ceilings
def ceiling_specs(quick: bool) -> list[Spec]:
    def make_copy():
        import cupy as cp
        n = (1 << 28) if not quick else (1 << 27)  # 1 GiB / 512 MiB of float32
        src = cp.random.random(n, dtype=cp.float32)
        dst = cp.empty_like(src)
        nbytes = src.nbytes

        def fn(i):
            cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes,
                                        cp.cuda.runtime.memcpyDeviceToDevice,
                                        cp.cuda.get_current_stream().ptr)
        return fn, 1, None
    n_copy = 2 * 4 * ((1 << 27) if quick else (1 << 28))
    n = 4096 if quick else 8192
    specs = [Spec("ceiling", "ceiling.copy", f"{n_copy // 2 >> 20} MiB D2D", "copy", "ceiling",
                  "GB/s", n_copy, make_copy, note="bytes read + written")]
    for name, tf32 in (("sgemm", False), ("tf32", True)):
        specs.append(Spec("ceiling", f"ceiling.{name}", f"{n}^3", f"cuBLAS {'TF32' if tf32 else 'fp32'}",
                          "ceiling", "TFLOP/s", 2.0 * n ** 3, _make_cupy_gemm(n, n, n),
                          precision="tf32" if tf32 else "fp32",
                          context=lambda tf32=tf32: cupy_tf32(tf32)))
    return specs


def _as_variant_dtype(arrays, dtype: str) -> list:
    """The benchmark's float32 inputs in the element type a variant takes (bfloat16: rounded once)."""
    from .. import dtypes
    return arrays if dtype == "float32" else [a.astype(dtypes.NAMES[dtype]) for a in arrays]


def _make_fastcnn_gemm(fn_variant, M, K, N, dtype: str = "float32"):
    def make():
        import cupy as cp
        sets = _gemm_sets(M, K, N)
        A = _as_variant_dtype(_randn(cp, (M, K), sets), dtype)
        B = _as_variant_dtype(_randn(cp, (K, N), sets), dtype)

        def check():  # against float64 on the very inputs the variant read
            with cupy_tf32(False):
                ref = cp.matmul(A[0].astype(cp.float64), B[0].astype(cp.float64))
            got = fn_variant(A[0], B[0], False, False).astype(cp.float32)
            return _rel_err(cp.asnumpy(got), cp.asnumpy(ref))
        return (lambda i: fn_variant(A[i], B[i], False, False)), sets, check
    return make


def gemm_specs(quick: bool) -> list[Spec]:
    specs = []
    for case, M, K, N, big in GEMM_SHAPES:
        if quick and big:
            continue
        shape = f"{M}x{K}x{N}"
        flops = 2.0 * M * K * N
        for variant, default, precision in _variants("matmul"):
            specs.append(Spec("gemm", case, shape, _variant_impl(variant, default, precision), "fastcnn",
                              "TFLOP/s", flops, _make_fastcnn_gemm(variant.fn, M, K, N, variant.dtypes[0]),
                              precision=precision, context=_in_precision(precision)))
        if _torch_ok() and registry_has_bf16("matmul"):
            specs.append(Spec("gemm", case, shape, "cuBLAS BF16", "baseline", "TFLOP/s", flops,
                              _make_torch_gemm_bf16(M, K, N), lib="torch", precision="bf16"))
        for tf32 in (False, True):
            specs.append(Spec("gemm", case, shape, f"cuBLAS {'TF32' if tf32 else 'fp32'}", "baseline",
                              "TFLOP/s", flops, _make_cupy_gemm(M, K, N),
                              precision="tf32" if tf32 else "fp32",
                              context=lambda tf32=tf32: cupy_tf32(tf32)))
    return specs


def _make_fastcnn_conv(fn_variant, L: ConvLayer, pas: str, dtype: str = "float32"):
    def make():
        import cupy as cp
        sets = _conv_sets(L)
        stride, pad = (L.stride, L.stride), (L.pad, L.pad, L.pad, L.pad)
        xs = _as_variant_dtype(_randn(cp, (L.N, L.H, L.W, L.C), sets), dtype)
        ws = _as_variant_dtype(_randn(cp, (L.R, L.S, L.C, L.K), sets), dtype)
        dys = _as_variant_dtype(_randn(cp, (L.N, L.P, L.Q, L.K), sets), dtype)
        if pas == "fwd":
            def fn(i):
                return fn_variant(xs[i], ws[i], None, stride, pad, False)
        elif pas == "dgrad":
            def fn(i):
                return fn_variant(dys[i], ws[i], xs[i].shape, stride, pad)
        else:
            def fn(i):
                return fn_variant(xs[i], dys[i], ws[i].shape, stride, pad)
        check = None
        if _torch_ok():
            def check():  # float64 on the very inputs the variant read
                x, w, dy = (a.astype(cp.float32) for a in (xs[0], ws[0], dys[0]))
                ref = _conv_torch_ref(L, pas, x, w, dy if pas != "fwd" else None)
                return _rel_err(cp.asnumpy(fn(0).astype(cp.float32)), ref)
        return fn, sets, check
    return make


def conv_specs(quick: bool) -> list[Spec]:
    specs = []
    torch_ok = _torch_ok()
    for L in CONV_LAYERS:
        for pas in CONV_PASSES:
            case = f"{L.name} {pas}"
            for variant, default, precision in _variants(CONV_OPS[pas]):
                specs.append(Spec("conv", case, L.shape, _variant_impl(variant, default, precision), "fastcnn",
                                  "TFLOP/s", L.flops, _make_fastcnn_conv(variant.fn, L, pas, variant.dtypes[0]),
                                  precision=precision, context=_in_precision(precision)))
            if not torch_ok:
                continue
            if registry_has_bf16(CONV_OPS[pas]):   # cuDNN's BF16 kernels, in its faster layout
                specs.append(Spec("conv", case, L.shape, "cuDNN NHWC BF16", "baseline", "TFLOP/s", L.flops,
                                  _make_torch_conv(L, pas, True, bf16=True), lib="torch", precision="bf16"))
            for channels_last in (False, True):
                for tf32 in (False, True):
                    if quick and channels_last and tf32:
                        continue  # --quick: NCHW carries the TF32 comparison
                    impl = f"cuDNN {'NHWC' if channels_last else 'NCHW'} {'TF32' if tf32 else 'fp32'}"
                    specs.append(Spec("conv", case, L.shape, impl, "baseline", "TFLOP/s", L.flops,
                                      _make_torch_conv(L, pas, channels_last), lib="torch",
                                      precision="tf32" if tf32 else "fp32",
                                      context=lambda tf32=tf32: torch_tf32(tf32)))
    return specs


def _make_fastcnn_pool(fwd_fn, bwd_fn, L: PoolLayer, pas: str):
    def make():
        import cupy as cp
        sets = _pool_sets(L)
        pool, stride, pad = (L.pool, L.pool), (L.stride, L.stride), (0, 0, 0, 0)
        xs = _randn(cp, (L.N, L.H, L.W, L.C), sets)
        dys = _randn(cp, (L.N, L.P, L.Q, L.C), sets)
        fwd = registry_fn("maxpool_forward") if fwd_fn is None else fwd_fn
        if pas == "fwd":
            def fn(i):
                return fwd(xs[i], pool, stride, pad)
        else:
            argmaxes = [fwd(x, pool, stride, pad)[1] for x in xs]

            def fn(i):
                return bwd_fn(dys[i], argmaxes[i], xs[i].shape, pool, stride, pad)
        check = None
        if _torch_ok():
            def check():
                out = fn(0)[0] if pas == "fwd" else fn(0)
                return _rel_err(cp.asnumpy(out), _pool_torch_ref(L, pas, xs[0], dys[0]))
        return fn, sets, check
    return make


def registry_fn(op):
    from .. import kernels as registry  # every variant registered
    return registry.get(op).fn


def pool_specs(quick: bool) -> list[Spec]:
    specs = []
    torch_ok = _torch_ok()
    fwd_variants = _variants("maxpool_forward")
    bwd_variants = _variants("maxpool_backward")
    for L in POOL_LAYERS:
        for pas, variants in (("fwd", fwd_variants), ("bwd", bwd_variants)):
            case = f"{L.name} {pas}"
            for variant, default, _ in variants:  # pooling is fp32 in every precision
                make = (_make_fastcnn_pool(variant.fn, None, L, pas) if pas == "fwd"
                        else _make_fastcnn_pool(None, variant.fn, L, pas))
                specs.append(Spec("pool", case, L.shape, _variant_impl(variant, default), "fastcnn",
                                  "GB/s", L.bytes, make,
                                  note="bytes: x read + y written" if pas == "fwd" else
                                  "bytes: dy read + dx written"))
            if torch_ok:
                for channels_last in (False, True):
                    specs.append(Spec("pool", case, L.shape,
                                      f"torch {'NHWC' if channels_last else 'NCHW'}", "baseline",
                                      "GB/s", L.bytes, _make_torch_pool(L, pas, channels_last),
                                      lib="torch", context=lambda: torch_tf32(False)))
    return specs


def _fastcnn_model(net: str, precision: str = "fp32"):
    """The network with its benchmark optimizer; precision 'bf16': its layers mixed_bfloat16."""
    from .. import config, mixed_precision, models
    with mixed_precision.policy_scope(config.policy_name(precision)):
        if net == "lenet5":
            model = models.lenet5()
            optimizer = "adam"
        else:
            from .. import optimizers
            model = models.alexnet(num_classes=1000, variant="single")
            optimizer = optimizers.SGD(learning_rate=0.01, momentum=0.9)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    return model


def _infer_fn(model):
    """One inference forward (softmax included) on a batch already on the model's device."""
    from ..tensor import no_grad

    def infer(x):
        with no_grad():
            return model(x, training=False)
    return infer


def _make_fastcnn_net(net: str, mode: str, batch: int, device: str = "cuda", precision: str = "fp32"):
    def make():
        hwc, classes, _, _ = NETS[net]
        model = _fastcnn_model(net, precision)
        model.to(device)
        if device == "cuda":
            import cupy as xp
            rand = lambda shape: xp.random.standard_normal(shape, dtype=xp.float32)  # noqa: E731
        else:
            xp = np
            rng = np.random.default_rng(0)
            rand = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
        sets = 4 if mode.startswith("train") else 2
        xs = [rand((batch,) + hwc) for _ in range(sets)]
        eye = xp.eye(classes, dtype=xp.float32)
        ys = [eye[xp.asarray(np.random.default_rng(i).integers(0, classes, batch))] for i in range(sets)]
        if mode == "infer eager":
            infer = _infer_fn(model)
            return (lambda i: infer(xs[i])), sets, None
        if mode == "train graph":
            step = model.make_graph_step(xs[0].shape, ys[0].shape)
            return (lambda i: step(xs[i], ys[i])), sets, None
        return (lambda i: model.train_step(xs[i], ys[i])), sets, None
    return make


def network_specs(quick: bool) -> list[Spec]:
    specs = []
    torch_ok = _torch_ok()
    workloads = [("lenet5", "train", LENET_BATCH), ("lenet5", "infer", LENET_INFER_BATCH),
                 ("alexnet", "train", ALEXNET_BATCH), ("alexnet", "infer", ALEXNET_BATCH)]
    # TF32 rows where TF32 variants exist (else "high" would time the fp32 kernels again);
    # --quick: AlexNet's only, as for PyTorch.
    tf32_nets = () if not _tf32_registered() else ("alexnet",) if quick else ("lenet5", "alexnet")
    # mixed_bfloat16 rows where every GEMM/convolution has a bfloat16 variant.  Baselines: AlexNet's
    # training against PyTorch's bf16 autocast in channels_last (its faster layout), LeNet-5's
    # training and both inferences against fastcnn's own float32 row of the same mode.
    bf16 = ("bf16",) if _bf16_registered() else ()
    for net, what, batch in workloads:
        case = f"{net} {what}"
        shape = f"batch {batch}" + (", Adam" if net == "lenet5" and what == "train" else
                                    ", SGD m=0.9" if what == "train" else "")
        modes = ["train eager", "train graph"] if what == "train" else ["infer eager"]
        for precision in (("fp32", "tf32") if net in tf32_nets else ("fp32",)) + bf16:
            tag = {"fp32": "", "tf32": " TF32", "bf16": " bf16"}[precision]
            for mode in modes:
                impl = f"fastcnn {mode.split()[1]}" if what == "train" else "fastcnn"
                compare = f"torch {mode.split()[1]} {'TF32' if tag else 'fp32'}"
                if precision == "bf16":
                    compare = f"torch {mode.split()[1]} NHWC bf16" if case == "alexnet train" and torch_ok else impl
                specs.append(Spec("network", case, shape, impl + tag, "fastcnn", "img/s", batch,
                                  _make_fastcnn_net(net, mode, batch, precision=precision), flush=False,
                                  precision=precision, compare_to=compare, context=_in_precision(precision)))
        if not torch_ok:
            continue
        tf32_options = (False, True) if net == "alexnet" or net in tf32_nets else (False,)
        for mode in modes:
            for tf32 in tf32_options:
                impl = f"torch {mode.split()[1]} {'TF32' if tf32 else 'fp32'}"
                specs.append(Spec("network", case, shape, impl, "baseline", "img/s", batch,
                                  _make_torch_net(net, mode, batch), lib="torch", flush=False,
                                  precision="tf32" if tf32 else "fp32",
                                  context=lambda tf32=tf32: torch_tf32(tf32)))
        if net == "alexnet" and what == "train":
            # channels_last: PyTorch's faster layout for AlexNet in TF32 (the TF32 goal's baseline),
            # so in every run where TF32 rows are; fp32's only in full runs
            for tf32 in (False, True) if net in tf32_nets else (False,):
                if quick and not tf32:
                    continue
                specs.append(Spec("network", case, shape, f"torch eager NHWC {'TF32' if tf32 else 'fp32'}",
                                  "baseline", "img/s", batch,
                                  _make_torch_net(net, "train eager", batch, channels_last=True),
                                  lib="torch", flush=False, precision="tf32" if tf32 else "fp32",
                                  context=lambda tf32=tf32: torch_tf32(tf32)))
            for mode in modes if bf16 else ():
                specs.append(Spec("network", case, shape, f"torch {mode.split()[1]} NHWC bf16", "baseline",
                                  "img/s", batch, _make_torch_net(net, mode, batch, channels_last=True,
                                                                  autocast_bf16=True),
                                  lib="torch", flush=False, precision="bf16", context=lambda: torch_tf32(False)))
    return specs


# ---- CPU
def _reference_primitive_step():
    """The primitives-only LeNet-5 step of bench/reference_lenet_step.py (no model API needed)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "bench" / "reference_lenet_step.py"
    spec = importlib.util.spec_from_file_location("_fastcnn_reference_lenet_step", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _make_reference_lenet(batch: int):
    def make():
        try:
            made = _make_fastcnn_net("lenet5", "train eager", batch, device="cpu")()
            return made
        except (ImportError, AttributeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        # No model API yet: the same step from the reference primitives alone.
        from ..backend import reference as ref
        mod = _reference_primitive_step()
        rng = np.random.default_rng(0)
        net = mod.ReferenceLeNet(rng)
        plain = mod.Timed(ref, enabled=False)
        xs = [rng.standard_normal((batch, 28, 28, 1)).astype(np.float32) for _ in range(2)]
        ys = [np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)] for _ in range(2)]
        totals = np.zeros(2)
        fn = lambda i: net.train_step(plain, xs[i], ys[i], totals)  # noqa: E731
        fn.note = f"model API unavailable ({why[:80]}); reference primitives step"
        return fn, 2, None
    return make


def cpu_specs(quick: bool) -> list[Spec]:
    specs = [Spec("cpu", "lenet5 train (cpu)", f"batch {LENET_BATCH}, Adam", "fastcnn reference",
                  "fastcnn", "img/s", LENET_BATCH, _make_reference_lenet(LENET_BATCH), lib="cpu",
                  compare_to="torch cpu")]
    try:
        import torch  # noqa: F401
        specs.append(Spec("cpu", "lenet5 train (cpu)", f"batch {LENET_BATCH}, Adam", "torch cpu",
                          "baseline", "img/s", LENET_BATCH, _make_torch_cpu_lenet(LENET_BATCH),
                          lib="cpu"))
    except ImportError:
        pass
    return specs


SPEC_BUILDERS = {"ceiling": ceiling_specs, "gemm": gemm_specs, "conv": conv_specs,
                 "pool": pool_specs, "network": network_specs, "cpu": cpu_specs}
GPU_GROUPS = ("ceiling", "gemm", "conv", "pool", "network")
# The cases the issues set targets for; --quick runs them first so a budget never cuts them.
TARGETS = r"lenet5 train|alexnet train|gemm 4096\^3|alexnet\.pool1 |alexnet\.conv\d fwd"


def specs(group: str, quick: bool = False) -> list[Spec]:
    """The specs of one group (listing needs no GPU; running them does, except 'cpu')."""
    return SPEC_BUILDERS[group](quick)
