"""`fastcnn bench`: every fastcnn kernel variant and both networks beside their baselines.

One run measures, on one card and in one process:

* ceilings: device-to-device copy bandwidth (bytes read + written), cuBLAS SGEMM
  (``cupy.matmul``, TF32 off) and cuBLAS TF32 rates;
* GEMM 4096^3, 8192^3, 200x400x120, 128x9216x4096, 128x4096x4096 (M x K x N):
  every ``matmul`` variant vs ``cupy.matmul`` with TF32 off and on (the TF32 variants,
  ``tc_tf32``, timed under precision "high" in every run and compared with TF32 on);
* convolution forward / backward-data / backward-weights of every LeNet-5 (batch
  200) and AlexNet (batch 128) layer: every variant vs cuDNN through PyTorch,
  NCHW and channels_last, TF32 off and on, ``cudnn.benchmark = True`` (TF32 variants
  against the faster TF32 layout);
* max-pool forward / backward of every pooling layer vs PyTorch's max_pool2d
  (ATen's CUDA kernels), GB/s and percent of the copy bandwidth;
* whole networks, images/s: LeNet-5 train (batch 200, Adam), AlexNet train (batch
  128, SGD momentum 0.9) and inference; fastcnn eager and graph vs PyTorch eager
  and PyTorch whole-step CUDA graph;
* CPU: the NumPy reference's LeNet-5 train (batch 200, Adam) vs PyTorch's CPU build.

Every fastcnn row carries a ratio to a baseline measured in the same run (the
report refuses figures from another run) and, where one applies, the percent of
the ceiling measured in the same run.  Figures: TFLOP/s counts 2*M*N*K (a
convolution pass counts 2*N*P*Q*K*R*S*C, the forward's, for all three passes);
GB/s counts each input read once and each output written once (pool forward:
x + y, backward: dy + dx); img/s is batch / step time.  Higher is better for all.

GPU times: CUDA events after warm-up, median of repeats, L2 flushed before each
repeat or inputs rotated across sets larger than twice the L2 (fastcnn.gputime).
Kernel-level groups (``BLOCKED_GROUPS``) hold the GPU with a blocking kernel until
every timed call is queued, so they compare GPU time; network cases time as the host
queues (host time counted, as a user sees a step).  The header's ``timing`` field
says so; a kernel case that had to fall back says why in its note, and the report's
notes count them.  Data is always random.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np

from . import gputime

UNITS = ("TFLOP/s", "GB/s", "img/s")
GROUPS = ("ceiling", "gemm", "conv", "pool", "network", "cpu")
# Groups timed with gputime's blocking kernel (one op per call: GPU time, kernel vs kernel).
# 'network' keeps plain events (a step's host time is what a user waits for); 'cpu' is host time.
BLOCKED_GROUPS = ("ceiling", "gemm", "conv", "pool")

# ------------------------------------------------------------------ workloads
GEMM_SHAPES = [  # (name, M, K, N, skipped in --quick)
    ("gemm 4096^3", 4096, 4096, 4096, False),
    ("gemm 8192^3", 8192, 8192, 8192, True),
    ("lenet.fc1 200x400x120", 200, 400, 120, False),
    ("alexnet.fc6 128x9216x4096", 128, 9216, 4096, False),
    ("alexnet.fc7 128x4096x4096", 128, 4096, 4096, False),
]


@dataclass(frozen=True)
class ConvLayer:
    name: str
    N: int
    H: int
    W: int
    C: int
    K: int
    R: int
    S: int
    stride: int
    pad: int

    @property
    def P(self):
        return (self.H + 2 * self.pad - self.R) // self.stride + 1

    @property
    def Q(self):
        return (self.W + 2 * self.pad - self.S) // self.stride + 1

    @property
    def flops(self) -> float:
        return 2.0 * self.N * self.P * self.Q * self.K * self.R * self.S * self.C

    @property
    def shape(self) -> str:
        return (f"N{self.N} {self.H}x{self.W}x{self.C} -> {self.K} "
                f"{self.R}x{self.S}/{self.stride} pad {self.pad}")


CONV_LAYERS = [
    ConvLayer("lenet.conv1", 200, 28, 28, 1, 6, 5, 5, 1, 2),
    ConvLayer("lenet.conv2", 200, 14, 14, 6, 16, 5, 5, 1, 0),
    ConvLayer("alexnet.conv1", 128, 227, 227, 3, 96, 11, 11, 4, 0),
    ConvLayer("alexnet.conv2", 128, 27, 27, 96, 256, 5, 5, 1, 2),
    ConvLayer("alexnet.conv3", 128, 13, 13, 256, 384, 3, 3, 1, 1),
    ConvLayer("alexnet.conv4", 128, 13, 13, 384, 384, 3, 3, 1, 1),
    ConvLayer("alexnet.conv5", 128, 13, 13, 384, 256, 3, 3, 1, 1),
]
CONV_PASSES = ("fwd", "dgrad", "wgrad")
CONV_OPS = {"fwd": "conv2d_forward", "dgrad": "conv2d_backward_data",
            "wgrad": "conv2d_backward_weights"}


@dataclass(frozen=True)
class PoolLayer:
    name: str
    N: int
    H: int
    W: int
    C: int
    pool: int
    stride: int

    @property
    def P(self):
        return (self.H - self.pool) // self.stride + 1

    @property
    def Q(self):
        return (self.W - self.pool) // self.stride + 1

    @property
    def bytes(self) -> int:
        """Input read once + output written once (float32), for either pass."""
        return 4 * self.N * self.C * (self.H * self.W + self.P * self.Q)

    @property
    def shape(self) -> str:
        return f"N{self.N} {self.H}x{self.W}x{self.C} {self.pool}x{self.pool}/{self.stride}"


POOL_LAYERS = [
    PoolLayer("lenet.pool1", 200, 28, 28, 6, 2, 2),
    PoolLayer("lenet.pool2", 200, 10, 10, 16, 2, 2),
    PoolLayer("alexnet.pool1", 128, 55, 55, 96, 3, 2),
    PoolLayer("alexnet.pool2", 128, 27, 27, 256, 3, 2),
    PoolLayer("alexnet.pool5", 128, 13, 13, 256, 3, 2),
]

LENET_BATCH = 200
ALEXNET_BATCH = 128
LENET_INFER_BATCH = 10_000


# ------------------------------------------------------------------ results and report
@dataclass
class Result:
    """One measured figure.  ``role`` is 'fastcnn', 'baseline' or 'ceiling'."""
    group: str
    case: str
    shape: str
    impl: str
    role: str
    unit: str
    time_us: float | None = None
    figure: float | None = None
    precision: str = "fp32"           # 'fp32' or 'tf32'
    compare_to: str | None = None     # impl of the baseline to compare with; None: best of same precision
    run_id: str = ""
    repeats: int = 0
    spread: float | None = None
    rel_err: float | None = None      # against a baseline's output, where checked
    error: str | None = None
    note: str = ""
    method: str = ""                  # gputime's timing method: 'blocked', 'events' or 'host'


@dataclass
class Row:
    case: str
    shape: str
    impl: str
    role: str
    unit: str
    time_us: float | None
    figure: float | None
    baseline: str | None
    baseline_figure: float | None
    ratio: float | None
    pct_ceiling: float | None
    ceiling: str | None
    rel_err: float | None
    error: str | None
    group: str = ""
    note: str = ""


CEILINGS = {"GB/s": "copy", "TFLOP/s:fp32": "sgemm", "TFLOP/s:tf32": "tf32"}


class Report:
    """Rows of ratios and ceiling fractions computed from the results of ONE run."""

    def __init__(self, results: list[Result], header: dict):
        run_id = header.get("run_id")
        if not run_id:
            raise ValueError("header has no run_id: cannot tell which run the figures come from")
        foreign = sorted({r.run_id for r in results if r.run_id != run_id})
        if foreign:
            raise ValueError(f"results from other runs {foreign} mixed into run {run_id!r}: "
                             "ratios must come from figures measured in the same run")
        self.header = dict(header)
        self.results = list(results)
        self.ceilings = {r.case.split(".", 1)[1]: r for r in results
                         if r.role == "ceiling" and r.figure and not r.error}
        self.rows = [self._row(r) for r in results]
        self.notes = list(self.header.get("notes", []))
        over = sorted({r.impl for r in self.rows if r.group == "conv" and (r.pct_ceiling or 0) > 100})
        if over:
            self.notes.append(
                "conv TFLOP/s count direct-convolution operations (2*N*P*Q*K*R*S*C); a rate above the "
                f"measured SGEMM rate ({', '.join(over)}) means fewer operations were done than that "
                "count (an algorithm such as Winograd or FFT)")

    def _baseline_for(self, r: Result) -> Result | None:
        same_case = [b for b in self.results if b.role == "baseline" and b.group == r.group
                     and b.case == r.case and b.figure and not b.error and b.unit == r.unit]
        if r.compare_to is not None:
            named = [b for b in same_case if b.impl == r.compare_to]
            return named[0] if named else None
        same_precision = [b for b in same_case if b.precision == r.precision]
        return max(same_precision, key=lambda b: b.figure) if same_precision else None

    def _ceiling_for(self, r: Result) -> Result | None:
        key = CEILINGS.get(r.unit) or CEILINGS.get(f"{r.unit}:{r.precision}")
        return self.ceilings.get(key) if key else None

    def _row(self, r: Result) -> Row:
        base = self._baseline_for(r) if r.role == "fastcnn" else None
        ratio = (r.figure / base.figure) if (base and r.figure and not r.error) else None
        ceil = self._ceiling_for(r) if r.role != "ceiling" else None
        pct = (100.0 * r.figure / ceil.figure) if (ceil and r.figure and not r.error) else None
        return Row(r.case, r.shape, r.impl, r.role, r.unit, r.time_us, r.figure,
                   base.impl if base else None, base.figure if base else None, ratio, pct,
                   ceil.impl if ceil else None, r.rel_err, r.error, r.group, r.note)

    # ---------------------------------------------------------------- writers
    def header_lines(self) -> list[str]:
        h = self.header
        keys = ["card", "driver", "cuda_runtime", "cupy", "torch", "cudnn", "numpy", "python",
                "cpu", "world", "mpi", "nccl", "load_avg", "blas_threads", "torch_threads", "date", "run_id", "mode", "timing"]
        parts = [f"{k}={h[k]}" for k in keys if h.get(k) not in (None, "")]
        lines, line = [], ""
        for p in parts:
            if len(line) + len(p) > 110:
                lines.append(line.rstrip())
                line = ""
            line += p + "  "
        if line:
            lines.append(line.rstrip())
        for note in self.notes:
            lines.append(f"note: {note}")
        return lines

    def table(self, width: int = 34) -> str:
        """The plain-text table printed to stdout."""
        cols = ["case", "impl", "time us", "figure", "baseline", "base fig", "ratio", "%ceil"]
        out = self.header_lines()
        out.append(f"{cols[0]:<{width}} {cols[1]:<22} {cols[2]:>10} {cols[3]:>9} {'':<8}"
                   f"{cols[4]:<22} {cols[5]:>9} {cols[6]:>6} {cols[7]:>6}")
        group = None
        for row in self.rows:
            if row.group != group:
                group = row.group
                out.append(f"-- {group}")
            if row.error:
                out.append(f"{row.case[:width]:<{width}} {row.impl[:22]:<22} ERROR {row.error[:60]}")
                continue
            out.append(
                f"{row.case[:width]:<{width}} {row.impl[:22]:<22} {_num(row.time_us, 10)} "
                f"{_num(row.figure, 9)} {row.unit:<8}"
                f"{(row.baseline or '')[:22]:<22} {_num(row.baseline_figure, 9)} "
                f"{_num(row.ratio, 6, ratio=True)} {_num(row.pct_ceiling, 6)}"
                + (f"  err {row.rel_err:.1e}" if row.rel_err is not None and row.rel_err > 1e-3 else ""))
        return "\n".join(out)

    def markdown(self) -> str:
        lines = [f"Measured {self.header.get('date', '?')} on {self.header.get('card', '?')} "
                 f"(run {self.header.get('run_id')}).", ""]
        lines.append("| " + " | ".join(["setting", "value"]) + " |")
        lines.append("| --- | --- |")
        for k in ["card", "driver", "cuda_runtime", "cupy", "torch", "cudnn", "numpy", "python",
                  "cpu", "world", "mpi", "nccl", "load_avg", "blas_threads", "torch_threads", "mode", "timing", "elapsed_s"]:
            if self.header.get(k) not in (None, ""):
                lines.append(f"| {k} | {self.header[k]} |")
        lines.append("")
        lines.append("| case | shape | implementation | time (us) | figure | baseline | "
                     "baseline figure | ratio | % of ceiling |")
        lines.append("| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |")
        for row in self.rows:
            if row.error:
                lines.append(f"| {row.case} | {row.shape} | {row.impl} | error: "
                             f"{_md(row.error[:80])} | | | | | |")
                continue
            lines.append(
                f"| {row.case} | {row.shape} | {row.impl} | {_num(row.time_us, 0).strip()} | "
                f"{_num(row.figure, 0).strip()} {row.unit} | {row.baseline or ''} | "
                f"{_num(row.baseline_figure, 0).strip()} | {_num(row.ratio, 0, ratio=True).strip()} | "
                f"{_num(row.pct_ceiling, 0).strip()} |")
        for note in self.notes:
            lines.append("")
            lines.append(f"Note: {note}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"header": self.header,
                "results": [asdict(r) for r in self.results],
                "rows": [asdict(r) for r in self.rows]}

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1, default=_json_default)

    def write_markdown(self, path: str) -> None:
        with open(path, "w") as f:
            f.write(self.markdown())

    def plot(self, path: str) -> str:
        """A horizontal bar chart of the ratios (fastcnn / baseline); returns a message."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return (f"matplotlib is not installed: no chart written to {path} "
                    "(pip install 'fastcnn[plot]')")
        rows = [r for r in self.rows if r.ratio is not None]
        if not rows:
            return f"no ratios to plot: {path} not written"
        labels = [f"{r.case} {r.impl} vs {r.baseline}" for r in rows]
        ratios = [r.ratio for r in rows]
        fig, ax = plt.subplots(figsize=(10, 0.25 * len(rows) + 1.5))
        colours = ["tab:green" if v >= 1 else "tab:red" for v in ratios]
        ax.barh(range(len(rows)), ratios, color=colours)
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("fastcnn figure / baseline figure (same run; > 1 is faster)")
        ax.set_title(f"{self.header.get('card', '?')}  {self.header.get('date', '')}", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return f"chart written to {path}"

    def key_ratios(self) -> list[tuple[str, str]]:
        """(what, value) for the project's stated goals, for the GPU check's final table."""
        out = []

        def pick(case, impl_prefix="fastcnn", want="ratio", exclude=None):
            # the TF32 variants (compared with TF32 baselines) only where asked for by name
            rows = [r for r in self.rows if r.case == case and r.role == "fastcnn" and not r.error
                    and r.impl.startswith(impl_prefix) and not (exclude and r.impl.startswith(exclude))
                    and ("tf32" in impl_prefix) == ("tf32" in r.impl.lower())]
            vals = [getattr(r, want) for r in rows if getattr(r, want) is not None]
            return max(vals) if vals else None
        for label, case, prefix, want in [
                ("gemm 4096^3 best / cuBLAS fp32", "gemm 4096^3", "fastcnn", "ratio"),
                ("alexnet.conv1 fwd / cuDNN fp32", "alexnet.conv1 fwd", "fastcnn", "ratio"),
                ("alexnet.conv2 fwd / cuDNN fp32", "alexnet.conv2 fwd", "fastcnn", "ratio"),
                ("alexnet.conv3 fwd / cuDNN fp32", "alexnet.conv3 fwd", "fastcnn", "ratio"),
                ("alexnet.conv4 fwd / cuDNN fp32", "alexnet.conv4 fwd", "fastcnn", "ratio"),
                ("alexnet.conv5 fwd / cuDNN fp32", "alexnet.conv5 fwd", "fastcnn", "ratio"),
                ("gemm 8192^3 tc_tf32 / cuBLAS TF32", "gemm 8192^3", "fastcnn:tc_tf32", "ratio"),
                *[(f"alexnet.conv{i} fwd tc_tf32 / cuDNN TF32", f"alexnet.conv{i} fwd", "fastcnn:tc_tf32", "ratio")
                  for i in range(1, 6)],
                ("alexnet.pool1 fwd % copy bw", "alexnet.pool1 fwd", "fastcnn", "pct_ceiling"),
                ("alexnet.pool1 bwd % copy bw", "alexnet.pool1 bwd", "fastcnn", "pct_ceiling"),
                ("lenet train graph / torch graph", "lenet5 train", "fastcnn graph", "ratio"),
                ("lenet train eager / torch eager", "lenet5 train", "fastcnn eager", "ratio"),
                ("alexnet train / torch fp32", "alexnet train", "fastcnn", "ratio"),
                ("cpu lenet train / torch cpu", "lenet5 train (cpu)", "fastcnn", "ratio")]:
            v = pick(case, prefix, want)
            if v is not None:
                out.append((label, f"{v:.2f}x" if want == "ratio" else f"{v:.1f}%"))  # 69.6% is not 70%
        v = pick("gemm 4096^3", "fastcnn:numba")
        if v is not None:
            out.append(("numba gemm 4096^3 / cuBLAS fp32", f"{v:.2f}x"))
        numba = pick("alexnet.pool1 fwd", "fastcnn:numba", "figure")
        cuda = pick("alexnet.pool1 fwd", "fastcnn", "figure", exclude="fastcnn:numba")
        if numba is not None and cuda:
            out.append(("numba pool1 fwd / best CUDA C", f"{numba / cuda:.2f}x"))
        return out


def _num(v, width, ratio=False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return " " * max(width - 1, 0) + "-"
    if ratio:
        return f"{v:>{width}.2f}"
    if abs(v) >= 1e9:
        return f"{v:>{width}.3g}"
    if abs(v) >= 100:
        return f"{v:>{width}.0f}"
    if abs(v) >= 10:
        return f"{v:>{width}.1f}"
    return f"{v:>{width}.2f}"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def load_json(path: str) -> Report:
    """Rebuild a report from a JSON file written by ``Report.write_json``."""
    with open(path) as f:
        data = json.load(f)
    return Report([Result(**r) for r in data["results"]], data["header"])


# ------------------------------------------------------------------ environment header
def _try(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def _openblas_threads():
    """Threads of the OpenBLAS that NumPy loaded (read from the library itself), else None."""
    import ctypes
    with open("/proc/self/maps") as maps:
        libs = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                     "openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                return int(getattr(lib, name)())
    return None


def environment(run_id: str | None = None) -> dict:
    """Card, driver, CUDA runtime and library versions, date: the header of every report."""
    h = {"run_id": run_id or uuid.uuid4().hex[:12],
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "numpy": np.__version__, "python": platform.python_version(),
         "cpu": f"{platform.machine()} x{os.cpu_count()}", "notes": []}
    blas = _try(_openblas_threads)
    if blas:
        h["blas_threads"] = blas
    load = _try(os.getloadavg)
    if load:
        h["load_avg"] = " ".join(f"{v:.1f}" for v in load)
    try:
        import cupy
        h["cupy"] = cupy.__version__
    except Exception as exc:
        cupy = None
        h["cupy"] = f"unavailable ({type(exc).__name__})"
    if cupy is not None and gputime.cuda_available():
        def card():
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            name = props.get("name", b"?")
            name = name.decode() if isinstance(name, bytes) else str(name)
            extra = [f"{props['multiProcessorCount']} SMs"] if "multiProcessorCount" in props else []
            if "l2CacheSize" in props:
                extra.append(f"L2 {props['l2CacheSize'] >> 20} MiB")
            return name + (f" ({', '.join(extra)})" if extra else "")
        h["card"] = _try(card, "CUDA GPU (name unreadable)")
        rt = _try(cupy.cuda.runtime.runtimeGetVersion)
        if rt:
            h["cuda_runtime"] = f"{rt // 1000}.{(rt % 1000) // 10}"
        drv = _try(lambda: subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0])
        dv = _try(cupy.cuda.runtime.driverGetVersion)
        h["driver"] = f"{drv or '?'}" + (f" (CUDA {dv // 1000}.{(dv % 1000) // 10})" if dv else "")
    h.setdefault("card", "no CUDA GPU")
    try:
        import torch
        h["torch"] = torch.__version__
        h["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            h["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        h["torch"] = "not installed"
    return h


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


def _torch_tf32_state():
    import torch
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def _set_torch_tf32(matmul: bool, cudnn: bool) -> None:
    """The legacy switches only (mixing them with ``fp32_precision`` makes PyTorch >= 2.9
    raise); the new ones where the legacy ones are refused."""
    import warnings
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch >= 2.9 warns that the legacy switches will go
        try:
            torch.backends.cuda.matmul.allow_tf32 = matmul
            torch.backends.cudnn.allow_tf32 = cudnn
        except (RuntimeError, AttributeError):
            torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
            torch.backends.cudnn.conv.fp32_precision = "tf32" if cudnn else "ieee"


@contextlib.contextmanager
def torch_tf32(enabled: bool, cudnn_benchmark: bool = True):
    """PyTorch matmul and cuDNN: TF32 on or off; cudnn.benchmark on (restored afterwards)."""
    import warnings
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = _try(_torch_tf32_state, (False, True))
    bench_before = torch.backends.cudnn.benchmark
    _set_torch_tf32(enabled, enabled)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        yield
    finally:
        _set_torch_tf32(*before)
        torch.backends.cudnn.benchmark = bench_before


def _variants(op: str) -> list:
    """(registry.Variant, is the default, precision) of every way to time ``op``'s variants:
    each in its own precision, 'tf32' ones under fastcnn.config "high"; ``auto`` in fp32 and,
    where the op has TF32 variants, in TF32 too."""
    from .backend import registry
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
    """A Spec context: fastcnn's GEMM and convolution in ``precision`` ('fp32' or 'tf32')."""
    from . import config
    return lambda: config.float32_matmul_precision(config.from_name(precision))


def _tf32_registered() -> bool:
    """Whether any GEMM or convolution has a TF32 variant (then the networks get TF32 rows)."""
    from . import config
    from .backend import registry
    return any(registry.variants(op, precision="tf32") for op in config.TF32_PRIMITIVES if op in registry.ops())


def _torch_ok() -> bool:
    return gputime.torch_cuda_available()


def _rel_err(out, ref) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return float("inf")
    if not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.linalg.norm(out - ref) / (np.linalg.norm(ref) or 1.0))


def _randn(cp, shape, n_sets):
    return [cp.random.standard_normal(shape, dtype=cp.float32) for _ in range(n_sets)]


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


# ---- GEMM
def _gemm_sets(M, K, N):
    return gputime.rotation_count(4 * (M * K + K * N + M * N), max_sets=16)


def _make_cupy_gemm(M, K, N):
    def make():
        import cupy as cp
        sets = _gemm_sets(M, K, N)
        A, B = _randn(cp, (M, K), sets), _randn(cp, (K, N), sets)
        return (lambda i: cp.matmul(A[i], B[i])), sets, None
    return make


def _make_fastcnn_gemm(fn_variant, M, K, N):
    def make():
        import cupy as cp
        sets = _gemm_sets(M, K, N)
        A, B = _randn(cp, (M, K), sets), _randn(cp, (K, N), sets)

        def check():
            with cupy_tf32(False):
                ref = cp.matmul(A[0].astype(cp.float64), B[0].astype(cp.float64))
            return _rel_err(cp.asnumpy(fn_variant(A[0], B[0], False, False)), cp.asnumpy(ref))
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
                              "TFLOP/s", flops, _make_fastcnn_gemm(variant.fn, M, K, N),
                              precision=precision, context=_in_precision(precision)))
        for tf32 in (False, True):
            specs.append(Spec("gemm", case, shape, f"cuBLAS {'TF32' if tf32 else 'fp32'}", "baseline",
                              "TFLOP/s", flops, _make_cupy_gemm(M, K, N),
                              precision="tf32" if tf32 else "fp32",
                              context=lambda tf32=tf32: cupy_tf32(tf32)))
    return specs


