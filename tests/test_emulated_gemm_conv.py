"""kernels/gemm.cu and kernels/conv.cu run on the CPU (tests/cuda_emu.py), through
fastcnn/backend/cuda/gemm.py and conv.py's own entry points, against the reference.

Every variant that gemm.py and conv.py register is called as a user calls it, with
NumPy arrays inside guard zones standing in for CuPy arrays: the module's argument
checks, launch plan (tiles, split-K, grid-stride grids) and the CUDA C kernels
themselves run, only the GPU is replaced (``cuda_emu.patch_backend``).  Two layouts:
every array 256-byte aligned with the plan of a 132-SM card, and every array 4 bytes
off (the float4 paths off) with the plan of an 8-SM card and grid-stride grids capped
at 3 blocks (so their loops go round).  Relative error in norm <= 1e-4 against
float64, outputs NaN-poisoned, guard zones intact.

GEMM: matmul in the four transpose forms and dense_forward (bias + ReLU, and neither)
on 1x1x1, 5x7x3, 130x129x17, 132x136x24 (float4 loads), 36x96x20 and a K of 2101 that
takes the split-K path.  Convolution: forward (bias + ReLU, and neither),
backward-data and backward-weights on strides 1-4, symmetric and asymmetric
paddings, kernels 1x1 to 11x11, C in {1, 3, 4, 6, 96}, K up to 130, batch 1 and 2,
an AlexNet-conv1-like layer (31x31x3 -> 96, 11x11/4) and a weight gradient that
takes the split-K path.  Last, the emulator itself: it refuses wrong argument types
and reports a barrier that not every thread reaches.

    pytest tests/test_emulated_gemm_conv.py
"""
import numpy as np
import pytest

import cuda_emu
from helpers import assert_close, rand

from fastcnn.backend import checks
from fastcnn.backend import reference as ref
from fastcnn.backend import registry
from fastcnn.backend.cuda import conv, gemm

TOL = 1e-4
V0 = (0, 0, 0, 0)
# (name, guard shift, SM count, grid-stride cap)
LAYOUTS = [("aligned-132sm", 0, 132, None), ("misaligned-8sm", 1, 8, 3)]


def _variants(op, module):
    """The variants of ``op`` that ``module`` registers (picks up new ones by itself)."""
    return [v for v in registry.variants(op, "cuda") if registry.lookup(op, v).fn.__module__ == module.__name__]


