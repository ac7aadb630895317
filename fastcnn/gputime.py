"""Timing helpers shared by the benchmarks: CUDA events, warm-up, medians, cold L2, and a
blocking kernel that keeps the host's launch latency out of kernel timings.

Cold L2.  Two ways to keep the L2 cache from flattering a kernel, picked by ``sets``:

* ``sets == 1`` (the inputs are larger than L2, or cannot be copied): before every
  timed repeat a buffer twice the size of L2 is overwritten (``flush``), then one
  call is timed between two events.
* ``sets > 1`` (small inputs): the caller prepares ``sets`` independent input sets
  whose total exceeds L2 and ``fn(i)`` uses set ``i``; one repeat times one pass
  over every set back to back and divides by ``sets``.

Two timing methods; ``Timing.method`` says which one a measurement used:

* ``"blocked"`` (``time_cuda(..., block=True)``, the default; nvbench's "blocking
  kernel").  After the L2 flush, a one-thread kernel (kernels/timing.cu) is queued that
  spins until a word in pinned, device-mapped host memory becomes non-zero; then the
  start event, the ``sets`` calls and the end event are queued, and only then does the
  host write the word.  The GPU runs the timed calls back to back from a full queue, so
  the figure is GPU time: host work inside ``fn`` (Python, argument checks, the ~100 us
  of a Numba launch) is not counted, as it would not be in a CUDA graph.  ``held_us``
  is how long the GPU was held, i.e. about the host time that was kept out.
* ``"events"`` (the only method up to run 3 of BENCHMARKS.md; ``block=False``, or a
  fallback).  The start event is queued, then the calls, then the end event, and the GPU
  starts at once.  Where ``fn``'s host time is longer than the GPU time of the work queued
  ahead of it (the flush, the previous set), that host time is counted: this is what a
  user's Python loop sees.

Which measurements use which (fastcnn.benchmark, bench/conftest.py: ``Spec.block``):
kernel-level cases (ceilings, GEMM, convolution, max-pool: one op per call, compared
kernel against kernel) are blocked; whole-network cases (training steps and inference
passes, images/s) keep ``events``, because a step's host time is part of what a user
waits for, and a step is far more launches than the blocked method allows; host (CPU)
cases use ``perf_counter`` (``time_cpu``, method ``"host"``).

Bounds of the blocked method.  Outside them the measurement is taken with ``events``
instead and ``Timing.fallback`` says why, so a report never mixes methods silently:

* ``fn(i)`` must be a handful of launches (at most ~8) and must not synchronise with
  the device (``.get()``, ``cupy.asnumpy``, ``.item()``, ``torch.cuda.synchronize``,
  a ``cudaFree`` when a memory pool runs dry): the host would wait for the held GPU
  and the GPU for the host.  Launches cannot be counted from here, so the bound is
  on ``sets``: at most ``BLOCK_MAX_SETS`` (32), i.e. at most ~256 launches plus two
  events queued while the GPU is held, well inside the driver's launch queue (about a
  thousand entries; nvbench advises ~32 launches to be safe on any driver).  When the
  queue is full the host blocks inside the launch call.
* ``warmup >= 1``: every kernel ``fn`` launches must already be compiled and loaded
  (CUDA loads kernels lazily, and a first load may synchronise); and
  ``CUDA_LAUNCH_BLOCKING`` unset (each launch would wait for the held GPU).
* ``lib`` is 'cupy' (the blocker goes on CuPy's current stream) or 'torch' (on
  torch's current stream, which must be on CuPy's current device); the device has
  unified addressing (every 64-bit CUDA platform), so the pinned buffer's host
  pointer is its device pointer.
* Whatever happens, the blocking kernel gives up after ``BLOCK_TIMEOUT_S`` (1 s) and
  reports it; that whole measurement (every repeat) is then taken again with events.

Every GPU time is the median over ``repeats`` after ``warmup`` untimed calls,
in microseconds.  ``lib`` chooses whose events and current stream are used:
'cupy' (our kernels, cuBLAS through CuPy) or 'torch' (cuDNN/ATen through PyTorch).
Nothing here is imported by the training code; importing it needs no GPU.  Not
thread-safe: one measurement at a time per process (the flag words are shared).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import time
import warnings
from dataclasses import dataclass

import numpy as np

_flush_buffers: dict = {}

METHOD_BLOCKED = "blocked"   # GPU held by kernels/timing.cu until every timed call was queued
METHOD_EVENTS = "events"     # CUDA events around the calls as the host queues them
METHOD_HOST = "host"         # perf_counter around a host call (time_cpu)
# The report header's line (fastcnn.benchmark): which cases use which method.
METHODS_SUMMARY = ("kernel cases blocked (GPU time, host launch latency excluded); "
                   "network cases events (host time counted)")

BLOCK_MAX_SETS = 32      # most calls queued while the GPU is held (each a handful of launches)
BLOCK_TIMEOUT_S = 1.0    # the blocking kernel gives up after this long


@dataclass
class Timing:
    median_us: float
    min_us: float
    max_us: float
    repeats: int
    per_repeat_calls: int
    method: str = METHOD_EVENTS   # METHOD_BLOCKED, METHOD_EVENTS or METHOD_HOST
    fallback: str = ""            # why blocking was asked for and not used ('' when it was, or was not asked)
    held_us: float | None = None  # blocked only: median time the GPU was held (~ host time kept out)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (self.max_us - self.min_us) / self.median_us if self.median_us else float("nan")


def cuda_available() -> bool:
    try:
        import cupy
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def torch_cuda_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def l2_bytes() -> int:
    """The L2 size of the current GPU (50 MiB if it cannot be read)."""
    try:
        import cupy
        return int(cupy.cuda.Device().attributes["L2CacheSize"])
    except Exception:
        return 50 << 20


def rotation_count(bytes_per_set: int, max_sets: int = 32, l2: int | None = None) -> int:
    """How many input sets make one pass read more than twice the L2 (1 if one set already does)."""
    l2 = l2_bytes() if l2 is None else l2
    if bytes_per_set <= 0:
        return 1
    need = -(-2 * l2 // bytes_per_set)
    return int(max(1, min(max_sets, need)))


def flush_l2(lib: str = "cupy") -> None:
    """Overwrite a buffer of twice the L2 size on the current stream (asynchronous)."""
    nbytes = 2 * l2_bytes()
    buf = _flush_buffers.get(lib)
    if buf is None:
        if lib == "torch":
            import torch
            buf = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
        else:
            import cupy
            buf = cupy.empty(nbytes // 4, dtype=cupy.float32)
        _flush_buffers[lib] = buf
    buf.fill_(1.0) if lib == "torch" else buf.fill(1.0)


class _Events:
    def __init__(self, lib: str):
        self.lib = lib
        if lib == "torch":
            import torch
            self._new = lambda: torch.cuda.Event(enable_timing=True)
        else:
            import cupy
            self._new = cupy.cuda.Event

    def pair(self):
        return self._new(), self._new()

    def record(self, event):
        event.record()

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        if self.lib == "torch":
            return float(start.elapsed_time(end))
        import cupy
        return float(cupy.cuda.get_elapsed_time(start, end))


def synchronize(lib: str = "cupy") -> None:
    if lib == "torch":
        import torch
        torch.cuda.synchronize()
    elif lib == "cupy":
        import cupy
        cupy.cuda.Device().synchronize()


# ------------------------------------------------------------------ the blocking kernel
def block_refusal(lib: str, sets: int, warmup: int) -> str:
    """'' when a measurement may hold the GPU with the blocking kernel, else why not
    (the bounds of the module docstring that can be checked before any GPU call)."""
    if lib not in ("cupy", "torch"):
        return f"lib {lib!r} has no CUDA stream to hold"
    if sets > BLOCK_MAX_SETS:
        return (f"{sets} sets > {BLOCK_MAX_SETS}: the launches queued while the GPU is held "
                "could fill the driver's launch queue")
    if warmup < 1:
        return "warmup=0: fn's kernels could first load (and synchronise) while the GPU is held"
    if os.environ.get("CUDA_LAUNCH_BLOCKING", "0") not in ("", "0"):
        return "CUDA_LAUNCH_BLOCKING is set: every launch would wait for the held GPU"
    return ""


class _Blocker:
    """kernels/timing.cu's fc_block_stream and its flag words in pinned, device-mapped host memory.

    ``words`` is a uint32 NumPy view of the ``NBYTES`` at host address ``ptr`` (also the
    device address, under unified addressing).  Word RELEASE is written by the host,
    STATUS and the uint64 at HELD by the kernel; each on its own 64-byte line."""
    NBYTES = 256
    RELEASE, STATUS, HELD = 0, 16, 32     # uint32 word indices (HELD: a uint64, 8-byte aligned)
    PENDING, RELEASED, TIMED_OUT = 2, 0, 1  # STATUS values (PENDING: set by the host, not yet run)

    def __init__(self, kernel, ptr: int, words, device_id: int):
        self.kernel = kernel
        self.ptr = int(ptr)
        self.words = words
        self.device_id = device_id
        self._streams: dict = {}

    def _stream(self, lib: str):
        """None for CuPy's current stream; for torch, a CuPy handle of torch's current stream."""
        if lib != "torch":
            return None
        import torch
        ptr = int(torch.cuda.current_stream().cuda_stream)
        stream = self._streams.get(ptr)
        if stream is None:
            import cupy
            with warnings.catch_warnings():
                # CuPy 14 deprecates ExternalStream for Stream.from_external; that one wraps the
                # pointer as a cupy Stream, whose destructor may destroy a stream it does not own.
                warnings.simplefilter("ignore", DeprecationWarning)
                stream = self._streams[ptr] = cupy.cuda.ExternalStream(ptr, self.device_id)
        return stream

    def block(self, lib: str, timeout_s: float) -> None:
        """Reset the flag words and queue the blocking kernel on ``lib``'s current stream."""
        w = self.words
        w[self.RELEASE] = 0
        w[self.STATUS] = self.PENDING
        w[self.HELD] = w[self.HELD + 1] = 0
        args = (np.uint64(self.ptr + 4 * self.RELEASE), np.uint64(self.ptr + 4 * self.STATUS),
                np.uint64(self.ptr + 4 * self.HELD), np.uint64(max(1, int(timeout_s * 1e9))))
        stream = self._stream(lib)
        with (stream if stream is not None else contextlib.nullcontext()):
            self.kernel((1,), (1,), args)

    def release(self) -> None:
        self.words[self.RELEASE] = 1

    def outcome(self) -> tuple[int, float]:
        """(STATUS, microseconds held); read only after an event queued after the kernel completed."""
        held_ns = int(self.words[self.HELD]) | (int(self.words[self.HELD + 1]) << 32)
        return int(self.words[self.STATUS]), held_ns / 1e3

    def self_test(self) -> None:
        """Launch once with the release already written: must come back RELEASED."""
        import cupy
        self.block("cupy", BLOCK_TIMEOUT_S)
        self.release()
        cupy.cuda.get_current_stream().synchronize()
        status, _ = self.outcome()
        if status != self.RELEASED:
            raise RuntimeError(f"the blocking kernel's self-test returned status {status}, "
                               f"expected {self.RELEASED}")