# ---- convolution
def _conv_sets(L: ConvLayer):
    per_set = 4 * (L.N * L.H * L.W * L.C + L.R * L.S * L.C * L.K + L.N * L.P * L.Q * L.K)
    return gputime.rotation_count(per_set, max_sets=16)


def _conv_torch_ref(L: ConvLayer, pas: str, x, w, dy):
    """float64 cuDNN-free reference through PyTorch (NHWC in, NHWC/HWIO out) for the check."""
    import torch
    tx = torch.from_dlpack(x).permute(0, 3, 1, 2).double()
    tw = torch.from_dlpack(w).permute(3, 2, 0, 1).double()
    tdy = torch.from_dlpack(dy).permute(0, 3, 1, 2).double() if dy is not None else None
    with torch.backends.cudnn.flags(enabled=False):
        if pas == "fwd":
            out = torch.nn.functional.conv2d(tx, tw, stride=L.stride, padding=L.pad)
            return out.permute(0, 2, 3, 1).cpu().numpy()
        dx, dw, _ = torch.ops.aten.convolution_backward(
            tdy, tx, tw, None, [L.stride] * 2, [L.pad] * 2, [1, 1], False, [0, 0], 1,
            [pas == "dgrad", pas == "wgrad", False])
        if pas == "dgrad":
            return dx.permute(0, 2, 3, 1).cpu().numpy()
        return dw.permute(2, 3, 1, 0).cpu().numpy()


