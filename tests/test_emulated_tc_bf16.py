"""The BF16 tensor-core kernels (kernels/gemm_tc.cu, conv_tc.cu: the ``tc_bf16`` variants)
run on the CPU (tests/cuda_emu.py: mma.sync.m16n8k16, ldmatrix (.trans too), cp.async
emulated), through the backend's own entry points (gemm_tc.py, conv_tc.py), against the
reference contract: bfloat16 inputs widened exactly, the product computed in float64, the
bias float32.

The layouts are test_emulated_tc.py's: 256-byte aligned arrays (16-byte cp.async) on a
132-SM plan with copies made at once; the same on an 8-SM plan (split-K more often) with
copies landing only at their cp.async.wait_group; and every array one element (2 bytes)
off, where the loaders copy element by element and the epilogue stores single bf16.
Outputs are NaN-poisoned (guarded.empty), guard zones must stay intact, and the ldmatrix
fragment loads (plain and .trans) must be free of bank conflicts.

Tolerance, derived: a bf16 x bf16 product has at most 16 significant bits, so it is exact
in fp32, and the kernel multiplies exactly the values the reference multiplies.  They
differ by the kernel's fp32 accumulation only: one rounding (unit u = 2^-24) per 16-deep
mma step, plus the split-K reduce and the bias: an fp32 output satisfies
    |got - exact| <= E = 2 (ceil(depth/16) + 4) u (|A| @ |B| (+ |b|))    elementwise
(the factor 2 leaves room for a tensor core's own rounding inside a step), depth the GEMM's
K (R*S*C forward, R*S*K backward-data, N*P*Q backward-weights).  A bfloat16 output is that
fp32 value rounded once to nearest: half an ulp of bf16 (7 stored bits) is at most 2^-8 of
the value, so
    |got - exact| <= E + 2^-8 (|exact| + E).
A kernel that truncated instead of rounding, or rounded twice, misses that bound for
about half the elements; a wrong fragment layout misses it by far.
"""
import math

import numpy as np
import pytest

import cuda_emu
import test_emulated_gemm_conv
from helpers import rand
from test_emulated_gemm_conv import V0, conv_id
from test_emulated_tc import ALEXNET, CONV_CASES, GEMM_SHAPES, SPLIT_K, WGRAD_SPLIT, emulated  # noqa: F401

from fastcnn import dtypes
from fastcnn.backend import checks
from fastcnn.backend import reference as ref
from fastcnn.backend import registry
from fastcnn.backend.cuda import conv, conv_tc, gemm, gemm_tc

U = 2.0 ** -24
U_BF16 = 2.0 ** -8
OPS = ("matmul", "dense_forward", "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights")


def tc(op):
    """The tc_bf16 variant of ``op``, as a bfloat16 call reaches it (the op's bfloat16 default)."""
    return registry.get(op, "tc_bf16", dtype="bfloat16").fn


def test_every_bf16_variant_is_driven_here():
    assert {op: registry.variants(op, source="cuda", precision="bf16") for op in registry.ops()
            if registry.variants(op, source="cuda", precision="bf16")} == {op: ["tc_bf16"] for op in OPS}
    for op in OPS:
        assert registry.lookup(op, "tc_bf16").dtypes == ("bfloat16",)
        assert registry.get(op, dtype="bfloat16").name == "tc_bf16"
    assert tc("matmul") is gemm_tc.matmul_bf16 and tc("conv2d_backward_weights") is conv_tc.conv2d_backward_weights_bf16


def _bf16(guarded, a):
    """A guarded bfloat16 copy of float32 ``a`` (rounded to nearest even)."""
    return guarded.wrap(dtypes.to_bfloat16(np.asarray(a, np.float32)))


def _f64(*arrays):
    """The arrays' values in float64 (bfloat16 widened exactly)."""
    return [None if a is None else np.asarray(a).astype(np.float32).astype(np.float64) for a in arrays]


