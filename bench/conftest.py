"""pytest-benchmark suites over the cases of fastcnn.benchmark (one list of cases for both).

    pytest bench/ --benchmark-only                 # CPU cases here, GPU cases where a GPU is
    pytest bench/ --benchmark-only -k "conv and alexnet"

Each case is one test; ``benchmark.group`` is the case, so pytest-benchmark's table
puts every fastcnn variant beside its baselines.  Before timing, a fastcnn variant's
output is compared with a baseline's (the test fails on a wrong kernel).  GPU cases
are timed by pytest-benchmark on the host (each round launches a pass over the
rotated input sets, then synchronises) and, in ``extra_info``, with CUDA events
(median, the figure fastcnn.benchmark reports, by the same method: kernel-level cases
with gputime's blocking kernel, network cases as the host queues; ``timed_with`` says
which, and why where a kernel case fell back).  GPU cases skip without a GPU.
"""
import os

import pytest

from fastcnn import gputime

HAS_GPU = gputime.cuda_available()

if not HAS_GPU:  # as in tests/conftest.py: Numba kernels in the simulator (set before numba loads)
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

ROUNDS = int(os.environ.get("FASTCNN_BENCH_ROUNDS", "10"))


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (cupy.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    """A test taking ``spec`` runs once per case of its module's GROUPS (ids: case-impl)."""
    if "spec" not in metafunc.fixturenames:
        return
    from fastcnn import benchmark
    specs = [s for group in metafunc.module.GROUPS for s in benchmark.specs(group)]
    metafunc.parametrize("spec", specs, ids=[s.id for s in specs])


@pytest.fixture
def run_case(benchmark):
    """run_case(spec): check, then time one fastcnn.benchmark.Spec with pytest-benchmark."""
    from fastcnn import benchmark as fb

    def go(spec):
        benchmark.group = spec.case
        benchmark.name = spec.impl
        with spec.context():
            fn, sets, check = spec.make()
            if check is not None:
                err = check()
                tol = 1e-2 if spec.precision == "tf32" else 1e-3
                benchmark.extra_info["rel_err"] = err
                assert err <= tol, f"{spec.impl} on {spec.case}: relative error {err:.3g} > {tol}"
            if spec.lib == "cpu":
                benchmark.pedantic(lambda: fn(0), rounds=max(3, ROUNDS // 2), warmup_rounds=1,
                                   iterations=1)
                t = gputime.time_cpu(lambda: fn(0), warmup=0, repeats=3)
            else:
                def one_pass():
                    for i in range(sets):
                        fn(i)
                    gputime.synchronize(spec.lib)
                benchmark.pedantic(one_pass, rounds=ROUNDS, warmup_rounds=2, iterations=1)
                t = gputime.time_cuda(fn, sets=sets, warmup=1, repeats=ROUNDS, lib=spec.lib,
                                      flush=spec.flush, block=spec.block)
        benchmark.extra_info.update(
            calls_per_round=1 if spec.lib == "cpu" else sets,
            median_us=t.median_us, unit=spec.unit,
            figure=fb._figure(spec.unit, spec.work, t.median_us),
            timed_with="perf_counter" if spec.lib == "cpu" else f"CUDA events ({t.method})",
            timing_fallback=t.fallback,
            shape=spec.shape, role=spec.role, precision=spec.precision)
        fb._free_memory(spec.lib)
    return go