def _make_fastcnn_conv(fn_variant, L: ConvLayer, pas: str):
    def make():
        import cupy as cp
        sets = _conv_sets(L)
        stride, pad = (L.stride, L.stride), (L.pad, L.pad, L.pad, L.pad)
        xs = _randn(cp, (L.N, L.H, L.W, L.C), sets)
        ws = _randn(cp, (L.R, L.S, L.C, L.K), sets)
        dys = _randn(cp, (L.N, L.P, L.Q, L.K), sets)
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
            def check():
                ref = _conv_torch_ref(L, pas, xs[0], ws[0], dys[0] if pas != "fwd" else None)
                return _rel_err(cp.asnumpy(fn(0)), ref)
        return fn, sets, check
    return make


def _make_torch_conv(L: ConvLayer, pas: str, channels_last: bool, dev: str = "cuda"):
    def make():
        import torch
        sets = _conv_sets(L) if dev == "cuda" else 1
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xs = [torch.randn(L.N, L.C, L.H, L.W, device=dev).contiguous(memory_format=fmt) for _ in range(sets)]
        ws = [torch.randn(L.K, L.C, L.R, L.S, device=dev).contiguous(memory_format=fmt) for _ in range(sets)]
        dys = [torch.randn(L.N, L.K, L.P, L.Q, device=dev).contiguous(memory_format=fmt) for _ in range(sets)]
        st, pd = [L.stride] * 2, [L.pad] * 2
        if pas == "fwd":
            def fn(i):
                return torch.nn.functional.conv2d(xs[i], ws[i], stride=L.stride, padding=L.pad)
        else:
            mask = [pas == "dgrad", pas == "wgrad", False]

            def fn(i):
                return torch.ops.aten.convolution_backward(
                    dys[i], xs[i], ws[i], None, st, pd, [1, 1], False, [0, 0], 1, mask)
        return fn, sets, None
    return make