def assert_bf16_close(got, expected, magnitude, depth, what, out_dtype):
    """The module docstring's bound for an ``out_dtype`` result, never NaN."""
    assert got.dtype == np.dtype(out_dtype), f"{what}: result dtype {got.dtype}, expected {np.dtype(out_dtype)}"
    got = np.asarray(got).astype(np.float64)
    bound = 2 * (math.ceil(depth / 16) + 4) * U * magnitude
    if np.dtype(out_dtype) == dtypes.bfloat16:
        bound = bound + U_BF16 * (np.abs(expected) + bound)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    assert not np.isnan(got).any(), f"{what}: NaN in the result (an element left unwritten?)"
    err = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
                                  f"(got {got[worst]}, expected {expected[worst]})")


# ---------------------------------------------------------------- GEMM

@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_bf16(emulated, shape):
    """bfloat16 out by default, float32 into a float32 out= (weight gradients)."""
    guarded, log = emulated
    M, N, K = shape
    rng = np.random.default_rng(M * 7 + N * 3 + K + 1)
    forms = [(False, False), (False, True), (True, False), (True, True)] if M * N * K < 10 ** 6 else [(False, False)]
    for ta, tb in forms:
        a = _bf16(guarded, rand(rng, *((K, M) if ta else (M, K))))
        b = _bf16(guarded, rand(rng, *((N, K) if tb else (K, N))))
        expected = ref.matmul(*_f64(a, b), ta, tb)
        magnitude = ref.matmul(*[np.abs(v) for v in _f64(a, b)], ta, tb)
        for out_dtype in (dtypes.bfloat16, np.float32):
            out = guarded.empty((M, N), out_dtype)
            assert tc("matmul")(a, b, ta, tb, out=out) is out
            assert_bf16_close(out, expected, magnitude, K, f"matmul/tc_bf16 {shape} trans {ta, tb} -> "
                              f"{np.dtype(out_dtype).name}", out_dtype)
        assert_bf16_close(tc("matmul")(a, b, ta, tb), expected, magnitude, K,
                          f"matmul/tc_bf16 {shape} trans {ta, tb}, no out=", dtypes.bfloat16)
    if shape == SPLIT_K:
        names = {name for name, _, _ in log}
        assert {"gemm_splitk_reduce", "gemm_splitk_reduce_bf16"} <= names, f"split-K not taken both ways: {log}"


@pytest.mark.parametrize("shape", GEMM_SHAPES[:6], ids=lambda s: "x".join(map(str, s)))
def test_dense_forward_bf16_bias_relu(emulated, shape):
    guarded, log = emulated
    M, N, K = shape
    rng = np.random.default_rng(M + N + K + 1)
    x, w = (_bf16(guarded, rand(rng, *s)) for s in ((M, K), (K, N)))
    b = guarded.wrap(rand(rng, N))
    xt, wt = _f64(x, w)
    magnitude = ref.matmul(np.abs(xt), np.abs(wt), False, False) + np.abs(_f64(b)[0])
    for bias, relu in ((b, True), (None, False), (b, False)):
        expected = ref.dense_forward(xt, wt, *_f64(bias), relu)
        assert_bf16_close(tc("dense_forward")(x, w, bias, relu), expected, magnitude, K,
                          f"dense_forward/tc_bf16 {shape} bias {bias is not None} relu {relu}", dtypes.bfloat16)
    if shape == SPLIT_K:  # the epilogue then runs in the bfloat16 reduce
        assert any(name == "gemm_splitk_reduce_bf16" for name, _, _ in log), f"split-K not taken: {log}"


