"""Where a training step's time goes: every backend primitive call, timed, by layer.

    prof = model.profile(x, y, steps=5)          # eager steps; the model's weights are kept
    print(prof.table())                           # one row per call site, in step order
    print(prof.table(by="op"))                    # or per primitive, or per layer

or from the shell: ``fastcnn profile alexnet``.  Around any code:

    with fastcnn.profiler.Profile(model.backend) as prof:
        with prof.step():
            model.train_step(x, y)

While a Profile is recording, every primitive of ``fastcnn.backend.PRIMITIVES`` of the
loaded backend modules is wrapped (and unwrapped after).  A row is one call site:
(layer, phase, op, variant, argument shapes).  Layers name the calls they make in
forward; ``Tensor.backward`` names those of each Function's backward after the layer
that created it; the rest of the step (loss, optimizer update) is layer ``-``, phase
``step``.

Clocks.  On the CPU each call is timed with ``perf_counter``.  On the GPU a CUDA event
pair is queued around each call and read once the profile ends, so the profile itself
adds no synchronisation; the host time of each call (argument checks, launches) is kept
beside it.  An event pair measures from the end of the work queued before the call to
the end of the call's own kernels: GPU time, as long as the GPU has work queued (large
kernels, AlexNet); where the GPU runs dry waiting for the host (small kernels, LeNet-5
eager), the host's launch time shows in it too, which is what an eager step pays and a
captured CUDA graph does not.  ``other`` is the step's time outside the primitives:
CuPy's own array operations, gradient bookkeeping, gaps.  Profiles run eager steps:
a graph replay is one launch and cannot be taken apart.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from . import backend as _backends
from . import config


class _State:
    profile = None        # the Profile recording now, or None
    layer = "-"           # the layer whose calls are being made
    phase = "step"        # 'forward', 'backward' or 'step'


state = _State()

# Row keys of each grouping of Profile.rows / table.
GROUPINGS = {"call": ("layer", "phase", "op", "variant", "shapes"), "op": ("op",), "layer": ("layer",)}


def recording() -> bool:
    return state.profile is not None


@contextlib.contextmanager
def scope(layer: str, phase: str):
    """Attribute the calls made inside to ``layer`` and ``phase``."""
    saved = state.layer, state.phase
    state.layer, state.phase = layer, phase
    try:
        yield
    finally:
        state.layer, state.phase = saved


# ------------------------------------------------------------------ clocks
class _HostClock:
    unit = "host"

    def start(self):
        return None

    def stop(self, token):
        return None

    def resolve(self, tokens) -> list:
        return [None] * len(tokens)


class _CudaClock:
    """CUDA event pairs on CuPy's current stream, read after the profile."""
    unit = "gpu"

    def __init__(self):
        import cupy
        self.cp = cupy

    def start(self):
        event = self.cp.cuda.Event()
        event.record()
        return event

    def stop(self, start):
        end = self.cp.cuda.Event()
        end.record()
        return start, end

    def resolve(self, tokens) -> list:
        if tokens:
            tokens[-1][1].synchronize()  # one stream, in order: the last event ends them all
        return [1000.0 * self.cp.cuda.get_elapsed_time(a, b) for a, b in tokens]


def _shape_text(args) -> str:
    shapes = ["x".join(str(d) for d in a.shape) for a in args if hasattr(a, "shape") and hasattr(a, "dtype")]
    return ", ".join(s or "scalar" for s in shapes)


def _variant(backend_module, op: str, args, kwargs) -> str:
    """Which implementation ran: 'reference', a Numba kernel's name, or the CUDA C variant
    (``auto:NAME`` when the per-shape autotuner chose NAME)."""
    name = backend_module.name
    if name == "reference":
        return "reference"
    from . import kernels as registry  # every variant registered
    if name == "numba":
        variants = getattr(backend_module, "VARIANTS", {})
        return variants[op][0] if op in variants else "numba"
    if op not in registry.ops():
        return "cuda"
    chosen = registry.selected(op)
    if chosen == "auto":
        from .backend.cuda import auto
        tuned = auto.chosen(op, args, kwargs)
        return f"auto:{tuned}" if tuned else "auto"
    return chosen