@pytest.fixture(params=LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def emulated(request, monkeypatch):
    """(guarded arrays, launch log) with fastcnn.backend.cuda running on the emulator."""
    _, shift, sms, cap = request.param
    cuda_emu.prebuild(("gemm.cu", gemm.NAME_EXPRESSIONS), ("conv.cu", getattr(conv, "NAME_EXPRESSIONS", ())))
    guarded, log = cuda_emu.Guarded(shift=shift), []
    cuda_emu.patch_backend(monkeypatch, guarded, sms=sms, grid_cap=cap, log=log)
    yield guarded, log
    assert guarded.intact(), f"a kernel wrote outside its array: {log}"


def _f64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


# ---------------------------------------------------------------- GEMM

GEMM_SHAPES = [(1, 1, 1), (5, 7, 3), (130, 129, 17), (132, 136, 24), (36, 96, 20), (33, 65, 2101)]
SPLIT_K = (33, 65, 2101)  # K >= 1024 on one 128x128 tile: split-K on 8 SMs and on 132


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", _variants("matmul", gemm))
def test_matmul(emulated, variant, shape):
    guarded, log = emulated
    M, N, K = shape
    rng = np.random.default_rng(M * 7 + N * 3 + K)
    fn = registry.get("matmul", variant).fn
    for ta in (False, True):
        for tb in (False, True):
            a = guarded.wrap(rand(rng, *((K, M) if ta else (M, K))))
            b = guarded.wrap(rand(rng, *((N, K) if tb else (K, N))))
            expected = ref.matmul(*_f64(a, b), ta, tb)
            assert_close(fn(a, b, ta, tb), expected, TOL, f"matmul/{variant} {shape} trans {ta, tb}")
            out = guarded.empty((M, N))
            assert fn(a, b, ta, tb, out=out) is out
            assert_close(out, expected, TOL, f"matmul/{variant} {shape} trans {ta, tb} out=")
    if variant == "tiled" and shape == SPLIT_K:
        assert any(name == "gemm_splitk_reduce" for name, _, _ in log), f"split-K not taken: {log}"


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", _variants("dense_forward", gemm))
def test_dense_forward_bias_relu(emulated, variant, shape):
    guarded, log = emulated
    M, N, K = shape
    rng = np.random.default_rng(M + N + K)
    fn = registry.get("dense_forward", variant).fn
    x, w, b = (guarded.wrap(rand(rng, *s)) for s in ((M, K), (K, N), (N,)))
    for bias, relu in ((b, True), (None, False), (b, False)):
        expected = ref.dense_forward(*_f64(x, w, bias), relu)
        assert_close(fn(x, w, bias, relu), expected, TOL, f"dense_forward/{variant} {shape} bias relu {relu}")
    if variant == "tiled" and shape == SPLIT_K:  # the epilogue then runs in the reduce
        assert any(name == "gemm_splitk_reduce" for name, _, _ in log), f"split-K not taken: {log}"


# ---------------------------------------------------------------- convolution

# (N, H, W, C, K, R, S, stride, padding)
CONV_CASES = [
    (1, 5, 5, 1, 1, 1, 1, (1, 1), V0),
    (2, 15, 16, 4, 8, 1, 1, (2, 2), V0),                   # 1x1, stride 2
    (2, 9, 7, 3, 5, 3, 3, (1, 1), (1, 1, 1, 1)),
    (1, 11, 13, 4, 8, 3, 2, (2, 3), (1, 0, 2, 1)),
    (1, 10, 9, 6, 3, 4, 2, (3, 2), (2, 1, 0, 1)),
    (2, 17, 19, 3, 7, 11, 11, (4, 4), (2, 3, 1, 0)),
    (1, 8, 8, 1, 1, 7, 7, (1, 1), (3, 3, 3, 3)),
    (2, 14, 14, 6, 16, 5, 5, (1, 1), V0),                  # LeNet-5 conv2
    (1, 9, 9, 96, 96, 5, 5, (2, 2), (2, 1, 1, 2)),
    (2, 7, 6, 96, 40, 3, 3, (1, 1), (1, 1, 1, 1)),
    (1, 6, 7, 4, 96, 2, 2, (1, 2), (0, 1, 1, 0)),
    (1, 23, 21, 6, 1, 11, 11, (3, 4), (5, 0, 2, 3)),
    (2, 12, 13, 6, 130, 3, 3, (4, 3), (0, 2, 1, 0)),        # K = 130: two column tiles
    (1, 31, 31, 3, 96, 11, 11, (4, 4), V0),                # AlexNet conv1, shrunk
    (2, 24, 24, 4, 6, 3, 3, (1, 1), (1, 1, 1, 1)),          # N*P*Q = 1152: split-K weight gradient
]
WGRAD_SPLIT = CONV_CASES[-1]


def conv_id(c):
    N, H, W, C, K, R, S, st, pad = c
    return f"N{N}-{H}x{W}x{C}-K{K}-{R}x{S}-s{st[0]}{st[1]}-p{''.join(map(str, pad))}"


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
@pytest.mark.parametrize("variant", _variants("conv2d_forward", conv))
def test_conv(emulated, variant, case):
    guarded, log = emulated
    N, H, W, C, K, R, S, stride, padding = case
    rng = np.random.default_rng(N * H * W + C * K + R)
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K, scale=(R * S * C) ** -0.5), rand(rng, K)
    P, Q = checks.output_size((H, W), (R, S), stride, padding, "kernel")
    dy = rand(rng, N, P, Q, K)
    x, w, b, dy = (guarded.wrap(a) for a in (x, w, b, dy))
    what = f"{variant} {conv_id(case)}"

    fwd = registry.get("conv2d_forward", variant).fn
    for bias, relu in ((b, True), (None, False)):
        expected = ref.conv2d_forward(*_f64(x, w, bias), stride, padding, relu)
        assert_close(fwd(x, w, bias, stride, padding, relu), expected, TOL, f"forward {what} relu {relu}")

    if variant in _variants("conv2d_backward_data", conv):
        out = guarded.empty(x.shape)
        dx = registry.get("conv2d_backward_data", variant).fn(dy, w, x.shape, stride, padding, out=out)
        assert dx is out, f"backward_data {what}: the result is not the out= buffer"
        assert_close(dx, ref.conv2d_backward_data(*_f64(dy, w), x.shape, stride, padding), TOL,
                     f"backward_data {what}")

    if variant in _variants("conv2d_backward_weights", conv):
        out = guarded.empty(w.shape)
        dw = registry.get("conv2d_backward_weights", variant).fn(x, dy, w.shape, stride, padding, out=out)
        assert dw is out, f"backward_weights {what}: the result is not the out= buffer"
        assert_close(dw, ref.conv2d_backward_weights(*_f64(x, dy), w.shape, stride, padding), TOL,
                     f"backward_weights {what}")
        if case == WGRAD_SPLIT:
            assert any(name == "gemm_splitk_reduce" for name, _, _ in log), f"split-K not taken: {log}"


