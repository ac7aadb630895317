"""A small GPU workload for compute-sanitizer: one LeNet-5 training step, then every variant once.

    compute-sanitizer --tool memcheck  python3 bench/sanitize_step.py
    compute-sanitizer --tool racecheck python3 bench/sanitize_step.py --cuda-only

1. one LeNet-5 training step (batch 8, Adam) on the 'cuda' backend, eager;
2. every registered variant of every GPU primitive (fastcnn.kernels) once, at a
   small shape with odd sizes, on fresh random inputs: CUDA C variants first,
   then the Numba ones (their JIT compile is the slow part under a time limit;
   --cuda-only leaves them out, for racecheck, which is several times slower).
   A variant that does not handle a shape (registry.NotApplicable) skips it.

--cuda-only also turns autotuning off (FASTCNN_AUTOTUNE=0): the `auto` variant
times every variant five times per new shape, which under racecheck costs many
slow launches and checks nothing that the one call per variant of step 2 misses.

CuPy's memory pool is switched off (each array is its own cudaMalloc) so that
memcheck sees an overrun past an array's end instead of landing in a pooled
neighbour.  Prints one line per step/variant and 'SANITIZE DONE ok=N failed=M'
last; exits 1 if anything raised.  Run from the repository root (or with
PYTHONPATH pointing at it).
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from fastcnn import dtypes  # noqa: E402


def _inputs(cp, rng):
    """Argument builders per primitive: small shapes, odd sizes, random data (never zeros)."""
    f32 = lambda *s: cp.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    from fastcnn import kernels as registry  # every variant registered
    N, H, W, C, K = 2, 9, 11, 3, 5
    conv_cfgs = [((1, 1), (1, 1, 1, 1), 3), ((2, 2), (0, 0, 0, 0), 3), ((4, 4), (0, 0, 0, 0), 5)]

    def conv(pas):
        calls = []
        for stride, pad, R in conv_cfgs:
            P = (H + pad[0] + pad[1] - R) // stride[0] + 1
            Q = (W + pad[2] + pad[3] - R) // stride[1] + 1
            x, w, dy = f32(N, H, W, C), f32(R, R, C, K), f32(N, P, Q, K)
            if pas == "fwd":
                calls.append((x, w, f32(K), stride, pad, True))
            elif pas == "dgrad":
                calls.append((dy, w, x.shape, stride, pad))
            else:
                calls.append((x, dy, w.shape, stride, pad))
        return calls

    def pool_bwd():
        calls = []
        for pool, stride in (((2, 2), (2, 2)), ((3, 3), (2, 2))):
            x = f32(N, H, W, 6)
            _, argmax = registry.get("maxpool_forward").fn(x, pool, stride, (0, 0, 0, 0))
            P, Q = argmax.shape[1:3]
            calls.append((f32(N, P, Q, 6), argmax, x.shape, pool, stride, (0, 0, 0, 0)))
        return calls

    def lrn_bwd():
        x = f32(N, 5, 5, 8)
        y, scale = registry.get("lrn_forward").fn(x, 5, 1e-4, 0.75, 2.0)
        return [(f32(N, 5, 5, 8), x, y, scale, 5, 1e-4, 0.75, 2.0)]

    def step():
        return cp.asarray(np.array([3], np.int32))

    n = 1001
    return {
        "conv2d_forward": lambda: conv("fwd"),
        "conv2d_backward_data": lambda: conv("dgrad"),
        "conv2d_backward_weights": lambda: conv("wgrad"),
        "maxpool_forward": lambda: [(f32(N, H, W, 6), (2, 2), (2, 2), (0, 0, 0, 0)),
                                    (f32(N, H, W, 8), (3, 3), (2, 2), (0, 0, 0, 0))],
        "maxpool_backward": pool_bwd,
        "matmul": lambda: [(f32(17, 33), f32(33, 9), False, False), (f32(33, 17), f32(33, 9), True, False),
                           (f32(17, 33), f32(9, 33), False, True), (f32(70, 130), f32(130, 66), False, False)],
        "dense_forward": lambda: [(f32(7, 33), f32(33, 9), f32(9), True), (f32(7, 33), f32(33, 9), None, False)],
        "bias_grad": lambda: [(f32(7, 9),), (f32(2, 5, 5, 6),)],
        "relu_forward": lambda: [(f32(n),)],
        "relu_backward": lambda: [(f32(n), f32(n))],
        "leaky_relu_forward": lambda: [(f32(n), 0.3)],
        "leaky_relu_backward": lambda: [(f32(n), f32(n), 0.3)],
        "softmax": lambda: [(f32(7, 10),)],
        "softmax_cross_entropy": lambda: [
            (f32(7, 10), cp.asarray(rng.integers(0, 10, 7).astype(np.int32)), cp.zeros(2, cp.float64)),
            (f32(7, 10), cp.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, 7)]),
             cp.zeros(2, cp.float64))],
        "dropout_forward": lambda: [(f32(n), 0.5, 1234, step())],
        "dropout_backward": lambda: [(f32(n), 0.5, 1234, step())],
        "crop_forward": lambda: [(f32(N, 9, 8, 3), 5, 4, True, True, 7, step()),
                                 (f32(N, 9, 8, 3), 5, 4, False, False, 7, step())],
        "crop_backward": lambda: [(f32(N, 5, 4, 3), (N, 9, 8, 3), True, True, 7, step())],
        "pca_noise_forward": lambda: [(f32(N, 5, 4, 3), np.eye(3) * 0.01, 7, step())],
        "lrn_forward": lambda: [(f32(N, 5, 5, 8), 5, 1e-4, 0.75, 2.0)],
        "lrn_backward": lrn_bwd,
        "sgd_update": lambda: [(f32(n), f32(n), f32(n), 0.01, 0.9, False),
                               (f32(n), f32(n), f32(n), 0.01, 0.9, True),
                               (f32(n), f32(n), None, 0.01, 0.0, False, 5e-4)],
        "adam_update": lambda: [(f32(n), f32(n), f32(n), cp.abs(f32(n)), step(), 1e-3, 0.9, 0.999, 1e-7),
                                (f32(n), f32(n), f32(n), cp.abs(f32(n)), step(), 1e-3, 0.9, 0.999, 1e-7, 0.004)],
        "rmsprop_update": lambda: [(f32(n), f32(n), cp.abs(f32(n)), None, None, 1e-3, 0.9, 0.0, 1e-7),
                                   (f32(n), f32(n), cp.abs(f32(n)) + 1, f32(n), f32(n), 1e-3, 0.9, 0.5, 1e-7)],
        "increment": lambda: [(step(),)],
        "add": lambda: [(f32(n), f32(n))],
        "cast": lambda: [(f32(n), "bfloat16"), (f32(n).astype(dtypes.bfloat16), "float32"), (f32(n), "float32")],
        "copy": lambda: [(f32(n), f32(n))],
        "copy_channels": lambda: [(f32(N, 5, 5, 4), f32(N, 5, 5, 7), 1, 2, 3)],
        "gather_rows": lambda: [(f32(5, 7, 3), f32(9, 7, 3), cp.asarray(np.array([8, 0, 3, 3, 1], np.int32))),
                                (cp.zeros(3, cp.int32), cp.arange(9, dtype=cp.int32),
                                 cp.asarray(np.array([2, 9, 4], np.int32)))],   # 9: outside, filled, not read
    }


def _uses_bfloat16(args) -> bool:
    """A bfloat16 array among the arguments, or 'bfloat16' asked for (cast)."""
    return any(getattr(a, "dtype", None) == dtypes.bfloat16 or (isinstance(a, str) and a == "bfloat16")
               for a in args)


def _run_applicable(fn, arg_sets, registry, takes_bfloat16=True) -> None:
    """Call fn on each argument set it handles; shapes it refuses with NotApplicable, and bfloat16
    calls of a float32-only variant, are skipped."""
    ran = 0
    for args in arg_sets:
        if _uses_bfloat16(args) and not takes_bfloat16:
            continue
        try:
            fn(*args)
            ran += 1
        except registry.NotApplicable:
            continue
    if not ran:
        print("       (no small shape here is one this variant handles)", flush=True)


def main() -> int:
    cuda_only = "--cuda-only" in sys.argv[1:]
    if cuda_only:
        os.environ["FASTCNN_AUTOTUNE"] = "0"  # read at each call by fastcnn.backend.cuda.auto
    import cupy as cp
    cp.cuda.set_allocator(None)          # every array its own allocation: memcheck sees overruns
    cp.cuda.set_pinned_memory_allocator(None)
    rng = np.random.default_rng(0)
    ok = failed = 0
    t0 = time.perf_counter()

    def attempt(label, fn):
        nonlocal ok, failed
        try:
            fn()
            cp.cuda.Device().synchronize()
            ok += 1
            print(f"ok     {label}", flush=True)
        except Exception as exc:
            failed += 1
            print(f"FAILED {label}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            traceback.print_exc(limit=2)

    def lenet_step():
        from fastcnn import models
        model = models.lenet5()
        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        model.to("cuda")
        x = cp.asarray(rng.standard_normal((8, 28, 28, 1)).astype(np.float32))
        y = cp.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)])
        model.train_step(x, y)
    attempt("lenet5 train_step batch 8 (default variants)", lenet_step)

    from fastcnn import kernels as registry  # every variant registered
    try:
        builders = _inputs(cp, rng)
        ops = registry.ops()
    except Exception as exc:
        print(f"FAILED listing the variants: {type(exc).__name__}: {exc}", flush=True)
        print(f"SANITIZE DONE ok={ok} failed={failed + 1}", flush=True)
        return 1
    # CUDA C variants first, Numba ones (JIT-compiled in this process: slower) after.
    order = [(v.source != "cuda", op, name) for op in ops for name in registry.variants(op)
             for v in [registry.lookup(op, name)]]
    for _, op, name in sorted(order):  # TF32 variants too (lookup: whatever the precision)
        fn = registry.lookup(op, name).fn
        build = builders.get(op)
        if build is None:
            print(f"skip   {op}:{name} (no small-shape inputs written for it)", flush=True)
            continue
        if cuda_only and registry.lookup(op, name).source != "cuda":
            continue
        takes = "bfloat16" in registry.lookup(op, name).dtypes
        attempt(f"{op}:{name}", lambda fn=fn, build=build, takes=takes: _run_applicable(fn, build(), registry, takes))
    print(f"SANITIZE DONE ok={ok} failed={failed} in {time.perf_counter() - t0:.1f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
