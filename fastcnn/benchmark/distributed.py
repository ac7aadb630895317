"""`fastcnn bench --group distributed`, run as ``mpirun -n N fastcnn bench --group distributed``.

What data-parallel training (fastcnn.distribution) costs, measured on every rank at once:

* one all-reduce (average) of a flat float32 buffer of LeNet-5's and of AlexNet's parameter
  count, through distribution.DataParallel.average: MPI Allreduce on host buffers (the CPU
  reference's path), and NCCL on device buffers (the GPU's path) where every rank has a GPU.
  Algorithm bandwidth = bytes / time; bus bandwidth = algbw * 2(N-1)/N, as nccl-tests defines
  it for all-reduce (what each rank's links carry in a ring; 0 for one rank);
* LeNet-5's training step (batch 200 per rank, Adam) data-parallel, images/s at the global
  batch 200*N, beside N processes each training its own model alone at the same time (no
  all-reduce), images/s summed: the ratio is the scaling efficiency, both measured in this run.

Ranks must make the same calls or they wait for each other forever, so the repeats are fixed
(no time budget): per repeat every rank waits at a barrier, makes the calls and synchronises
the device; the figure is the slowest rank's time, median over the repeats.  Rank 0 alone
prints and writes --json/--markdown/--plot.  A rank that fails stops every rank (MPI_Abort).
"""
from __future__ import annotations

import os
import re
import sys
import time
import uuid

import numpy as np

from .. import benchmark, distribution, gputime

GROUP = "distributed"
ALL_REDUCE_NETS = ("lenet5", "alexnet")
TIMING = ("every rank: barrier, the calls, device sync; the slowest rank's time per call, "
          "median of the repeats (host time)")


def _refuse(message: str) -> int:
    print(f"fastcnn bench: {message}", file=sys.stderr, flush=True)
    return 2


def refusal(args, opts) -> str | None:
    """Why this combination of options cannot run (one line), or None."""
    others = [g for g in opts.groups if g != GROUP]
    if others:
        return (f"--group {GROUP} runs alone (under mpirun every rank must make the same calls); "
                f"run --group {' --group '.join(others)} in a separate command")
    for flag in ("budget", "priority"):
        if getattr(args, flag, None) is not None:
            return (f"--{flag} does not apply to --group {GROUP}: every rank runs every case a fixed "
                    "number of times (set --repeats)")
    if opts.filter:
        try:
            re.compile(opts.filter)
        except re.error as exc:
            return f"--filter {opts.filter!r} is not a regular expression: {exc}"
    return None


def _param_count(net: str) -> int:
    model = benchmark._fastcnn_model(net)     # the models of the network group
    return model.count_params()


def cases(opts) -> list[tuple[str, str]]:
    """(case, what it times) of this group, after --filter."""
    rows = [(f"all-reduce {net} grads", f"float32 buffer of {net}'s parameter count") for net in ALL_REDUCE_NETS]
    rows.append(("lenet5 train data-parallel", f"batch {benchmark.LENET_BATCH} per rank, Adam"))
    rx = re.compile(opts.filter, re.IGNORECASE) if opts.filter else None
    return [c for c in rows if rx is None or rx.search(f"{GROUP} {c[0]}")]


def _time_together(world, fns, sync, warmup: int, repeats: int, calls: int = 1) -> list:
    """One gputime.Timing per fn: fn(i) timed on every rank at once, the fns interleaved
    (A B A B ...).  Every rank makes exactly the same calls: ``warmup`` and ``repeats`` are
    fixed, never cut short by time."""
    from mpi4py import MPI
    for fn in fns:
        for i in range(warmup):
            fn(i)
    sync()
    samples = np.zeros((len(fns), repeats))
    for r in range(repeats):
        for k, fn in enumerate(fns):
            world.comm.Barrier()
            t0 = time.perf_counter()
            for i in range(calls):
                fn(i)
            sync()
            samples[k, r] = (time.perf_counter() - t0) * 1e6 / calls
    world.comm.Allreduce(MPI.IN_PLACE, samples, op=MPI.MAX)   # the slowest rank's time
    return [gputime.Timing(float(np.median(s)), float(s.min()), float(s.max()), repeats, calls,
                           gputime.METHOD_HOST) for s in samples]


def _sync(device: str):
    if device != "cuda":
        return lambda: None
    import cupy
    return lambda: cupy.cuda.Device().synchronize()


def _result(case, shape, impl, role, unit, work, t, run_id, note="", compare_to=None):
    return benchmark.Result(GROUP, case, shape, impl, role, unit, time_us=t.median_us,
                            figure=benchmark._figure(unit, work, t.median_us), compare_to=compare_to,
                            run_id=run_id, repeats=t.repeats, spread=t.spread, note=note, method=t.method)