# ---------------------------------------------------------------- the emulator itself

SELF_TEST = r"""
extern "C" __global__ void __launch_bounds__(64) block_sum(const float* x, float* out, int n, long long tag) {
    __shared__ float s[64];
    const int t = threadIdx.x + blockDim.x * threadIdx.y;
    s[t] = t < n ? x[blockIdx.x * 64 + t] : 0.0f;
    __syncthreads();
    if (t == 0) {
        float acc = 0.0f;
        for (int i = 0; i < 64; ++i) acc += s[i];
        out[blockIdx.x] = acc + (float)tag;
    }
}
extern "C" __global__ void early_return(float* out) {
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}
"""


def test_emulator_checks_arguments_and_barriers():
    emu = cuda_emu.load_source("self_test.cu", SELF_TEST)
    assert emu.signature("block_sum") == ["*float32", "*float32", "int32", "int64"]
    x, out = np.arange(128, dtype=np.float32), np.zeros(2, np.float32)
    k = emu.function("block_sum")
    k((2,), (16, 4), (x, out, np.int32(64), np.int64(1)))  # a 2-D block
    assert out.tolist() == [x[:64].sum() + 1, x[64:].sum() + 1]
    bad = [((x, out, 64, np.int64(0)), "np.int32"),                          # a Python int
           ((x, out, np.int32(64), np.int32(0)), "np.int64"),                # int32 for long long
           ((x.astype(np.float64), out, np.int32(64), np.int64(0)), "float64"),
           ((x[::2], out, np.int32(64), np.int64(0)), "C-contiguous"),
           ((x, out, np.int32(64)), "takes 4 arguments")]
    for args, match in bad:
        with pytest.raises(AssertionError, match=match):
            k((2,), (64,), args)
    with pytest.raises(AssertionError, match="launch_bounds"):
        k((2,), (128,), (x, out, np.int32(64), np.int64(0)))
    with pytest.raises(AssertionError, match="without guard zones"):
        emu.function("block_sum", guarded=cuda_emu.Guarded())((2,), (64,), (x, out, np.int32(64), np.int64(0)))
    with pytest.raises(AssertionError, match="__syncthreads"):
        emu.function("early_return")((1,), (32,), (np.zeros(32, np.float32),))
    k((1,), (64,), (x, out, np.int32(64), np.int64(0)))  # threads left stuck by the failure start afresh
    assert out[0] == x[:64].sum()