def test_bf16_gemm_refuses_what_it_cannot_read(emulated):
    guarded, _ = emulated
    a, b = _bf16(guarded, np.ones((4, 5))), _bf16(guarded, np.ones((5, 3)))
    f32 = guarded.wrap(np.ones((4, 5), np.float32))
    with pytest.raises(TypeError, match="a must be bfloat16, got float32"):
        tc("matmul")(f32, b)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        tc("matmul")(a, _bf16(guarded, np.ones((6, 3))))
    with pytest.raises(ValueError, match="must have shape"):
        tc("matmul")(a, b, out=guarded.empty((4, 4), dtypes.bfloat16))
    with pytest.raises(TypeError, match="out must be bfloat16, got float64"):
        tc("matmul")(a, b, out=guarded.empty((4, 3), np.float64))
    with pytest.raises(TypeError, match="b must be float32, got bfloat16"):
        tc("dense_forward")(a, b, _bf16(guarded, np.ones(3)), False)
    with pytest.raises(TypeError, match="out must be bfloat16, got float32"):
        tc("dense_forward")(a, b, None, False, out=guarded.empty((4, 3)))


# ---------------------------------------------------------------- convolution

def _conv_case(guarded, case, passes=("forward", "data", "weights")):
    N, H, W, C, K, R, S, stride, padding = case
    rng = np.random.default_rng(N * H * W + C * K + R + 1)
    x, w = _bf16(guarded, rand(rng, N, H, W, C)), _bf16(guarded, rand(rng, R, S, C, K, scale=(R * S * C) ** -0.5))
    b = guarded.wrap(rand(rng, K))
    P, Q = checks.output_size((H, W), (R, S), stride, padding, "kernel")
    dy = _bf16(guarded, rand(rng, N, P, Q, K))
    what = f"tc_bf16 {conv_id(case)}"
    xt, wt, dyt = _f64(x, w, dy)
    ax, aw, ady = np.abs(xt), np.abs(wt), np.abs(dyt)
    if "forward" in passes:
        for bias, relu in ((b, True), (None, False)):
            expected = ref.conv2d_forward(xt, wt, *_f64(bias), stride, padding, relu)
            magnitude = ref.conv2d_forward(ax, aw, *[None if bias is None else np.abs(_f64(bias)[0])],
                                           stride, padding, False)
            assert_bf16_close(tc("conv2d_forward")(x, w, bias, stride, padding, relu), expected, magnitude,
                              R * S * C, f"forward {what} relu {relu}", dtypes.bfloat16)
    if "data" in passes:
        out = guarded.empty(x.shape, dtypes.bfloat16)
        assert tc("conv2d_backward_data")(dy, w, x.shape, stride, padding, out=out) is out
        assert_bf16_close(out, ref.conv2d_backward_data(dyt, wt, x.shape, stride, padding),
                          ref.conv2d_backward_data(ady, aw, x.shape, stride, padding), R * S * K,
                          f"backward_data {what}", dtypes.bfloat16)
    if "weights" in passes:
        out = guarded.empty(w.shape, np.float32)
        assert tc("conv2d_backward_weights")(x, dy, w.shape, stride, padding, out=out) is out
        assert_bf16_close(out, ref.conv2d_backward_weights(xt, dyt, w.shape, stride, padding),
                          ref.conv2d_backward_weights(ax, ady, w.shape, stride, padding), N * P * Q,
                          f"backward_weights {what}", np.float32)


@pytest.fixture
def emulated_conv(emulated):
    cuda_emu.prebuild(("conv_tc.cu", ()), ("conv.cu", conv.NAME_EXPRESSIONS))
    return emulated


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv_bf16(emulated_conv, case):
    guarded, log = emulated_conv
    _conv_case(guarded, case)
    if case == WGRAD_SPLIT:
        assert any(name == "gemm_splitk_reduce" for name, _, _ in log), f"split-K not taken: {log}"


@pytest.mark.slow
@pytest.mark.parametrize("layer,case,backward", ALEXNET, ids=[a[0] for a in ALEXNET])
def test_conv_bf16_alexnet_layers(monkeypatch, layer, case, backward):
    """One layout (aligned, copies landing at their wait: the pipeline's strict side)."""
    cuda_emu.prebuild(("conv_tc.cu", ()), ("conv.cu", conv.NAME_EXPRESSIONS), ("gemm.cu", gemm.NAME_EXPRESSIONS))
    guarded, log = cuda_emu.Guarded(), []
    cuda_emu.patch_backend(monkeypatch, guarded, log=log, cp_async="at_wait")
    _conv_case(guarded, case, ("forward", "data", "weights") if backward else ("forward",))
    if not backward:
        _conv_case(guarded, (1, 31, 31, 3, 96, 11, 11, (4, 4), V0), ("data", "weights"))
    assert guarded.intact(), f"a kernel wrote outside its array: {log}"


