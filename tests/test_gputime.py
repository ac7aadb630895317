"""fastcnn.gputime's two timing methods: the blocking kernel (GPU time) and plain events.

Without a GPU: the decision logic and the order of operations of ``time_cuda`` with fake
events and a fake blocker, the blocker's flag-word protocol on ordinary host memory, the
kernel's signature against the arguments the host passes, and the benchmark's use of it
(which cases block, the report header, fallbacks said).  With a GPU (``-m gpu``): the
blocker really holds the GPU (host sleep not counted, GPU work counted), on CuPy's and on
torch's current stream, the timeout path falls back and says so, 32 sets of 8 launches
stay blocked, and Numba launches (the reason for all this) are timed blocked.
"""
import contextlib
import ctypes
import re
import time

import numpy as np
import pytest

from fastcnn import _paths, benchmark, gputime
from fastcnn.gputime import _Blocker


# ---------------------------------------------------------------- fakes
class FakeEvents:
    """Events whose elapsed time says how the repeat was taken: 0.010 ms when the blocker
    was queued since the last reading, 0.050 ms otherwise (so mixed samples would show)."""

    def __init__(self, log, state):
        self.log, self.state, self.n = log, state, 0

    def pair(self):
        self.n += 1
        return f"start{self.n}", f"end{self.n}"

    def record(self, event):
        self.log.append(("record", event))

    def elapsed_ms(self, start, end):
        self.log.append(("elapsed", start, end))
        blocked, self.state["blocked"] = self.state["blocked"], False
        return 0.010 if blocked else 0.050


class FakeBlocker:
    def __init__(self, log, state, statuses=(), fail=None):
        self.log, self.state, self.statuses, self.fail = log, state, list(statuses), fail

    def block(self, lib, timeout_s):
        if self.fail:
            raise self.fail
        self.log.append(("block", lib, timeout_s))
        self.state["blocked"] = True

    def release(self):
        self.log.append("release")

    def outcome(self):
        status = self.statuses.pop(0) if self.statuses else _Blocker.RELEASED
        return status, 123.0


@pytest.fixture
def fake(monkeypatch):
    """Fake events, flush, synchronize and blocker; returns (log, blocker, set_blocker)."""
    monkeypatch.delenv("CUDA_LAUNCH_BLOCKING", raising=False)
    log, state = [], {"blocked": False}
    blocker = FakeBlocker(log, state)
    holder = {"got": (blocker, "")}
    monkeypatch.setattr(gputime, "_Events", lambda lib: FakeEvents(log, state))
    monkeypatch.setattr(gputime, "flush_l2", lambda lib="cupy": log.append("flush"))
    monkeypatch.setattr(gputime, "synchronize", lambda lib="cupy": log.append("sync"))

    def blocker_for(lib):
        log.append(("blocker_for", lib))
        return holder["got"]
    monkeypatch.setattr(gputime, "_blocker_for", blocker_for)

    def set_blocker(b, why=""):
        holder["got"] = (b, why)
    return log, state, set_blocker


def recorder(log):
    return lambda i: log.append(("fn", i))


# ---------------------------------------------------------------- decision logic and order
def test_blocked_repeat_order_flush_then_blocker_then_events_and_release_last(fake):
    log, _, _ = fake
    t = gputime.time_cuda(recorder(log), sets=1, warmup=1, repeats=1)
    assert t.method == gputime.METHOD_BLOCKED and t.fallback == "" and t.held_us == 123.0
    assert log == [("fn", 0), "sync", ("blocker_for", "cupy"),
                   "flush", ("block", "cupy", gputime.BLOCK_TIMEOUT_S),
                   ("record", "start1"), ("fn", 0), ("record", "end1"),
                   "release", ("elapsed", "start1", "end1")]
    assert t.median_us == pytest.approx(10.0)


