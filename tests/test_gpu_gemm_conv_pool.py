"""GEMM, convolution and max-pool CUDA variants (gemm.py, conv.py, pool.py) against the reference.

Every registered CUDA variant of each op runs each case of the table below with
its result written into a NaN-poisoned ``out=`` buffer (argmax poisoned with 255),
is compared with fastcnn.backend.reference (float64 for GEMM/conv, relative error
in norm <= 1e-4; max-pool exact: y, argmax and dx bit for bit), then runs again
without ``out=`` and must give the same bits (allocation path, determinism of the
split-K reductions).  TF32 variants (precision "tf32", fetched under precision "high")
take the same inputs, and the reference multiplies them rounded to tf32
(reference.round_tf32, cvt.rna's rule) in float64: the kernel then differs from it only
by fp32 accumulation, and the same 1e-4 holds.  Bad inputs must be refused before any
launch.

    pytest tests/test_gpu_gemm_conv_pool.py      # the gpu tests skip without a GPU
"""
import contextlib

import numpy as np
import pytest

from helpers import assert_close, rand, same4

from fastcnn import config
from fastcnn.backend import checks
from fastcnn.backend import reference as ref
from fastcnn.backend import registry
import fastcnn.backend.cuda  # noqa: F401  (registers the CUDA variants; no GPU needed)

gpu = pytest.mark.gpu
TOL = 1e-4


V0 = (0, 0, 0, 0)
# One line per case.  matmul: (M, N, K, trans_a, trans_b); dense: (batch, in, out, bias, relu);
# conv: (N, H, W, C, K, R, S, stride, padding, relu); pool: (N, H, W, C, pool, stride, padding).
CASES = [
    ("matmul", (1, 1, 1, 0, 0)), ("matmul", (7, 129, 1, 0, 1)), ("matmul", (129, 7, 33, 1, 0)),
    ("matmul", (1, 130, 7, 1, 1)), ("matmul", (131, 133, 9, 0, 0)), ("matmul", (257, 255, 129, 0, 1)),
    ("matmul", (300, 257, 1030, 1, 0)), ("matmul", (9, 5, 4099, 0, 0)), ("matmul", (512, 512, 512, 0, 0)),
    ("matmul", (200, 400, 120, 0, 1)),   # LeNet fc1 dgrad: dy (200,120) @ w (400,120)^T
    ("matmul", (400, 120, 200, 1, 0)),   # LeNet fc1 wgrad: x^T (400,200) @ dy (200,120)
    ("dense", (200, 400, 120, 1, 1)), ("dense", (200, 120, 84, 1, 1)), ("dense", (200, 84, 10, 1, 0)),
    ("dense", (1, 3, 1, 0, 0)), ("dense", (33, 7, 130, 1, 1)), ("dense", (2, 9216, 4096, 1, 1)),
    ("conv", (1, 5, 5, 1, 1, 1, 1, (1, 1), V0, False)),
    ("conv", (2, 9, 7, 3, 5, 3, 3, (1, 1), (1, 1, 1, 1), True)),
    ("conv", (1, 11, 13, 4, 8, 3, 2, (2, 3), (1, 0, 2, 1), True)),
    ("conv", (1, 10, 9, 5, 3, 4, 2, (3, 2), (2, 1, 0, 1), False)),
    ("conv", (3, 17, 19, 3, 7, 11, 11, (4, 4), (2, 3, 1, 0), True)),
    ("conv", (1, 12, 12, 16, 20, 2, 2, (2, 2), (0, 1, 0, 1), True)),
    ("conv", (2, 17, 15, 12, 130, 3, 3, (1, 1), (1, 1, 1, 1), True)),
    ("conv", (1, 8, 8, 1, 1, 7, 7, (1, 1), (3, 3, 3, 3), False)),
    ("conv", (4, 40, 40, 2, 4, 3, 3, (1, 1), (1, 1, 1, 1), False)),         # split-K wgrad
    ("conv", (200, 28, 28, 1, 6, 5, 5, (1, 1), same4(28, 28, 5, 5, 1, 1), True)),  # LeNet conv1
    ("conv", (200, 14, 14, 6, 16, 5, 5, (1, 1), V0, True)),                 # LeNet conv2
    ("conv", (2, 227, 227, 3, 96, 11, 11, (4, 4), V0, True)),               # AlexNet conv1
    ("conv", (2, 27, 27, 96, 256, 5, 5, (1, 1), same4(27, 27, 5, 5, 1, 1), True)),  # conv2
    ("conv", (2, 13, 13, 256, 384, 3, 3, (1, 1), (1, 1, 1, 1), True)),      # conv3
    ("conv", (2, 13, 13, 384, 384, 3, 3, (1, 1), (1, 1, 1, 1), True)),      # conv4
    ("conv", (2, 13, 13, 384, 256, 3, 3, (1, 1), (1, 1, 1, 1), True)),      # conv5
    ("pool", (1, 5, 5, 1, (2, 2), (2, 2), V0)), ("pool", (2, 9, 11, 3, (3, 3), (2, 2), V0)),
    ("pool", (1, 8, 8, 8, (3, 3), (2, 2), (1, 1, 1, 1))), ("pool", (2, 7, 9, 4, (2, 3), (1, 2), (1, 0, 0, 2))),
    ("pool", (1, 6, 5, 5, (4, 4), (3, 4), (3, 2, 1, 3))), ("pool", (3, 10, 10, 12, (1, 1), (1, 1), V0)),
    ("pool", (200, 28, 28, 6, (2, 2), (2, 2), V0)), ("pool", (200, 10, 10, 16, (2, 2), (2, 2), V0)),  # LeNet
    ("pool", (2, 55, 55, 96, (3, 3), (2, 2), V0)), ("pool", (2, 27, 27, 256, (3, 3), (2, 2), V0)),     # AlexNet
    ("pool", (2, 13, 13, 256, (3, 3), (2, 2), V0)),
]
OPS = {"matmul": ["matmul"], "dense": ["dense_forward"],
       "conv": ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights"],
       "pool": ["maxpool_forward", "maxpool_backward"]}