def test_bf16_convolutions_refuse_what_they_cannot_read(emulated):
    guarded, _ = emulated
    x, w = _bf16(guarded, np.ones((1, 4, 4, 8))), _bf16(guarded, np.ones((1, 1, 8, 4)))
    dy = _bf16(guarded, np.ones((1, 4, 4, 4)))
    geometry = ((1, 1), (0, 0, 0, 0))
    with pytest.raises(TypeError, match="x must be bfloat16, got float32"):
        tc("conv2d_forward")(guarded.wrap(np.ones((1, 4, 4, 8), np.float32)), w, None, *geometry, False)
    with pytest.raises(TypeError, match="b must be float32, got bfloat16"):
        tc("conv2d_forward")(x, w, _bf16(guarded, np.ones(4)), *geometry, False)
    with pytest.raises(TypeError, match="dy must be bfloat16, got float32"):
        tc("conv2d_backward_data")(guarded.wrap(np.ones((1, 4, 4, 4), np.float32)), w, x.shape, *geometry)
    with pytest.raises(TypeError, match="out must be float32, got bfloat16"):
        tc("conv2d_backward_weights")(x, dy, w.shape, *geometry, out=guarded.empty(w.shape, dtypes.bfloat16))


def test_gpus_without_bf16_tensor_cores_are_refused(emulated, monkeypatch):
    from fastcnn.backend.cuda import _launch
    guarded, _ = emulated
    monkeypatch.setattr(_launch, "compute_capability", lambda: 75)
    a = _bf16(guarded, np.ones((4, 4)))
    x, w = _bf16(guarded, np.ones((1, 4, 4, 8))), _bf16(guarded, np.ones((1, 1, 8, 4)))
    for call in (lambda: tc("matmul")(a, a), lambda: tc("conv2d_forward")(x, w, None, (1, 1), (0, 0, 0, 0), False)):
        with pytest.raises(registry.NotApplicable, match=r"tc_bf16 .*\(compute capability 8.0 or newer\); this GPU"):
            call()


def test_ldmatrix_fragment_loads_are_free_of_bank_conflicts(emulated):
    """Every bf16 operand tile read by ldmatrix in one wavefront a matrix: K-contiguous (GEMM
    A, B as (N, K), the forward and backward-data gathers) and, by ldmatrix.trans,
    MN-contiguous (GEMM A transposed, B as (K, N), the forward's weights, backward-weights)."""
    guarded, _ = emulated
    rng = np.random.default_rng(1)
    files = [cuda_emu.load("gemm_tc.cu", gemm_tc.NAME_EXPRESSIONS), cuda_emu.load("conv_tc.cu")]
    before = [f.ldmatrix_conflicts() for f in files]
    a, b = _bf16(guarded, rand(rng, 70, 40)), _bf16(guarded, rand(rng, 90, 40))
    tc("matmul")(a, b, False, True)
    tc("matmul")(_bf16(guarded, rand(rng, 40, 70)), _bf16(guarded, rand(rng, 40, 90)), True, False)
    x, w, dy = (_bf16(guarded, rand(rng, *s)) for s in ((1, 9, 9, 8), (3, 3, 8, 16), (1, 9, 9, 16)))
    tc("conv2d_forward")(x, w, None, (1, 1), (1, 1, 1, 1), False)
    tc("conv2d_backward_data")(dy, w, x.shape, (1, 1), (1, 1, 1, 1))
    tc("conv2d_backward_weights")(x, dy, w.shape, (1, 1), (1, 1, 1, 1))
    assert [f.ldmatrix_conflicts() for f in files] == before
