"""Timing helpers shared by the benchmarks: CUDA events, warm-up, medians, cold L2.

Two ways to keep the L2 cache from flattering a kernel, picked by ``sets``:

* ``sets == 1`` (the inputs are larger than L2, or cannot be copied): before every
  timed repeat a buffer twice the size of L2 is overwritten (``flush``), then one
  call is timed between two events.
* ``sets > 1`` (small inputs): the caller prepares ``sets`` independent input sets
  whose total exceeds L2 and ``fn(i)`` uses set ``i``; one repeat times one pass
  over every set back to back and divides by ``sets``.  This also keeps the GPU
  queue fed, so a kernel shorter than its launch cost is timed as a user sees it.

Every GPU time is the median over ``repeats`` after ``warmup`` untimed calls,
in microseconds.  ``lib`` chooses whose events and current stream are used:
'cupy' (our kernels, cuBLAS through CuPy) or 'torch' (cuDNN/ATen through PyTorch).
Nothing here is imported by the training code; importing it needs no GPU.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

_flush_buffers: dict = {}


@dataclass
class Timing:
    median_us: float
    min_us: float
    max_us: float
    repeats: int
    per_repeat_calls: int

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


def time_cuda(fn, *, sets: int = 1, warmup: int = 3, repeats: int = 20, lib: str = "cupy",
              flush: bool = True, max_seconds: float | None = None) -> Timing:
    """Median time of one ``fn(i)`` call on the GPU, measured with CUDA events.

    ``fn(i)`` launches the work for input set ``i`` (``0 <= i < sets``) and does not
    synchronize.  ``max_seconds`` cuts the repeats short (at least 3 are kept)."""
    for w in range(warmup):
        for i in range(sets):
            fn(i)
    synchronize(lib)
    events = _Events(lib)
    samples = []
    t_start = time.perf_counter()
    for r in range(repeats):
        if sets == 1 and flush:
            flush_l2(lib)
        start, end = events.pair()
        events.record(start)
        for i in range(sets):
            fn(i)
        events.record(end)
        samples.append(events.elapsed_ms(start, end) * 1e3 / sets)
        if max_seconds is not None and r >= 2 and time.perf_counter() - t_start > max_seconds:
            break
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), sets)


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
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), 1)


def time_cpu_interleaved(fns, *, warmup: int = 2, repeats: int = 10,
                         max_seconds: float | None = None) -> list[Timing]:
    """Median wall times of several host callables timed in turn (A B A B ...), so that a
    load that changes during the run (a shared machine) weighs on each of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples = [[] for _ in fns]
    t_start = time.perf_counter()
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append((time.perf_counter() - t0) * 1e6)
        if max_seconds is not None and r >= 2 and time.perf_counter() - t_start > max_seconds:
            break
    return [Timing(statistics.median(s), min(s), max(s), len(s), 1) for s in samples]