def conv_specs(quick: bool) -> list[Spec]:
    specs = []
    torch_ok = _torch_ok()
    for L in CONV_LAYERS:
        for pas in CONV_PASSES:
            case = f"{L.name} {pas}"
            for variant, default, precision in _variants(CONV_OPS[pas]):
                specs.append(Spec("conv", case, L.shape, _variant_impl(variant, default, precision), "fastcnn",
                                  "TFLOP/s", L.flops, _make_fastcnn_conv(variant.fn, L, pas),
                                  precision=precision, context=_in_precision(precision)))
            if not torch_ok:
                continue
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


# ---- max-pool
def _pool_sets(L: PoolLayer):
    return gputime.rotation_count(L.bytes + L.N * L.P * L.Q * L.C, max_sets=32)


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


def _pool_torch_ref(L: PoolLayer, pas: str, x, dy):
    """PyTorch's max-pool on NHWC arrays (any DLPack producer), NHWC NumPy result."""
    import torch
    tx = torch.from_dlpack(x).permute(0, 3, 1, 2).double()
    if pas == "fwd":
        return torch.nn.functional.max_pool2d(tx, L.pool, L.stride).permute(0, 2, 3, 1).cpu().numpy()
    tx = tx.detach().clone().requires_grad_(True)
    y = torch.nn.functional.max_pool2d(tx, L.pool, L.stride)
    y.backward(torch.from_dlpack(dy).permute(0, 3, 1, 2).double())
    return tx.grad.permute(0, 2, 3, 1).cpu().numpy()