PARAMS = [pytest.param(op, v, i, id=f"{op}-{v}-{kind}{case}".replace(" ", ""))
          for i, (kind, case) in enumerate(CASES) for op in OPS[kind] for v in registry.variants(op, "cuda", dtype="float32")]


def _cp():
    import cupy
    return cupy


def _poisoned(shape, dtype=np.float32):
    a = _cp().empty(shape, dtype=dtype)
    a.fill(255 if dtype == np.uint8 else np.nan)
    return a


def _f64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


def _t64(*arrays):
    """_f64 of the GEMM/convolution operands rounded to tf32 (1-D ones, biases, as they are)."""
    return [None if a is None else (ref.round_tf32(a) if a.ndim > 1 else a).astype(np.float64) for a in arrays]


def _fn(op, variant):
    """The variant's function, fetched at the precision it needs."""
    tf32 = registry.lookup(op, variant).precision == "tf32"
    with config.float32_matmul_precision("high") if tf32 else contextlib.nullcontext():
        return registry.get(op, variant).fn


def _problem(op, case, rng, tf32=False):
    """(host args, reference outputs as a tuple, exact?) for one op on one case; ``tf32``: the
    reference on the operands rounded to tf32."""
    f64 = _t64 if tf32 else _f64
    if op == "matmul":
        M, N, K, ta, tb = case
        a = rand(rng, *((K, M) if ta else (M, K)))
        b = rand(rng, *((N, K) if tb else (K, N)))
        return (a, b, bool(ta), bool(tb)), (ref.matmul(*f64(a, b), ta, tb),), False
    if op == "dense_forward":
        B, I, O, bias, relu = case
        x, w, b = rand(rng, B, I), rand(rng, I, O, scale=I ** -0.5), rand(rng, O) if bias else None
        return (x, w, b, bool(relu)), (ref.dense_forward(*f64(x, w, b), relu),), False
    if op.startswith("conv"):
        N, H, W, C, K, R, S, stride, padding, relu = case
        x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K, scale=(R * S * C) ** -0.5), rand(rng, K)
        P, Q = checks.output_size((H, W), (R, S), stride, padding, "kernel")
        dy = rand(rng, N, P, Q, K)
        if op == "conv2d_forward":
            return (x, w, b, stride, padding, relu), (ref.conv2d_forward(*f64(x, w, b), stride, padding, relu),), False
        if op == "conv2d_backward_data":
            return (dy, w, x.shape, stride, padding), (ref.conv2d_backward_data(*f64(dy, w), x.shape, stride, padding),), False
        return (x, dy, w.shape, stride, padding), (ref.conv2d_backward_weights(*f64(x, dy), w.shape, stride, padding),), False
    N, H, W, C, pool, stride, padding = case
    x = rand(rng, N, H, W, C)
    x.reshape(-1)[1:x.size:7] = x.reshape(-1)[0:x.size - 1:7]  # ties: the first maximum must win
    y, am = ref.maxpool_forward(x, pool, stride, padding)
    if op == "maxpool_forward":
        return (x, pool, stride, padding), (y, am), True
    dy = rand(rng, *y.shape)
    return (dy, am, x.shape, pool, stride, padding), (ref.maxpool_backward(dy, am, x.shape, pool, stride, padding),), True


