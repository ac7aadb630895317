"""Results, rows and the report (table, JSON, markdown, plot); the environment header."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import uuid
from dataclasses import asdict, dataclass

import numpy as np

from .. import gputime


UNITS = ("TFLOP/s", "GB/s", "img/s")


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
    precision: str = "fp32"           # 'fp32', 'tf32' or 'bf16' (the mixed_bfloat16 policy)
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
        same_case = [b for b in self.results if b.group == r.group and b.case == r.case
                     and b.figure and not b.error and b.unit == r.unit]
        if r.compare_to is not None:  # by name: a baseline, or fastcnn's own row (bf16 vs its fp32)
            named = [b for b in same_case if b.impl == r.compare_to and b is not r]
            return named[0] if named else None
        same_case = [b for b in same_case if b.role == "baseline"]
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
            # the TF32 and bf16 rows (compared with TF32 / bf16 baselines) only where asked for by name
            rows = [r for r in self.rows if r.case == case and r.role == "fastcnn" and not r.error
                    and r.impl.startswith(impl_prefix) and not (exclude and r.impl.startswith(exclude))
                    and all((kind in impl_prefix) == (kind in r.impl.lower()) for kind in ("tf32", "bf16"))]
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
                ("gemm 8192^3 tc_bf16 / cuBLAS BF16", "gemm 8192^3", "fastcnn:tc_bf16", "ratio"),
                *[(f"alexnet.conv{i} fwd tc_bf16 / cuDNN NHWC BF16", f"alexnet.conv{i} fwd", "fastcnn:tc_bf16", "ratio")
                  for i in range(1, 6)],
                ("alexnet.pool1 fwd % copy bw", "alexnet.pool1 fwd", "fastcnn", "pct_ceiling"),
                ("alexnet.pool1 bwd % copy bw", "alexnet.pool1 bwd", "fastcnn", "pct_ceiling"),
                ("lenet train graph / torch graph", "lenet5 train", "fastcnn graph", "ratio"),
                ("lenet train eager / torch eager", "lenet5 train", "fastcnn eager", "ratio"),
                ("alexnet train / torch fp32", "alexnet train", "fastcnn", "ratio"),
                ("alexnet train graph bf16 / torch graph NHWC bf16 autocast", "alexnet train",
                 "fastcnn graph bf16", "ratio"),
                ("lenet train graph bf16 / fastcnn graph fp32", "lenet5 train", "fastcnn graph bf16", "ratio"),
                ("cpu lenet train / torch cpu", "lenet5 train (cpu)", "fastcnn", "ratio")]:
            v = pick(case, prefix, want)
            if v is not None:
                out.append((label, f"{v:.2f}x" if want == "ratio" else f"{v:.1f}%"))  # 69.6% is not 70%
        def best(case, role, tf32):   # the best figure of either layout and mode, in one precision
            vals = [r.figure for r in self.rows if r.case == case and r.role == role and not r.error
                    and r.figure is not None and ("tf32" in r.impl.lower()) == tf32
                    and "bf16" not in r.impl.lower()]
            return max(vals) if vals else None
        for net in ("alexnet", "lenet5"):
            ours, theirs = best(f"{net} train", "fastcnn", True), best(f"{net} train", "baseline", True)
            if ours is not None and theirs:
                out.append((f"{net} train TF32 best / torch TF32 best", f"{ours / theirs:.2f}x"))
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