def registry_fn(op):
    from .backend import registry
    return registry.get(op).fn


def _make_torch_pool(L: PoolLayer, pas: str, channels_last: bool, dev: str = "cuda"):
    def make():
        import torch
        sets = _pool_sets(L) if dev == "cuda" else 1
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xs = [torch.randn(L.N, L.C, L.H, L.W, device=dev).contiguous(memory_format=fmt) for _ in range(sets)]
        if pas == "fwd":
            def fn(i):
                return torch.nn.functional.max_pool2d(xs[i], L.pool, L.stride)
        else:
            outs = [torch.ops.aten.max_pool2d_with_indices(x, [L.pool] * 2, [L.stride] * 2) for x in xs]
            dys = [torch.randn_like(y) for y, _ in outs]

            def fn(i):
                return torch.ops.aten.max_pool2d_with_indices_backward(
                    dys[i], xs[i], [L.pool] * 2, [L.stride] * 2, [0, 0], [1, 1], False, outs[i][1])
        return fn, sets, None
    return make


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


# ---- whole networks
def torch_lenet5():
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def torch_alexnet(num_classes: int = 1000):
    """Single-tower AlexNet, 62,378,344 parameters (no LRN), as fastcnn's 'single' variant."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, num_classes))


NETS = {  # name: (input HWC, classes, train batch, optimizer)
    "lenet5": ((28, 28, 1), 10, LENET_BATCH, "adam"),
    "alexnet": ((227, 227, 3), 1000, ALEXNET_BATCH, "sgd"),
}


def _torch_optimizer(net, params, capturable):
    import torch
    if NETS[net][3] == "adam":
        return torch.optim.Adam(params, lr=1e-3, eps=1e-7, capturable=capturable)
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def _make_torch_net(net: str, mode: str, batch: int, device: str = "cuda", channels_last=False):
    """mode: 'train eager', 'train graph', 'infer eager'."""
    def make():
        import torch
        hwc, classes, _, _ = NETS[net]
        model = (torch_lenet5() if net == "lenet5" else torch_alexnet(classes)).to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        sets = 4 if mode.startswith("train") else 2
        xs = [torch.randn(batch, hwc[2], hwc[0], hwc[1], device=device).contiguous(memory_format=fmt)
              for _ in range(sets)]
        ys = [torch.randint(0, classes, (batch,), device=device) for _ in range(sets)]
        loss_fn = torch.nn.CrossEntropyLoss()
        if mode == "infer eager":
            model.eval()

            def fn(i):
                with torch.no_grad():
                    return model(xs[i])
            return fn, sets, None
        opt = _torch_optimizer(net, model.parameters(), capturable=(mode == "train graph"))

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss
        if mode == "train eager":
            return (lambda i: step(xs[i], ys[i])), sets, None
        # The standard whole-step capture: side-stream warm-up, static tensors, replay.
        static_x, static_y = xs[0].clone(), ys[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = loss_fn(model(static_x), static_y)
            static_loss.backward()
            opt.step()

        def fn(i):
            static_x.copy_(xs[i])
            static_y.copy_(ys[i])
            graph.replay()
        return fn, sets, None
    return make


def _fastcnn_model(net: str):
    from . import models
    if net == "lenet5":
        model = models.lenet5()
        optimizer = "adam"
    else:
        from . import optimizers
        model = models.alexnet(num_classes=1000, variant="single")
        optimizer = optimizers.SGD(learning_rate=0.01, momentum=0.9)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    return model


def _infer_fn(model):
    """One inference forward (softmax included) on a batch already on the model's device."""
    from .tensor import no_grad

    def infer(x):
        with no_grad():
            return model(x, training=False)
    return infer