def test_blocked_sets_run_back_to_back_without_flush(fake):
    log, _, _ = fake
    t = gputime.time_cuda(recorder(log), sets=3, warmup=1, repeats=2, lib="torch")
    timed = log[log.index(("blocker_for", "torch")) + 1:]
    one = [("block", "torch", gputime.BLOCK_TIMEOUT_S), ("record", "start1"),
           ("fn", 0), ("fn", 1), ("fn", 2), ("record", "end1"), "release", ("elapsed", "start1", "end1")]
    assert timed[:len(one)] == one and "flush" not in log
    assert t.method == gputime.METHOD_BLOCKED and t.repeats == 2 and t.per_repeat_calls == 3
    assert t.median_us == pytest.approx(10.0 / 3)


def test_block_false_is_the_old_method_and_never_touches_the_blocker(fake):
    log, _, _ = fake
    t = gputime.time_cuda(recorder(log), sets=1, warmup=1, repeats=2, block=False)
    assert t.method == gputime.METHOD_EVENTS and t.fallback == "" and t.held_us is None
    assert not any(isinstance(e, tuple) and e[0] in ("blocker_for", "block") for e in log)
    assert "release" not in log
    assert log[2:6] == ["flush", ("record", "start1"), ("fn", 0), ("record", "end1")]
    assert t.median_us == pytest.approx(50.0)


@pytest.mark.parametrize("sets,warmup,lib,blocked", [
    (gputime.BLOCK_MAX_SETS, 1, "cupy", True),
    (gputime.BLOCK_MAX_SETS + 1, 1, "cupy", False),
    (4, 0, "cupy", False),
    (4, 1, "torch", True),
])
def test_bounds_decide_before_any_gpu_call(fake, sets, warmup, lib, blocked):
    log, _, _ = fake
    t = gputime.time_cuda(recorder(log), sets=sets, warmup=warmup, repeats=1, lib=lib)
    assert (t.method == gputime.METHOD_BLOCKED) == blocked
    assert any(isinstance(e, tuple) and e[0] == "blocker_for" for e in log) == blocked
    if not blocked:
        assert t.method == gputime.METHOD_EVENTS and t.fallback
        assert t.fallback == gputime.block_refusal(lib, sets, warmup)


def test_block_refusal_reasons(monkeypatch):
    monkeypatch.delenv("CUDA_LAUNCH_BLOCKING", raising=False)
    assert gputime.block_refusal("cupy", 1, 1) == ""
    assert gputime.block_refusal("torch", gputime.BLOCK_MAX_SETS, 3) == ""
    assert "33 sets > 32" in gputime.block_refusal("cupy", 33, 3)
    assert "launch queue" in gputime.block_refusal("cupy", 33, 3)
    assert "warmup=0" in gputime.block_refusal("torch", 1, 0)
    assert "no CUDA stream" in gputime.block_refusal("cpu", 1, 1)


def test_launch_blocking_refuses(monkeypatch):
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    assert "CUDA_LAUNCH_BLOCKING" in gputime.block_refusal("cupy", 1, 1)
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "0")
    assert gputime.block_refusal("cupy", 1, 1) == ""


def test_a_timeout_midway_retimes_every_repeat_with_events(fake):
    log, state, set_blocker = fake
    set_blocker(FakeBlocker(log, state, statuses=[_Blocker.RELEASED, _Blocker.RELEASED,
                                                  _Blocker.TIMED_OUT]))
    t = gputime.time_cuda(recorder(log), sets=2, warmup=1, repeats=5)
    assert t.method == gputime.METHOD_EVENTS and t.held_us is None
    assert "timed out" in t.fallback and "every repeat timed again with events" in t.fallback
    # the two blocked samples (5 us a call) are not mixed in: all 5 repeats are events (25 us)
    assert t.repeats == 5 and t.min_us == t.max_us == t.median_us == pytest.approx(25.0)
    assert sum(1 for e in log if isinstance(e, tuple) and e[0] == "block") == 3