def _all_reduce(dist, net, count, device, warmup, repeats, run_id) -> list:
    """algbw and busbw rows of one all-reduce (average) of ``count`` float32 on ``device``."""
    n = dist.size
    nbytes = 4 * count
    calls = max(1, min(10, (16 << 20) // nbytes))   # small buffers: several back to back per repeat
    if device == "cuda":
        import cupy
        buf = cupy.random.standard_normal(count, dtype=cupy.float32)
        impl = "nccl device"
    else:
        buf = np.random.default_rng(dist.rank).standard_normal(count, dtype=np.float32)
        impl = "mpi host"
    t, = _time_together(dist.world, [lambda i: dist.average(buf, device)], _sync(device), warmup, repeats, calls)
    case = f"all-reduce {net} grads"
    shape = f"{count:,} float32 ({nbytes / 1e6:.3g} MB), {n} ranks"
    note = f"{calls} all-reduces back to back per repeat" if calls > 1 else ""
    return [_result(case, shape, f"{impl} algbw", "fastcnn", "GB/s", nbytes, t, run_id, note),
            _result(case, shape, f"{impl} busbw", "fastcnn", "GB/s", nbytes * 2 * (n - 1) / n, t, run_id,
                    "algbw * 2(N-1)/N (nccl-tests' all-reduce bus bandwidth)")]


def _train_step(dist, device, warmup, repeats, run_id) -> list:
    """LeNet-5 data-parallel at batch b per rank (global b*N) beside N processes alone at b."""
    n, b = dist.size, benchmark.LENET_BATCH
    mode = "train graph" if device == "cuda" else "train eager"
    alone, _, _ = benchmark._make_fastcnn_net("lenet5", mode, b, device)()
    with dist.scope():   # the model's step averages its gradients over the ranks
        together, _, _ = benchmark._make_fastcnn_net("lenet5", mode, b, device)()

    def data_parallel(i):
        with dist.scope():
            together(i % 4)
    t_dp, t_alone = _time_together(dist.world, [data_parallel, lambda i: alone(i % 4)], _sync(device),
                                   warmup, repeats)
    case, shape = "lenet5 train data-parallel", f"batch {b} per rank x {n} = {b * n}, Adam, {device}"
    baseline = f"{n} x one process"
    return [_result(case, shape, f"fastcnn {n} rank{'s' * (n > 1)} {mode.split()[1]}", "fastcnn", "img/s", b * n, t_dp, run_id,
                    "images/s at the global batch; ratio to the next row = scaling efficiency",
                    compare_to=baseline),
            _result(case, shape, baseline, "baseline", "img/s", b * n, t_alone, run_id,
                    "each rank trains its own model alone (no all-reduce), all at once; images/s summed")]


def _world_header(header: dict, world, device: str) -> None:
    from mpi4py import MPI
    import mpi4py
    header["world_size"] = world.size
    nodes = world.comm.allgather(world.node)
    header["world"] = f"{world.size} ranks on {len(set(nodes))} node(s), {device}"
    header["mpi"] = f"{MPI.Get_library_version().split(',')[0].strip()}, mpi4py {mpi4py.__version__}"
    if device == "cuda":
        from cupy.cuda import nccl
        v = nccl.get_version()
        header["nccl"] = f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    if world.size == 1:
        header["notes"].append(
            "one process (world size 1" + ("" if distribution.launched() else ", not started by mpirun/srun")
            + "): the all-reduce has no peer and the data-parallel step is one process's; "
            "run it as mpirun -n N fastcnn bench --group distributed")
    if world.local_size > (os.cpu_count() or 1):
        header["notes"].append(f"{world.local_size} ranks on {os.cpu_count()} CPU cores of {world.node} "
                               "(oversubscribed): the figures measure contention, not the interconnect")
    if device != "cuda":
        header["notes"].append("no GPU on every rank: MPI on host buffers only, the training step on the CPU reference")


def measure(dist, opts) -> benchmark.Report:
    """Run every selected case on every rank; the report (meaningful on rank 0: the timings
    are every rank's slowest)."""
    from mpi4py import MPI
    world = dist.world
    gpu = world.comm.allreduce(int(world.gpu is not None), op=MPI.MIN)   # NCCL only if every rank has one
    device = "cuda" if gpu else "cpu"
    header = benchmark.environment(world.comm.bcast(opts.run_id or uuid.uuid4().hex[:12], root=0))
    header["mode"] = "quick" if opts.quick else "full"
    header["timing"] = TIMING
    _world_header(header, world, device)
    repeats = opts.repeats or (5 if opts.quick else 20)
    warmup = max(1, opts.warmup if opts.warmup is not None else (1 if opts.quick else 3))
    run_id = header["run_id"]
    selected = {case for case, _ in cases(opts)}
    t0 = time.perf_counter()
    results = []

    def done(rows):
        results.extend(rows)
        if opts.verbose and dist.rank == 0:
            for res in rows:
                print(f"  [{time.perf_counter() - t0:6.1f}s] {GROUP} {res.case} {res.impl}: "
                      f"{res.figure:.4g} {res.unit}", file=sys.stderr, flush=True)
    for net in ALL_REDUCE_NETS:
        if f"all-reduce {net} grads" in selected:
            count = _param_count(net)
            done(_all_reduce(dist, net, count, "cpu", warmup, repeats, run_id))
            if device == "cuda":
                done(_all_reduce(dist, net, count, "cuda", warmup, repeats, run_id))
    if "lenet5 train data-parallel" in selected:
        done(_train_step(dist, device, warmup, repeats, run_id))
    header["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return benchmark.Report(results, header)


def run(args, opts) -> int:
    """The group's command: refusals, then the measurement on every rank, rank 0's report."""
    why = refusal(args, opts)
    if why:
        return _refuse(why)
    if getattr(args, "list", False):
        for case, what in cases(opts):
            print(f"{GROUP:11s} {case:28s} {what}")
        return 0
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return _refuse(f"--group {GROUP} needs mpi4py and an MPI library: pip install 'fastcnn[mpi]' "
                       "(Debian: apt-get install openmpi-bin libopenmpi-dev first)")
    if not cases(opts):
        return _refuse(f"--filter {opts.filter!r} matches no case of --group {GROUP}")
    dist = distribution.DataParallel()
    try:
        report = measure(dist, opts)
    except Exception as exc:
        if dist.size > 1:
            distribution.abort(exc)       # the other ranks would wait for this one forever
        print(f"fastcnn bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if dist.rank:
        return 0
    return benchmark.emit(report, args)