def _make_fastcnn_net(net: str, mode: str, batch: int, device: str = "cuda"):
    def make():
        hwc, classes, _, _ = NETS[net]
        model = _fastcnn_model(net)
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
    for net, what, batch in workloads:
        case = f"{net} {what}"
        shape = f"batch {batch}" + (", Adam" if net == "lenet5" and what == "train" else
                                    ", SGD m=0.9" if what == "train" else "")
        modes = ["train eager", "train graph"] if what == "train" else ["infer eager"]
        for precision in ("fp32", "tf32") if net in tf32_nets else ("fp32",):
            tag = " TF32" if precision == "tf32" else ""
            for mode in modes:
                impl = f"fastcnn {mode.split()[1]}" if what == "train" else "fastcnn"
                specs.append(Spec("network", case, shape, impl + tag, "fastcnn", "img/s", batch,
                                  _make_fastcnn_net(net, mode, batch), flush=False, precision=precision,
                                  compare_to=f"torch {mode.split()[1]} {'TF32' if tag else 'fp32'}",
                                  context=_in_precision(precision)))
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
        if net == "alexnet" and what == "train" and not quick:
            specs.append(Spec("network", case, shape, "torch eager NHWC fp32", "baseline", "img/s",
                              batch, _make_torch_net(net, "train eager", batch, channels_last=True),
                              lib="torch", flush=False, context=lambda: torch_tf32(False)))
    return specs