def test_a_blocker_that_never_ran_or_cannot_be_queued_falls_back(fake):
    log, state, set_blocker = fake
    set_blocker(FakeBlocker(log, state, statuses=[_Blocker.PENDING]))
    t = gputime.time_cuda(recorder(log), warmup=1, repeats=3)
    assert t.method == gputime.METHOD_EVENTS and "did not run" in t.fallback
    set_blocker(FakeBlocker(log, state, fail=RuntimeError("bad stream")))
    t = gputime.time_cuda(recorder(log), warmup=1, repeats=3)
    assert t.method == gputime.METHOD_EVENTS and "could not be queued" in t.fallback
    assert "bad stream" in t.fallback and t.repeats == 3


def test_an_unavailable_blocker_says_why(fake):
    log, _, set_blocker = fake
    set_blocker(None, "GPU 0 has no unified addressing")
    t = gputime.time_cuda(recorder(log), warmup=1, repeats=2)
    assert t.method == gputime.METHOD_EVENTS and t.fallback == "GPU 0 has no unified addressing"
    assert t.median_us == pytest.approx(50.0)


def test_fn_raising_while_blocked_releases_and_drains_then_raises(fake):
    log, _, _ = fake
    calls = []

    def fn(i):
        calls.append(i)
        if len(calls) > 1:          # the warm-up call passes, the timed one fails
            raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        gputime.time_cuda(fn, warmup=1, repeats=3)
    after_block = log[[i for i, e in enumerate(log) if isinstance(e, tuple) and e[0] == "block"][0]:]
    assert after_block[-2:] == ["release", "sync"]


def test_host_timings_say_host():
    assert gputime.time_cpu(lambda: None, warmup=0, repeats=3).method == gputime.METHOD_HOST
    ts = gputime.time_cpu_blocks([lambda: None, lambda: None], warmup=0, repeats=2)
    assert [t.method for t in ts] == [gputime.METHOD_HOST] * 2


def test_cpu_blocks_time_each_side_alone_in_whole_blocks(monkeypatch):
    """Each callable runs in runs of block+1 calls (one untimed lead-in, then the timed block),
    never alternating call by call; the blocks go A B B A ...; every timed call is one sample."""
    calls, clock = [], [0.0]
    cost = {"a": 1.0, "b": 3.0}

    def make(name):
        def fn():
            calls.append(name)
            clock[0] += cost[name]
        return fn
    monkeypatch.setattr(gputime.time, "perf_counter", lambda: clock[0])
    ta, tb = gputime.time_cpu_blocks([make("a"), make("b")], warmup=1, repeats=7, block=3)
    assert calls[:2] == ["a", "b"]                         # warm-up
    runs = []
    for name in calls[2:]:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    # blocks of 3, 3 and the last 1, each after one untimed call; order a b | b a | a b
    assert runs == [["a", 4], ["b", 8], ["a", 6], ["b", 2]]
    assert (ta.repeats, tb.repeats) == (7, 7)
    assert ta.median_us == pytest.approx(1e6) and tb.median_us == pytest.approx(3e6)