# ------------------------------------------------------------------ the profile
class Profile:
    """Records primitive calls while entered (``with Profile(backend) as prof``); steps are
    marked with ``prof.step()``.  Read it with ``rows``, ``table`` or ``to_dict``."""

    def __init__(self, backend_module):
        self.backend = backend_module
        self.clock = _CudaClock() if backend_module.device == "cuda" else _HostClock()
        self.calls: list[dict] = []      # layer, phase, op, variant, shapes, host_us, token, step
        self.steps: list[dict] = []      # host_us, token
        self._depth = 0
        self._open_step = None           # index of the step being recorded, None between steps
        self._patched: list = []
        self._resolved = False
        self.precision = config.precision_name()  # 'fp32' or 'tf32' (GEMM/convolution), set on entering
        self.activation_bytes = None     # profile_training: what one step holds for its backward pass

    # -- recording
    def __enter__(self) -> "Profile":
        if state.profile is not None:
            raise RuntimeError("a profile is already recording; profiles do not nest")
        modules = {id(m): m for m in _backends.loaded() + [self.backend]}
        for module in modules.values():
            for op in _backends.PRIMITIVES:
                original = getattr(module, op, None)
                if original is not None:
                    self._patched.append((module, op, original))
                    setattr(module, op, self._wrap(module, op, original))
        state.profile = self
        self.precision = config.precision_name()
        return self

    def __exit__(self, *exc) -> None:
        state.profile = None
        for module, op, original in reversed(self._patched):
            setattr(module, op, original)
        self._patched = []
        self._resolve()

    def _wrap(self, module, op: str, fn):
        def timed(*args, **kwargs):
            if self._depth:  # a primitive calling another: counted in the outer call
                return fn(*args, **kwargs)
            self._depth += 1
            try:
                variant = _variant(module, op, args, kwargs)
                t0 = time.perf_counter()
                token = self.clock.start()
                out = fn(*args, **kwargs)
                token = self.clock.stop(token)
                host_us = (time.perf_counter() - t0) * 1e6
            finally:
                self._depth -= 1
            self.calls.append({"layer": state.layer, "phase": state.phase, "op": op, "variant": variant,
                               "shapes": _shape_text(args), "host_us": host_us, "token": token,
                               "step": self._open_step})
            return out
        timed.__name__ = timed.__qualname__ = op
        return timed

    @contextlib.contextmanager
    def step(self):
        """Mark one training step: its total time, and the calls inside it, are the profile."""
        if state.profile is not self:
            raise RuntimeError("Profile.step() works inside `with Profile(...)`")
        t0 = time.perf_counter()
        token = self.clock.start()
        self._open_step = len(self.steps)
        try:
            with scope("-", "step"):
                yield
        finally:
            self._open_step = None
        token = self.clock.stop(token)
        self.steps.append({"host_us": (time.perf_counter() - t0) * 1e6, "token": token})

    def _resolve(self) -> None:
        items = self.calls + self.steps
        times = self.clock.resolve([it["token"] for it in items])
        for it, t in zip(items, times):
            it["us"] = it["host_us"] if t is None else t
            del it["token"]
        self._resolved = True

    # -- reading
    @property
    def clock_name(self) -> str:
        return self.clock.unit

    def step_us(self) -> float:
        """Mean time of a marked step (GPU time on the GPU, host time on the CPU)."""
        self._require_steps()
        return sum(s["us"] for s in self.steps) / len(self.steps)

    def _require_steps(self):
        if not self._resolved:
            raise RuntimeError("read a profile after its `with` block has ended")
        if not self.steps:
            raise RuntimeError("no step was marked: record with `with prof.step(): ...`")

    def rows(self, by: str = "call") -> list[dict]:
        """Per-step means, grouped ``by`` 'call' (layer, phase, op, variant, shapes; in the
        order first seen), 'op' or 'layer' (largest first); the last row is ``other``."""
        if by not in GROUPINGS:
            raise ValueError(f"by must be one of {sorted(GROUPINGS)}, got {by!r}")
        keys = GROUPINGS[by]
        self._require_steps()
        n = len(self.steps)
        groups: dict = {}
        for c in self.calls:
            if c["step"] is None:  # made outside every marked step
                continue
            key = tuple(c[k] for k in keys)
            g = groups.setdefault(key, dict(zip(keys, key), calls=0, us=0.0, host_us=0.0))
            g["calls"] += 1
            g["us"] += c["us"]
            g["host_us"] += c["host_us"]
        total = self.step_us()
        rows = list(groups.values())
        for r in rows:
            r["calls"] = r["calls"] / n
            r["us"] /= n
            r["host_us"] /= n
            r["percent"] = 100.0 * r["us"] / total if total else 0.0
        if by != "call":
            rows.sort(key=lambda r: -r["us"])
        inside = sum(r["us"] for r in rows)
        rows.append(dict({k: ("other" if i == 0 else "") for i, k in enumerate(keys)}, calls=0.0,
                         us=total - inside, host_us=None, percent=100.0 * (total - inside) / total if total else 0.0))
        return rows

    def table(self, by: str = "call") -> str:
        """The rows as aligned text, with the step's total and what the times mean."""
        rows = self.rows(by)
        cols = GROUPINGS[by]
        time_label = "gpu us" if self.clock_name == "gpu" else "us"
        head = list(cols) + ["calls", time_label] + (["host us"] if self.clock_name == "gpu" else []) + ["%"]
        lines = []
        for r in rows:
            cells = [str(r[c]) for c in cols] + [f"{r['calls']:g}" if r["calls"] else "", f"{r['us']:.1f}"]
            if self.clock_name == "gpu":
                cells.append("" if r["host_us"] is None else f"{r['host_us']:.1f}")
            cells.append(f"{r['percent']:.1f}")
            lines.append(cells)
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
        numeric = len(cols)

        def fmt(cells):
            return "  ".join(c.rjust(w) if i >= numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
        step_host = sum(s["host_us"] for s in self.steps) / len(self.steps)
        what = ("GPU time from CUDA events (includes host launch gaps where the GPU waited)"
                if self.clock_name == "gpu" else "host time")
        out.append(f"step: {self.step_us():.1f} us ({what}); host {step_host:.1f} us; "
                   f"mean of {len(self.steps)} step(s) on backend {self.backend.name}, precision {self.precision}")
        if self.activation_bytes is not None:
            out.append(f"activation memory per step: {self.activation_bytes / 2 ** 20:.2f} MiB "
                       f"({self.activation_bytes:,} bytes: activations and the arrays saved for backward, "
                       f"weights not counted)")
        return "\n".join(out)

    def to_dict(self) -> dict:
        """JSON-ready: the backend, clock, steps and every grouping."""
        self._require_steps()
        return {"backend": self.backend.name, "precision": self.precision, "clock": self.clock_name,
                "steps": len(self.steps), "activation_bytes": self.activation_bytes,
                "step_us": self.step_us(), "step_host_us": sum(s["host_us"] for s in self.steps) / len(self.steps),
                "by_call": self.rows("call"), "by_op": self.rows("op"), "by_layer": self.rows("layer")}


def profile_training(model, x, y, steps: int = 5, warmup: int = 1) -> Profile:
    """Profile ``steps`` eager training steps of ``model`` on one batch (x, y) after
    ``warmup`` unrecorded ones (kernel compilation, autotuning); the weights, optimizer
    state and step counter are restored afterwards."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    model.require_compiled()
    x = model.check_input(x)
    y = model.prepare_labels(y, x.shape[0])
    state = model.ready_to_train()
    B = model.backend
    xb, yb = B.asarray(x, "float32"), B.asarray(y)
    saved = state.snapshot()
    try:
        for _ in range(warmup):
            model.train_step(xb, yb)
        with Profile(B) as prof:
            for _ in range(steps):
                with prof.step():
                    model.train_step(xb, yb)
    finally:
        state.restore(saved)
    prof.precision = config.precision_name(model)
    prof.activation_bytes = activation_bytes(model, xb, yb)
    return prof


def _extent(a):
    """(first byte address, byte count) of a NumPy or CuPy array."""
    start = a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr
    return start, a.nbytes


def _arrays(value):
    if hasattr(value, "shape") and hasattr(value, "nbytes") and hasattr(value, "dtype"):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _arrays(v)


def activation_bytes(model, x, y) -> int:
    """Bytes a training step of ``model`` on the device batch (x, y) holds between its forward and
    backward passes: every layer's output and every array a Function saved for backward (the
    bfloat16 input copy, ReLU outputs, pooling's argmax, LRN's scale...) plus the loss gradient,
    each byte counted once (views share); the weights, their bfloat16 copy and the batch x itself
    are not counted.  One forward pass, nothing updated."""
    from .tensor import Tensor
    B = model.backend
    with _backends.using(B.name):
        logits = model._forward(Tensor(x), True, True)
        dlogits = model.loss.fused_gradient(logits.data, y, B.asarray(np.zeros(2, np.float64)), B)
        found, seen, stack = [logits.data, dlogits], set(), [logits.creator]
        while stack:
            fn = stack.pop()
            if fn is None or id(fn) in seen:
                continue
            seen.add(id(fn))
            for name, value in vars(fn).items():
                if name not in ("inputs", "outputs", "B"):
                    found += list(_arrays(value))
            for t in fn.inputs:
                found.append(t.data)
                stack.append(t.creator)
    state = model.training_state
    excluded = [_extent(a) for a in (state.params, state.params_bf16, x) if a is not None]
    spans = sorted({_extent(a) for a in found if a.nbytes})
    total, end = 0, 0
    for start, size in spans:
        if any(lo <= start < lo + n for lo, n in excluded):
            continue
        lo, hi = max(start, end), start + size
        if hi > lo:
            total += hi - lo
            end = hi
    return total