# ---- CPU
def _reference_primitive_step():
    """The primitives-only LeNet-5 step of bench/reference_lenet_step.py (no model API needed)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "bench" / "reference_lenet_step.py"
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
        from .backend import reference as ref
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


def _make_torch_cpu_lenet(batch: int):
    return _make_torch_net("lenet5", "train eager", batch, device="cpu")


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
QUICK_BUDGET_S = 150  # --quick starts no case after this: the run ends within 3 minutes
# The cases the issues set targets for; --quick runs them first so a budget never cuts them.
TARGETS = r"lenet5 train|alexnet train|gemm 4096\^3|alexnet\.pool1 |alexnet\.conv\d fwd"


def specs(group: str, quick: bool = False) -> list[Spec]:
    """The specs of one group (listing needs no GPU; running them does, except 'cpu')."""
    return SPEC_BUILDERS[group](quick)


# ------------------------------------------------------------------ running
@dataclass
class Options:
    quick: bool = False
    filter: str | None = None
    groups: tuple = GROUPS
    repeats: int | None = None
    warmup: int | None = None
    budget_s: float | None = None
    priority: str | None = None
    progress_json: str | None = None   # rewritten after every case, so a killed run leaves its figures
    check: bool = True
    verbose: bool = True
    run_id: str | None = None


def _select(all_specs: Iterable[Spec], pattern: str | None) -> list[Spec]:
    if not pattern:
        return list(all_specs)
    rx = re.compile(pattern, re.IGNORECASE)
    return [s for s in all_specs if rx.search(s.label())]


def run_spec(spec: Spec, opts: Options, run_id: str) -> Result:
    """Build, check and time one spec; any failure becomes the Result's ``error``."""
    res = Result(spec.group, spec.case, spec.shape, spec.impl, spec.role, spec.unit,
                 precision=spec.precision, compare_to=spec.compare_to, run_id=run_id, note=spec.note)
    quick = opts.quick
    repeats = opts.repeats or (10 if quick else 30)
    warmup = opts.warmup if opts.warmup is not None else (1 if quick else 5)
    max_s = 1.0 if quick else 5.0
    try:
        with spec.context():
            fn, sets, check = spec.make()
            note = getattr(fn, "note", None)
            if note:
                res.note = (res.note + "; " if res.note else "") + note
            if check is not None and opts.check:
                res.rel_err = check()
            if spec.lib == "cpu":
                t = gputime.time_cpu(lambda: fn(0), warmup=min(warmup, 2), repeats=repeats,
                                     max_seconds=max_s * 2)
            else:
                t = gputime.time_cuda(fn, sets=sets, warmup=warmup, repeats=repeats, lib=spec.lib,
                                      flush=spec.flush, max_seconds=max_s, block=spec.block)
            res.method = t.method
            if t.fallback:
                res.note = (res.note + "; " if res.note else "") + f"timed with events, not blocked: {t.fallback}"
        res.time_us = t.median_us
        res.repeats = t.repeats
        res.spread = t.spread
        res.figure = _figure(spec.unit, spec.work, t.median_us)
        if res.rel_err is not None and not (res.rel_err <= (1e-2 if spec.precision == "tf32" else 1e-3)):
            res.note = (res.note + "; " if res.note else "") + f"WRONG: rel err {res.rel_err:.2e}"
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}".strip()[:300]
        if opts.verbose:
            traceback.print_exc(limit=3, file=sys.stderr)
    finally:
        _free_memory(spec.lib)
    return res


CPU_BLOCK = 5   # host calls timed back to back per block (after one untimed call)


def run_cpu_specs(specs_: list[Spec], opts: Options, run_id: str) -> list[Result]:
    """Host cases of one comparison, each timed alone in blocks of whole repeats, the blocks in
    turn (A B B A ...): neither side's thread pool runs while the other is timed."""
    results, fns = [], []
    for spec in specs_:
        res = Result(spec.group, spec.case, spec.shape, spec.impl, spec.role, spec.unit,
                     precision=spec.precision, compare_to=spec.compare_to, run_id=run_id, note=spec.note)
        try:
            fn, _, _ = spec.make()
            if getattr(fn, "note", None):
                res.note = (res.note + "; " if res.note else "") + fn.note
            fns.append(lambda fn=fn: fn(0))
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}".strip()[:300]
            fns.append(None)
        results.append(res)
    live = [k for k, fn in enumerate(fns) if fn is not None]
    repeats = opts.repeats or (10 if opts.quick else 30)
    warmup = min(opts.warmup if opts.warmup is not None else 2, 2)
    try:
        timings = gputime.time_cpu_blocks([fns[k] for k in live], warmup=warmup, repeats=repeats,
                                          block=CPU_BLOCK, max_seconds=20.0 if opts.quick else 60.0)
    except Exception as exc:
        for k in live:
            results[k].error = f"{type(exc).__name__}: {exc}".strip()[:300]
        return results
    for k, t in zip(live, timings):
        spec, res = specs_[k], results[k]
        res.time_us, res.repeats, res.spread = t.median_us, t.repeats, t.spread
        res.method = t.method
        res.figure = _figure(spec.unit, spec.work, t.median_us)
        res.note = (res.note + "; " if res.note else "") + f"timed alone in blocks of {CPU_BLOCK}, taken in turn with the other rows of this case"
    return results


def _free_memory(lib):
    if lib == "cpu":
        return
    try:
        import cupy
        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    if lib == "torch":
        try:
            import torch
            torch.cuda.empty_cache()
        except Exception:
            pass


def _priority_patterns(priority: str) -> list:
    """'a|b|c' -> [a, b, c]: cases matching an earlier alternative run earlier."""
    try:
        return [re.compile(p, re.IGNORECASE) for p in priority.split("|")]
    except re.error:
        return [re.compile(priority, re.IGNORECASE)]