# ---------------------------------------------------------------- the flag words and the kernel
def test_blocker_flag_protocol_on_host_memory():
    buf = (ctypes.c_uint32 * (_Blocker.NBYTES // 4))()
    ptr = ctypes.addressof(buf)
    words = np.ctypeslib.as_array(buf)
    launches = []
    b = _Blocker(lambda grid, block, args: launches.append((grid, block, args)), ptr, words, 0)
    words[:] = 7
    b.block("cupy", 0.25)
    assert words[_Blocker.RELEASE] == 0 and words[_Blocker.STATUS] == _Blocker.PENDING
    assert words[_Blocker.HELD] == 0 and words[_Blocker.HELD + 1] == 0
    ((grid, block, args),) = launches
    assert grid == (1,) and block == (1,)
    assert all(type(a) is np.uint64 for a in args)        # 8-byte values: pointers and the u64
    assert [int(a) for a in args] == [ptr, ptr + 64, ptr + 128, 250_000_000]
    assert len({int(a) // 64 for a in args[:3]}) == 3     # each word on its own 64-byte line
    assert int(args[2]) % 8 == 0                          # held_ns is a u64
    assert b.outcome()[0] == _Blocker.PENDING
    b.release()
    assert words[_Blocker.RELEASE] == 1
    # what the kernel writes: status 0 and a held time above 2^32 ns
    words[_Blocker.STATUS] = _Blocker.RELEASED
    words[_Blocker.HELD:_Blocker.HELD + 2].view(np.uint64)[0] = 5_000_000_123
    status, held_us = b.outcome()
    assert status == _Blocker.RELEASED and held_us == pytest.approx(5_000_000.123)


def test_kernel_signature_matches_the_host_arguments():
    """The host passes (release, status, held_ns, timeout_ns) as four 8-byte values."""
    src = (_paths.KERNEL_DIR / "timing.cu").read_text()
    m = re.search(r'extern "C" __global__ void fc_block_stream\(([^)]*)\)', src)
    assert m, "fc_block_stream not found in kernels/timing.cu"
    params = [" ".join(p.split()) for p in m.group(1).split(",")]
    assert params == ["const volatile unsigned int* release", "volatile unsigned int* status",
                      "volatile unsigned long long* held_ns", "unsigned long long timeout_ns"]
    assert "%globaltimer" in src and "*status = timed_out" in src
    assert (_Blocker.RELEASED, _Blocker.TIMED_OUT) == (0, 1)   # the kernel's two values


# ---------------------------------------------------------------- the benchmark's use of it
def test_kernel_groups_block_and_network_cases_do_not():
    assert set(benchmark.BLOCKED_GROUPS) == {"ceiling", "gemm", "conv", "pool"}
    listed = [s for g in ("gemm", "pool", "network", "cpu") for s in benchmark.specs(g, quick=True)]
    assert {s.group for s in listed} >= {"gemm", "pool", "network", "cpu"}
    for s in listed:
        assert s.block == (s.group in ("gemm", "pool")), s.label()


def _fake_timing(method, fallback=""):
    return gputime.Timing(10.0, 9.0, 11.0, 3, 1, method, fallback)


@pytest.mark.parametrize("group", ["gemm", "network"])
def test_run_spec_asks_for_blocking_by_group_and_records_the_method(monkeypatch, group):
    seen = {}

    def fake_time_cuda(fn, **kw):
        seen.update(kw)
        return _fake_timing(gputime.METHOD_EVENTS, "sets too many" if kw["block"] else "")
    monkeypatch.setattr(gputime, "time_cuda", fake_time_cuda)
    spec = benchmark.Spec(group, "c", "s", "impl", "baseline", "img/s", 1,
                          lambda: ((lambda i: None), 1, None), lib="cupy")
    res = benchmark.run_spec(spec, benchmark.Options(repeats=3, verbose=False), "r")
    assert res.error is None and seen["block"] == (group == "gemm")
    assert res.method == gputime.METHOD_EVENTS
    assert ("timed with events, not blocked: sets too many" in res.note) == (group == "gemm")


def test_report_header_says_the_method_and_notes_fallbacks(monkeypatch):
    def fake_specs(group, quick=False):
        return [benchmark.Spec(group, f"{group} case", "", impl, "baseline", "img/s", 1,
                               lambda: ((lambda i: None), 1, None), lib="cupy")
                for impl in ("ok", "fell")]

    calls = []

    def fake_time_cuda(fn, **kw):
        calls.append(kw["block"])
        if len(calls) == 2:           # the second case run ('pool case', 'fell') falls back
            return _fake_timing(gputime.METHOD_EVENTS, "why")
        return _fake_timing(gputime.METHOD_BLOCKED if kw["block"] else gputime.METHOD_EVENTS)
    monkeypatch.setattr(gputime, "cuda_available", lambda: True)
    monkeypatch.setattr(benchmark.runner, "specs", fake_specs)
    monkeypatch.setattr(gputime, "time_cuda", fake_time_cuda)
    rep = benchmark.run_benchmarks(benchmark.Options(groups=("pool", "network"), repeats=1, warmup=0,
                                                     verbose=False, check=False))
    assert calls == [True, True, False, False]
    methods = {(r.group, r.impl): r.method for r in rep.results}
    assert methods == {("pool", "ok"): "blocked", ("pool", "fell"): "events",
                       ("network", "ok"): "events", ("network", "fell"): "events"}
    assert rep.header["timing"] == gputime.METHODS_SUMMARY
    assert "timing=kernel cases blocked" in rep.table()
    assert f"| timing | {gputime.METHODS_SUMMARY} |" in rep.markdown()
    (note,) = [n for n in rep.notes if n.startswith("timing:")]
    assert "1 kernel cases timed with events" in note and "pool case fell" in note  # networks not counted


# ---------------------------------------------------------------- on a GPU
_SPIN = r'''
extern "C" __global__ void spin_ns(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
'''


def _spin(us):
    """A launch that keeps the GPU busy for ``us`` microseconds (one thread, %globaltimer)."""
    import cupy as cp
    kernel = cp.RawKernel(_SPIN, "spin_ns")
    arg = (np.uint64(int(us * 1000)),)
    return lambda: kernel((1,), (1,), arg)


@pytest.mark.gpu
def test_gpu_small_cupy_kernel_is_timed_blocked():
    import cupy as cp
    x = cp.ones(1 << 16, dtype=cp.float32)
    y = cp.empty_like(x)
    t = gputime.time_cuda(lambda i: cp.multiply(x, 2.0, out=y), warmup=2, repeats=10)
    assert t.method == gputime.METHOD_BLOCKED, t.fallback
    assert t.fallback == "" and t.held_us is not None and 0 < t.median_us < 1000


@pytest.mark.gpu
def test_gpu_host_sleep_is_not_counted_but_gpu_work_is():
    spin = _spin(300)

    def fn(i):
        time.sleep(0.002)             # host time inside fn: 2000 us
        spin()                        # GPU time: 300 us
    blocked = gputime.time_cuda(fn, warmup=1, repeats=5)
    events = gputime.time_cuda(fn, warmup=1, repeats=5, block=False)
    assert blocked.method == gputime.METHOD_BLOCKED, blocked.fallback
    print(f"\nblocked {blocked.median_us:.0f} us (held {blocked.held_us:.0f} us), "
          f"events {events.median_us:.0f} us")
    assert 250 <= blocked.median_us < 1200       # the spin counted, the sleep not
    assert blocked.held_us >= 1500                # the GPU really waited while the host slept
    assert events.method == gputime.METHOD_EVENTS and events.median_us >= 1800  # the old method counts it


@pytest.mark.gpu
def test_gpu_torch_path_blocks_torchs_current_stream():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    a = torch.ones(1 << 16, device="cuda")
    b = torch.empty_like(a)

    def fn(i):
        time.sleep(0.002)
        torch.mul(a, 2.0, out=b)
    # the default stream, then a side stream (non-blocking: a blocker on any other stream
    # would not hold it, and the sleep would be counted)
    for side in (None, torch.cuda.Stream()):
        with (torch.cuda.stream(side) if side is not None else contextlib.nullcontext()):
            t = gputime.time_cuda(fn, lib="torch", warmup=1, repeats=5)
            e = gputime.time_cuda(fn, lib="torch", warmup=1, repeats=5, block=False)
        assert t.method == gputime.METHOD_BLOCKED, t.fallback
        assert t.median_us < 1000 and t.held_us >= 1500, (side, t)
        assert e.method == gputime.METHOD_EVENTS and e.median_us >= 1800, (side, e)


@pytest.mark.gpu
def test_gpu_timeout_falls_back_and_says_so(monkeypatch):
    import cupy as cp
    monkeypatch.setattr(gputime, "BLOCK_TIMEOUT_S", 0.05)
    x = cp.ones(1 << 16, dtype=cp.float32)
    y = cp.empty_like(x)

    def syncing(i):
        cp.multiply(x, 2.0, out=y)
        cp.cuda.get_current_stream().synchronize()   # waits for the held GPU: only the timeout frees it
    t0 = time.perf_counter()
    t = gputime.time_cuda(syncing, warmup=1, repeats=3)
    assert t.method == gputime.METHOD_EVENTS and "timed out after 0.05 s" in t.fallback
    assert t.repeats == 3 and time.perf_counter() - t0 < 30
    again = gputime.time_cuda(lambda i: cp.multiply(x, 2.0, out=y), warmup=1, repeats=3)
    assert again.method == gputime.METHOD_BLOCKED, again.fallback   # nothing sticky


@pytest.mark.gpu
def test_gpu_most_sets_of_a_handful_of_launches_stay_blocked():
    """The documented bound: BLOCK_MAX_SETS calls of 8 launches each fit the launch queue."""
    import cupy as cp
    xs = [cp.ones(1024, dtype=cp.float32) for _ in range(gputime.BLOCK_MAX_SETS)]

    def fn(i):
        for _ in range(8):
            cp.multiply(xs[i], 1.0, out=xs[i])
    t = gputime.time_cuda(fn, sets=gputime.BLOCK_MAX_SETS, warmup=1, repeats=3)
    assert t.method == gputime.METHOD_BLOCKED, t.fallback


@pytest.mark.gpu
def test_gpu_numba_launches_are_timed_blocked():
    import cupy as cp
    from fastcnn.backend import numba as nb
    why = nb.unavailable_reason()
    if why:
        pytest.skip(why)
    A = cp.random.standard_normal((200, 400), dtype=cp.float32)
    B = cp.random.standard_normal((400, 120), dtype=cp.float32)
    t = gputime.time_cuda(lambda i: nb.matmul(A, B), warmup=2, repeats=10)
    e = gputime.time_cuda(lambda i: nb.matmul(A, B), warmup=2, repeats=10, block=False)
    assert t.method == gputime.METHOD_BLOCKED, t.fallback   # Numba's launch path does not synchronise
    print(f"\nnumba matmul 200x400x120: blocked {t.median_us:.1f} us (held {t.held_us:.0f} us), "
          f"events {e.median_us:.1f} us")
    assert t.median_us <= e.median_us * 1.25


@pytest.mark.gpu
def test_gpu_benchmark_kernel_cases_are_blocked_end_to_end():
    """The implementations of two small cases (CUDA C, Numba, cuBLAS; ours and PyTorch's
    pooling over up to 32 input sets) are timed blocked by the benchmark itself."""
    opts = benchmark.Options(quick=True, repeats=3, warmup=1, verbose=False)
    specs = [s for s in benchmark.specs("gemm", quick=True) if s.case.startswith("lenet.fc1")]
    specs += [s for s in benchmark.specs("pool", quick=True) if s.case == "lenet.pool1 fwd"]
    timed, errors = {}, {}
    for spec in specs:
        res = benchmark.run_spec(spec, opts, "gpu-test")
        if res.error:   # a broken variant is the kernel tests' business; here only the method
            errors[spec.label()] = res.error
            continue
        timed[spec.label()] = (spec.lib, res.method, res.note)
    print("\n" + "\n".join(f"{k}: {v[1]}" for k, v in timed.items()))
    not_blocked = {k: v for k, v in timed.items() if v[1] != gputime.METHOD_BLOCKED}
    assert not not_blocked, not_blocked
    libs = {lib for lib, _, _ in timed.values()}
    assert "cupy" in libs and ("torch" in libs or not gputime.torch_cuda_available()), (timed, errors)
    assert sum(1 for k in timed if "cuBLAS" in k) == 2, (timed, errors)