@gpu
@pytest.mark.parametrize("op,variant,index", PARAMS)
def test_variant_matches_reference(op, variant, index):
    cp = _cp()
    kind, case = CASES[index]
    tf32 = registry.lookup(op, variant).precision == "tf32"
    args, expected, exact = _problem(op, case, np.random.default_rng(index), tf32)
    fn = _fn(op, variant)
    dev = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    outs = tuple(_poisoned(e.shape, e.dtype if e.dtype == np.uint8 else np.float32) for e in expected)
    try:
        got = fn(*dev, out=outs if len(outs) > 1 else outs[0])
    except registry.NotApplicable as exc:
        pytest.skip(f"{variant} does not handle this shape: {exc}")
    got = got if isinstance(got, tuple) else (got,)
    for g, o, e in zip(got, outs, expected):
        assert g is o, f"{op}/{variant}: the result is not the out= buffer"
        if exact:
            host = cp.asnumpy(g)
            assert np.array_equal(host, e), f"{op}/{variant} {case}: {np.sum(host != e)} elements differ"
        else:
            assert_close(cp.asnumpy(g), e, TOL, f"{op}/{variant} {case}")
    again = fn(*dev)
    again = again if isinstance(again, tuple) else (again,)
    for a, g in zip(again, got):
        assert np.array_equal(cp.asnumpy(a), cp.asnumpy(g)), f"{op}/{variant} {case}: differs from run to run"


# ---------------------------------------------------------------- bad inputs, refused before launch

def _calls(xp, dtype=np.float32, bad=None):
    """One call per op on small valid inputs built with xp; ``bad`` replaces one input."""
    rng = np.random.default_rng(0)

    def arr(*shape, name=None, dt=dtype):
        a = xp.asarray(rand(rng, *shape).astype(dt))
        return bad(name, a) if bad else a
    am = xp.zeros((1, 3, 3, 4), dtype=np.uint8)
    return {
        "matmul": lambda f: f(arr(5, 3, name="a"), arr(3, 4, name="b")),
        "dense_forward": lambda f: f(arr(5, 3, name="x"), arr(3, 4, name="w"), arr(4, name="b"), True),
        "conv2d_forward": lambda f: f(arr(1, 6, 6, 4, name="x"), arr(3, 3, 4, 2, name="w"), None, (1, 1), V0, False),
        "conv2d_backward_data": lambda f: f(arr(1, 4, 4, 2, name="dy"), arr(3, 3, 4, 2, name="w"),
                                            (1, 6, 6, 4), (1, 1), V0),
        "conv2d_backward_weights": lambda f: f(arr(1, 6, 6, 4, name="x"), arr(1, 4, 4, 2, name="dy"),
                                               (3, 3, 4, 2), (1, 1), V0),
        "maxpool_forward": lambda f: f(arr(1, 6, 6, 4, name="x"), (2, 2), (2, 2), V0),
        "maxpool_backward": lambda f: f(arr(1, 3, 3, 4, name="dy"), am, (1, 6, 6, 4), (2, 2), (2, 2), V0),
    }


# float32 calls: the variants taking float32 (the bfloat16-only tc_bf16 ones are checked in
# tests/test_emulated_tc_bf16.py)
BAD_PARAMS = [pytest.param(op, v, id=f"{op}-{v}") for op in _calls(np)
              for v in registry.variants(op, "cuda", dtype="float32")]


@pytest.mark.parametrize("op,variant", BAD_PARAMS)
def test_numpy_input_refused(op, variant):
    """A host array is a TypeError that says to move it to the GPU (runs without a GPU)."""
    pytest.importorskip("cupy")  # a CPU-only install has no GPU arrays to ask for
    with pytest.raises(TypeError, match="CuPy array"):
        _calls(np)[op](_fn(op, variant))


@gpu
@pytest.mark.parametrize("op,variant", BAD_PARAMS)
def test_bad_device_inputs_refused(op, variant):
    cp, fn = _cp(), _fn(op, variant)
    _calls(cp)[op](fn)  # the valid call works
    with pytest.raises(TypeError, match="float32"):
        _calls(cp, dtype=np.float64)[op](fn)
    with pytest.raises(ValueError, match="C-contiguous"):  # every array (bias aside) in Fortran order
        _calls(cp, bad=lambda name, a: cp.asfortranarray(a) if a.ndim > 1 else a)[op](fn)
    if op.startswith("conv"):
        wrong_c = {"conv2d_forward": lambda: fn(cp.ones((1, 6, 6, 3), np.float32), cp.ones((3, 3, 4, 2), np.float32),
                                                None, (1, 1), V0, False),
                   "conv2d_backward_data": lambda: fn(cp.ones((1, 4, 4, 2), np.float32),
                                                      cp.ones((3, 3, 4, 2), np.float32), (1, 6, 6, 3), (1, 1), V0),
                   "conv2d_backward_weights": lambda: fn(cp.ones((1, 6, 6, 3), np.float32),
                                                         cp.ones((1, 4, 4, 2), np.float32), (3, 3, 4, 2), (1, 1), V0)}
        with pytest.raises(ValueError, match=r"channel mismatch.*3.*4|channel mismatch.*4.*3"):
            wrong_c[op]()
    if op == "maxpool_backward":
        with pytest.raises(TypeError, match="uint8"):
            fn(cp.ones((1, 3, 3, 4), np.float32), cp.zeros((1, 3, 3, 4), np.int32), (1, 6, 6, 4), (2, 2), (2, 2), V0)