def run_benchmarks(opts: Options) -> Report:
    """Run the selected cases in one process and return the report of this run.

    Ceilings run first and are never filtered (every % of ceiling needs them); cases
    matching ``opts.priority`` run next (in the order of its '|' alternatives), then the rest, until ``opts.budget_s`` is
    spent.  Rows keep the canonical order whatever order the cases ran in."""
    header = environment(opts.run_id)
    header["mode"] = "quick" if opts.quick else "full"
    header["timing"] = gputime.METHODS_SUMMARY
    run_id = header["run_id"]
    gpu = gputime.cuda_available()
    results: list[tuple[int, Result]] = []
    t0 = time.perf_counter()
    groups = [g for g in GROUPS if g in opts.groups]
    if not gpu:
        skipped = [g for g in groups if g in GPU_GROUPS]
        if skipped:
            header["notes"].append(f"no CUDA GPU here: GPU groups {', '.join(skipped)} not run")
        groups = [g for g in groups if g not in GPU_GROUPS]
    queue: list[tuple[int, Spec]] = []
    for group in groups:
        try:
            group_specs = specs(group, opts.quick)
        except Exception as exc:
            results.append((len(queue), Result(group, f"{group} (listing)", "", "-", "fastcnn", "img/s",
                                               run_id=run_id, error=f"{type(exc).__name__}: {exc}"[:300])))
            continue
        if group != "ceiling":
            group_specs = _select(group_specs, opts.filter)
        queue += [(len(queue) + i, s) for i, s in enumerate(group_specs)]
    if opts.priority:
        ranks = _priority_patterns(opts.priority)

        def rank(spec):
            hits = [i for i, rx in enumerate(ranks) if rx.search(spec.label())]
            return hits[0] if hits else len(ranks)
        queue.sort(key=lambda item: (item[1].group != "ceiling", rank(item[1]), item[0]))
    not_run, done = [], set()
    for index, spec in queue:
        if index in done:
            continue
        if opts.budget_s is not None and time.perf_counter() - t0 > opts.budget_s:
            not_run.append(spec)
            continue
        if spec.lib == "cpu":  # host rows of one case: blocks in turn, so the load hits all alike
            batch = [(i, s) for i, s in queue if s.lib == "cpu" and s.case == spec.case and i not in done]
            ran = list(zip([i for i, _ in batch], run_cpu_specs([s for _, s in batch], opts, run_id)))
        else:
            ran = [(index, run_spec(spec, opts, run_id))]
        for i, res in ran:
            done.add(i)
            if not (res.error or "").startswith("NotApplicable"):  # e.g. Winograd on an 11x11 or strided layer: no row
                results.append((i, res))
        if opts.progress_json:
            try:
                header["elapsed_s"] = round(time.perf_counter() - t0, 1)
                Report([r for _, r in sorted(results, key=lambda item: item[0])], header).write_json(
                    opts.progress_json)
            except Exception:
                pass
        for i, res in ran:
            if opts.verbose:
                fig = f"{res.figure:.4g} {res.unit}" if res.figure else (res.error or "")[:80]
                print(f"  [{time.perf_counter() - t0:6.1f}s] {res.group} {res.case} {res.impl}: {fig}",
                      file=sys.stderr, flush=True)
    fell_back = [r for _, r in results
                 if r.group in BLOCKED_GROUPS and r.method and r.method != gputime.METHOD_BLOCKED]
    if fell_back:
        header["notes"].append(f"timing: {len(fell_back)} kernel cases timed with events, not blocked "
                               f"(host time counted; each says why in its note), e.g. "
                               f"{', '.join(f'{r.case} {r.impl}' for r in fell_back[:3])}")
    if not_run:
        header["notes"].append(f"time budget of {opts.budget_s:.0f} s spent: {len(not_run)} cases not run, "
                               f"e.g. {', '.join(s.label() for s in not_run[:3])}")
    header["elapsed_s"] = round(time.perf_counter() - t0, 1)
    load = _try(os.getloadavg)
    if load:
        header["load_avg"] = f"{header.get('load_avg', '?')} -> {' '.join(f'{v:.1f}' for v in load)}"
    return Report([r for _, r in sorted(results, key=lambda item: item[0])], header)


# ------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, skip the largest cases, target cases first, no new "
                             f"case after {QUICK_BUDGET_S} s (meant to fit 3 minutes on an H100)")
    parser.add_argument("--filter", metavar="REGEX",
                        help="only cases whose 'group case impl' matches (ceilings always run)")
    parser.add_argument("--group", action="append", choices=GROUPS + ("distributed",), dest="groups",
                        help="run only these groups (repeatable); default all but distributed (run that "
                             "one alone, under mpirun: see docs/distributed.md)")
    from fastcnn.cli.common import nonnegative_int, output_file, positive_float, positive_int
    parser.add_argument("--json", type=output_file, metavar="FILE", help="write the results and header as JSON")
    parser.add_argument("--markdown", type=output_file, metavar="FILE", help="write a markdown table")
    parser.add_argument("--plot", type=output_file, metavar="FILE", help="write a PNG bar chart of the ratios")
    parser.add_argument("--repeats", type=positive_int, help="timed repeats per case (default 30, quick 10)")
    parser.add_argument("--warmup", type=nonnegative_int, help="untimed warm-up calls per case")
    parser.add_argument("--budget", type=positive_float, metavar="SECONDS",
                        help="start no new case after this many seconds (default: none; "
                             f"{QUICK_BUDGET_S} with --quick)")
    parser.add_argument("--priority", metavar="REGEX",
                        help="run matching cases first (default with --quick: the cases of the "
                             "stated goals)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing each fastcnn output with the baseline's before timing")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")


def run(args) -> int:
    budget = getattr(args, "budget", None)
    priority = getattr(args, "priority", None)
    if getattr(args, "quick", False):
        budget = QUICK_BUDGET_S if budget is None else budget
        priority = TARGETS if priority is None else priority
    opts = Options(quick=getattr(args, "quick", False), filter=getattr(args, "filter", None),
                   groups=tuple(getattr(args, "groups", None) or GROUPS),
                   repeats=getattr(args, "repeats", None), warmup=getattr(args, "warmup", None),
                   budget_s=budget, priority=priority, progress_json=getattr(args, "json", None),
                   check=not getattr(args, "no_check", False))
    if "distributed" in opts.groups:   # every rank of an MPI world at once: a module of its own
        from . import bench_distributed
        return bench_distributed.run(args, opts)
    if getattr(args, "list", False):
        for group in opts.groups:
            for s in _select(specs(group, opts.quick), opts.filter):
                print(f"{s.group:8s} {s.case:28s} {s.shape:36s} {s.impl}")
        return 0
    return emit(run_benchmarks(opts), args)


def emit(report: Report, args) -> int:
    """Print the report's table and write the files asked for; 1 when nothing was measured."""
    print(report.table())
    for path, write in ((getattr(args, "json", None), report.write_json),
                        (getattr(args, "markdown", None), report.write_markdown)):
        if path:
            write(path)
            print(f"written: {path}")
    if getattr(args, "plot", None):
        print(report.plot(args.plot))
    measured = [r for r in report.results if r.figure]
    return 0 if measured else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastcnn bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