def _pinned_words(nbytes: int):
    """(host pointer, uint32 NumPy view) of ``nbytes`` of pinned, portable, device-mapped host memory.
    Allocated once per process and never freed (the blocker is reused)."""
    from cupy.cuda import runtime
    ptr = runtime.hostAlloc(nbytes, runtime.hostAllocPortable | runtime.hostAllocMapped)
    words = np.ctypeslib.as_array((ctypes.c_uint32 * (nbytes // 4)).from_address(ptr))
    return ptr, words


def _make_blocker(device_id: int) -> _Blocker:
    from cupy.cuda import runtime
    if not runtime.deviceGetAttribute(runtime.cudaDevAttrUnifiedAddressing, device_id):
        raise RuntimeError(f"GPU {device_id} has no unified addressing: a pinned host pointer "
                           "is not a device pointer there")
    from .backend.cuda import _launch
    kernel = _launch.function("timing.cu", "fc_block_stream")
    ptr, words = _pinned_words(_Blocker.NBYTES)
    blocker = _Blocker(kernel, ptr, words, device_id)
    blocker.self_test()
    return blocker


_blockers: dict = {}  # CuPy device id -> _Blocker, or the str saying why there is none


def _blocker_for(lib: str):
    """(blocker, '') for ``lib``'s current stream, or (None, why not); made once per device."""
    try:
        import cupy
        device_id = cupy.cuda.Device().id
    except Exception as exc:
        return None, f"CuPy unusable ({type(exc).__name__}: {exc})"
    if lib == "torch":
        try:
            import torch
            torch_device = torch.cuda.current_device()
        except Exception as exc:
            return None, f"torch's current device unreadable ({type(exc).__name__}: {exc})"
        if torch_device != device_id:
            return None, (f"torch's current device ({torch_device}) is not CuPy's ({device_id}): "
                          "the blocking kernel is launched by CuPy")
    got = _blockers.get(device_id)
    if got is None:
        try:
            got = _make_blocker(device_id)
        except Exception as exc:
            got = f"blocking kernel unavailable ({type(exc).__name__}: {exc})"[:300]
        _blockers[device_id] = got
    return (got, "") if isinstance(got, _Blocker) else (None, got)


# ------------------------------------------------------------------ timing
def _measure(fn, sets: int, repeats: int, lib: str, flush: bool, max_seconds, events, blocker):
    """(samples in us per call, held us per repeat) with ``blocker`` (None: events method),
    or (None, why) when the blocking kernel could not hold the GPU for a repeat (timed out,
    or could not be queued): the caller then measures every repeat again without it."""
    samples, held = [], []
    t_start = time.perf_counter()
    for r in range(repeats):
        if sets == 1 and flush:
            flush_l2(lib)                 # before the blocker: L2 is cold when the calls run
        start, end = events.pair()
        if blocker is not None:
            try:
                blocker.block(lib, BLOCK_TIMEOUT_S)
            except Exception as exc:
                return None, f"the blocking kernel could not be queued ({type(exc).__name__}: {exc})"[:300]
        try:
            events.record(start)
            for i in range(sets):
                fn(i)
            events.record(end)
        except BaseException:
            if blocker is not None:
                blocker.release()
                with contextlib.suppress(Exception):
                    synchronize(lib)      # let the blocker finish before anyone resets its words
            raise
        if blocker is not None:
            blocker.release()             # only now: everything timed is already queued
        samples.append(events.elapsed_ms(start, end) * 1e3 / sets)
        if blocker is not None:
            status, held_us = blocker.outcome()
            if status == _Blocker.TIMED_OUT:
                return None, (f"the blocking kernel timed out after {BLOCK_TIMEOUT_S:g} s (fn synchronised, "
                              "or queued more than the launch queue holds)")
            if status != _Blocker.RELEASED:
                return None, f"the blocking kernel reported status {status} (it did not run?)"
            held.append(held_us)
        if max_seconds is not None and r >= 2 and time.perf_counter() - t_start > max_seconds:
            break
    return samples, held


def time_cuda(fn, *, sets: int = 1, warmup: int = 3, repeats: int = 20, lib: str = "cupy",
              flush: bool = True, max_seconds: float | None = None, block: bool = True) -> Timing:
    """Median time of one ``fn(i)`` call on the GPU, measured with CUDA events.

    ``fn(i)`` launches the work for input set ``i`` (``0 <= i < sets``) and does not
    synchronize.  ``max_seconds`` cuts the repeats short (at least 3 are kept).
    ``block=True`` holds the GPU with the blocking kernel while the calls are queued
    (GPU time; ``fn`` must be a handful of launches, see the module docstring), falling
    back to plain events where that is not possible; ``block=False`` times as the host
    queues (host launch time counted).  ``Timing.method`` and ``Timing.fallback`` say
    which method was used and why."""
    for w in range(warmup):
        for i in range(sets):
            fn(i)
    synchronize(lib)
    events = _Events(lib)
    fallback = ""
    if block:
        fallback = block_refusal(lib, sets, warmup)
        if not fallback:
            blocker, fallback = _blocker_for(lib)
            if blocker is not None:
                samples, held = _measure(fn, sets, repeats, lib, flush, max_seconds, events, blocker)
                if samples is not None:
                    return Timing(statistics.median(samples), min(samples), max(samples), len(samples),
                                  sets, METHOD_BLOCKED, "", statistics.median(held))
                fallback = held + "; every repeat timed again with events"
    samples, _ = _measure(fn, sets, repeats, lib, flush, max_seconds, events, None)
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), sets,
                  METHOD_EVENTS, fallback)


def time_cpu(fn, *, warmup: int = 2, repeats: int = 10, max_seconds: float | None = None) -> Timing:
    """Median wall time of ``fn()`` on the host (for the NumPy and PyTorch CPU cases)."""
    for _ in range(warmup):
        fn()
    samples = []
    t_start = time.perf_counter()
    for r in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
        if max_seconds is not None and r >= 2 and time.perf_counter() - t_start > max_seconds:
            break
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), 1,
                  METHOD_HOST)


def time_cpu_blocks(fns, *, warmup: int = 2, repeats: int = 10, block: int = 5,
                    max_seconds: float | None = None) -> list[Timing]:
    """Median wall times of several host callables, each timed alone in blocks of ``block``
    calls, the blocks taken in turn (A B B A A B ...). Calls of two libraries with thread pools
    of their own (OpenBLAS, PyTorch) are never timed back to back: each block starts with one
    untimed call, so the other side's threads have gone quiet; taking the blocks in turn still
    lets a load that changes during the run (a shared machine) weigh on each of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples = [[] for _ in fns]
    block = max(1, min(block, repeats))
    t_start = time.perf_counter()
    for r in range(-(-repeats // block)):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for k in order:
            fns[k]()
            for _ in range(min(block, repeats - len(samples[k]))):
                t0 = time.perf_counter()
                fns[k]()
                samples[k].append((time.perf_counter() - t0) * 1e6)
        if max_seconds is not None and r >= 1 and time.perf_counter() - t_start > max_seconds:
            break
    return [Timing(statistics.median(s), min(s), max(s), len(s), 1, METHOD_HOST) for s in samples]
