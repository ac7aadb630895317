"""The `auto` variant: the fastest CUDA C variant for each shape, as measured on this card.

The first call of an op with a new shape times every CUDA C variant of that op
after a warm-up run (CUDA events around a few calls issued back to back; a variant
whose single timed call is already 20x slower than the best is not timed further)
and caches the winner; later calls
go straight to it.  This is the project's rule, "the default is the fastest variant
that passes", applied per shape: LeNet's 6-channel convolutions and AlexNet's
384-channel ones want different kernels.  Which variants are correct is the
test table's job (tests/test_gpu_*.py), not this module's.

A variant whose output differs from the preferred variant's on the tuning call
(relative error above 1e-3, or any integer output such as argmax differing) is
never chosen, so a broken new variant costs speed, not correctness.

Which ops are tuned, and the variant used without tuning (the "preferred" one),
is declared in ``fastcnn.backend.preferences.TUNED``, beside every op's default.
Tuning needs no synchronisation of anything but its own events, but it cannot
run while a stream is being captured: then (and with FASTCNN_AUTOTUNE=0) the
preferred variant is used.  fit() runs one eager warm-up step before it captures
a graph, so the graph holds tuned kernels.

Variants registered with precision 'tf32' compete only while
``fastcnn.config.get_float32_matmul_precision()`` is "high"; then TUNED's 'tf32'
choice is the untuned one (the fp32 preferred variant where it refuses the
shape).  The fp32 preferred variant stays the one the others must agree with.
Choices are kept per precision.
"""
from __future__ import annotations

import os

from ... import config
from .. import registry
from ..preferences import TUNED

# TUNED's ops have pure variants (no side effects besides their output).  Only CUDA C
# variants compete: Numba ones are picked by name.
SLOW_FACTOR = 20.0   # stop timing a variant whose warm-up is this much slower than the best
RUNS = 5  # calls per timing, back to back

_choices: dict[tuple, str] = {}


def enabled() -> bool:
    return os.environ.get("FASTCNN_AUTOTUNE", "1") not in ("0", "false", "no")


def choices() -> dict:
    """{(op, shape key): variant} chosen so far in this process."""
    return dict(_choices)


def chosen(op, args, kwargs) -> str | None:
    """The variant tuned for these arguments, or None if none has been yet."""
    return _choices.get(_key(op, args, kwargs))


def _key(op, args, kwargs):
    parts = [op, config.get_float32_matmul_precision()]
    for a in args:
        parts.append((a.shape, a.dtype.char) if hasattr(a, "shape") else a)
    parts += [(k, v) for k, v in sorted(kwargs.items()) if k != "out"]
    return tuple(parts)


def _candidates(op):
    """The CUDA C float32 variants allowed at this precision, the fp32 preferred one first
    (auto tunes float32 calls; bfloat16 ones run the op's bfloat16 default)."""
    barred = () if config.tf32_allowed() else registry.variants(op, source="cuda", precision="tf32")
    names = [n for n in registry.variants(op, source="cuda", dtype="float32") if n not in barred]
    preferred = TUNED[op].fp32
    ordered = [preferred] if preferred in names else []
    return ordered + [n for n in names if n not in ("auto", preferred)]


def _untuned(op, args, kwargs):
    """Run the variant used without tuning: under "high" TUNED's 'tf32' choice (the fp32
    preferred one where it refuses these arguments or is not registered), else the fp32
    preferred one."""
    if config.tf32_allowed() and TUNED[op].tf32 in _candidates(op):
        try:
            return registry.get(op, TUNED[op].tf32).fn(*args, **kwargs)
        except registry.NotApplicable:
            pass
    return registry.get(op, _candidates(op)[0]).fn(*args, **kwargs)


def _elapsed_ms(fn, args, kwargs, runs, xp) -> float:
    """Milliseconds per call of ``runs`` calls issued back to back between two events: GPU
    time when the kernels outlast the host's cost of a call, the host's cost otherwise
    (what a step pays either way)."""
    start, end = xp.cuda.Event(), xp.cuda.Event()
    start.record()
    for _ in range(runs):
        fn(*args, **kwargs)
    end.record()
    end.synchronize()
    return xp.cuda.get_elapsed_time(start, end) / runs


def _agree(out, expected) -> bool:
    """Same result within float32 GEMM rounding (floats) or exactly (integers)."""
    import cupy as xp
    out = out if isinstance(out, tuple) else (out,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for u, v in zip(out, expected):
        if u.shape != v.shape:
            return False
        if u.dtype.kind == "f":
            err = float(xp.linalg.norm((u - v).ravel())) / (float(xp.linalg.norm(v.ravel())) + 1e-30)
            if not err <= 1e-3:  # also false for NaN
                return False
        elif not bool((u == v).all()):
            return False
    return True


def tune(op, args, kwargs, timer=None, agree=_agree) -> str:
    """Time each candidate on these arguments; return the fastest one that agrees with the
    preferred variant's output."""
    kwargs = {k: v for k, v in kwargs.items() if k != "out"}  # each candidate writes its own output
    if timer is None:
        import cupy as xp  # only to time: the choice logic runs without CuPy (tests)
        timer = (lambda fn, runs: _elapsed_ms(fn, args, kwargs, runs, xp))
    best_name, best_ms, expected = None, float("inf"), None
    for i, name in enumerate(_candidates(op)):
        fn = registry.get(op, name).fn
        try:
            out = fn(*args, **kwargs)  # warm-up: compiles the kernel outside the timing
        except (ValueError, TypeError, NotImplementedError):
            if i == 0:
                raise  # the preferred variant takes every valid input: this is the caller's error
            continue  # this variant does not take these arguments
        if expected is None:
            expected = out
        elif not agree(out, expected):
            continue
        first = timer(fn, 1)
        ms = first if first > SLOW_FACTOR * best_ms else timer(fn, RUNS)
        if ms < best_ms:
            best_name, best_ms = name, ms
    if best_name is None:
        raise ValueError(f"no CUDA variant of {op} accepts these arguments")
    return best_name


def _tunable_now(args) -> bool:
    """Arrays on the GPU and no capture under way (else the preferred variant runs, and
    refuses host arrays with its own clear error)."""
    import cupy as xp
    if not all(isinstance(a, xp.ndarray) for a in args if hasattr(a, "shape")):
        return False
    return not xp.cuda.get_current_stream().is_capturing()


def _auto(op):
    def call(*args, **kwargs):
        key = _key(op, args, kwargs)
        name = _choices.get(key)
        if name is None:
            if not enabled() or not _tunable_now(args):
                return _untuned(op, args, kwargs)
            name = _choices[key] = tune(op, args, kwargs)
        return registry.get(op, name).fn(*args, **kwargs)
    call.__name__ = f"{op}_auto"
    return call


for _op in TUNED:
    registry.register(_op, "auto", _auto(_op), source="cuda", precision="any",
                      note="fastest CUDA C variant for the shape, timed on first use")
