"""The TF32 tensor-core kernels (kernels/gemm_tc.cu, conv_tc.cu) run on the CPU
(tests/cuda_emu.py: mma.sync, ldmatrix, cp.async emulated), through the backend's own
entry points (gemm_tc.py, conv_tc.py), against the reference on tf32-rounded inputs.

As in test_emulated_gemm_conv.py, NumPy arrays inside guard zones stand in for CuPy
arrays and only the GPU is replaced: the modules' checks, launch plans (tiles, split-K)
and the CUDA C run.  Three layouts: 256-byte aligned arrays (16-byte cp.async) with the
plan of a 132-SM card and copies made at once; the same with the plan of an 8-SM card
(split-K more often) and copies that land only at the cp.async.wait_group covering them
(a pipeline that reads a stage before waiting for it fails there); and every array 4 bytes
off (4-byte copies) with copies at the wait.  Outputs are NaN-poisoned, guard zones
must stay intact, and the ldmatrix fragment loads must be free of bank conflicts.

Tolerance, derived: the kernel and the reference multiply the same tf32 values (the test
rounds the inputs with reference.round_tf32, cvt.rna's rule, and sums in float64); a tf32
product is exact in
fp32, so they differ only by the kernel's fp32 accumulation, one rounding per 8-deep mma
step plus the split-K reduce and the bias: |got - ref| <= 2 (ceil(K/8) + 4) u (|A| @ |B|)
elementwise, u = 2^-24 (the factor 2 leaves room for a tensor core's own rounding
inside a step), with K the GEMM's depth (R*S*C forward, R*S*K backward-data, N*P*Q
backward-weights).  A kernel that skipped the rounding, or truncated instead, misses it
by far more at moderate depths: for depths 8 to 256 each case also checks that the plain
fp32 result lies outside the bound somewhere (deeper, the worst-case bound grows as
depth^2 against the rounding's random walk, and stops telling the two apart).
"""
import math

import numpy as np
import pytest

import cuda_emu
import test_emulated_gemm_conv
from helpers import rand
from test_emulated_gemm_conv import V0, conv_id

from fastcnn import config
from fastcnn.backend import checks
from fastcnn.backend import reference as ref
from fastcnn.backend import registry
from fastcnn.backend.cuda import conv, conv_tc, gemm, gemm_tc

U = 2.0 ** -24
# (name, guard shift, SM count, grid-stride cap, cp.async mode)
LAYOUTS = [("aligned-132sm-now", 0, 132, None, "now"), ("aligned-8sm-at-wait", 0, 8, 3, "at_wait"),
           ("misaligned-8sm-at-wait", 1, 8, 3, "at_wait")]


OPS = ("matmul", "dense_forward", "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights")


def tc(op):
    """The tc_tf32 variant of ``op``, as a user reaches it (precision "high")."""
    with config.float32_matmul_precision("high"):
        return registry.get(op, "tc_tf32").fn


def test_every_tf32_variant_is_driven_here_and_refused_under_highest():
    assert {op: registry.variants(op, source="cuda", precision="tf32") for op in registry.ops()
            if registry.variants(op, source="cuda", precision="tf32")} == {op: ["tc_tf32"] for op in OPS}
    for op in OPS:
        with pytest.raises(ValueError, match="computes in TF32"):
            registry.get(op, "tc_tf32")
    assert tc("matmul") is gemm_tc.matmul and tc("conv2d_backward_weights") is conv_tc.conv2d_backward_weights


def test_round_tf32_is_cvt_rna():
    """The reference's rounding and the emulator's cvt.rna.tf32.f32 agree bit for bit."""
    import test_emu_mma
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2 ** 32, 4096, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    y = np.empty_like(x)
    test_emu_mma._emulator().function("cvt_test")((1,), (128,), (x, y, np.int32(x.size)))
    assert np.array_equal(ref.round_tf32(x).view(np.uint32), y.view(np.uint32))


@pytest.fixture(params=LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def emulated(request, monkeypatch):
    """(guarded arrays, launch log) with fastcnn.backend.cuda running on the emulator."""
    _, shift, sms, cap, mode = request.param
    cuda_emu.prebuild(("gemm_tc.cu", gemm_tc.NAME_EXPRESSIONS), ("gemm.cu", gemm.NAME_EXPRESSIONS))
    guarded, log = cuda_emu.Guarded(shift=shift), []
    cuda_emu.patch_backend(monkeypatch, guarded, sms=sms, grid_cap=cap, log=log, cp_async=mode)
    yield guarded, log
    assert guarded.intact(), f"a kernel wrote outside its array: {log}"


def _f64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


def _t64(*arrays):
    """The tf32 values of the arrays, in float64 (what the tensor cores multiply)."""
    return [None if a is None else ref.round_tf32(np.asarray(a)).astype(np.float64) for a in arrays]


def assert_tf32_close(got, expected, magnitude, depth, what, plain=None):
    """|got - expected| <= 2 (ceil(depth/8) + 4) u magnitude elementwise, never NaN; and
    ``plain`` (the fp32 result without tf32 rounding) outside that bound somewhere."""
    got = np.asarray(got, np.float64)
    bound = 2 * (math.ceil(depth / 8) + 4) * U * magnitude
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    assert not np.isnan(got).any(), f"{what}: NaN in the result (an element left unwritten?)"
    err = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
                                  f"(got {got[worst]}, expected {expected[worst]})")
    if plain is not None and 8 <= depth <= 256:
        assert (np.abs(plain - expected) > bound).any(), f"{what}: the bound cannot tell tf32 from fp32"


# ---------------------------------------------------------------- GEMM

GEMM_SHAPES = [(1, 1, 1), (5, 7, 3), (130, 129, 17), (132, 136, 24), (36, 96, 20), (33, 65, 2101),
               (3, 120, 400), (3, 84, 120), (3, 10, 84),      # LeNet-5's dense layers, batch 3
               (2, 1000, 1024)]                               # AlexNet's last one, batch 2, K cut to 1024
SPLIT_K = (33, 65, 2101)


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_tf32(emulated, shape):
    guarded, log = emulated
    M, N, K = shape
    rng = np.random.default_rng(M * 7 + N * 3 + K)
    forms = [(False, False), (False, True), (True, False), (True, True)] if M * N * K < 10 ** 6 else [(False, False)]
    for ta, tb in forms:
        a = guarded.wrap(rand(rng, *((K, M) if ta else (M, K))))
        b = guarded.wrap(rand(rng, *((N, K) if tb else (K, N))))
        expected = ref.matmul(*_t64(a, b), ta, tb)
        magnitude = ref.matmul(*[np.abs(v) for v in _t64(a, b)], ta, tb)
        plain = ref.matmul(*_f64(a, b), ta, tb)
        out = guarded.empty((M, N))
        assert tc("matmul")(a, b, ta, tb, out=out) is out
        assert_tf32_close(out, expected, magnitude, K, f"matmul/tc_tf32 {shape} trans {ta, tb}", plain)
    if shape == SPLIT_K:
        assert any(name == "gemm_splitk_reduce" for name, _, _ in log), f"split-K not taken: {log}"


@pytest.mark.parametrize("shape", GEMM_SHAPES[:6], ids=lambda s: "x".join(map(str, s)))
def test_dense_forward_tf32_bias_relu(emulated, shape):
    guarded, log = emulated
    M, N, K = shape
    rng = np.random.default_rng(M + N + K)
    x, w, b = (guarded.wrap(rand(rng, *s)) for s in ((M, K), (K, N), (N,)))
    magnitude = ref.matmul(*[np.abs(v) for v in _t64(x, w)], False, False) + np.abs(np.asarray(b, np.float64))
    for bias, relu in ((b, True), (None, False), (b, False)):
        xt, wt = _t64(x, w)
        expected = ref.dense_forward(xt, wt, *_f64(bias), relu)
        assert_tf32_close(tc("dense_forward")(x, w, bias, relu), expected, magnitude, K,
                          f"dense_forward/tc_tf32 {shape} bias {bias is not None} relu {relu}")
    if shape == SPLIT_K:  # the epilogue then runs in the reduce
        assert any(name == "gemm_splitk_reduce" for name, _, _ in log), f"split-K not taken: {log}"


def test_matmul_tf32_refuses_what_gemm_refuses(emulated):
    guarded, _ = emulated
    a, b = guarded.wrap(np.ones((4, 5), np.float32)), guarded.wrap(np.ones((6, 3), np.float32))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        tc("matmul")(a, b)
    with pytest.raises(ValueError, match="must have shape"):
        tc("matmul")(a, guarded.wrap(np.ones((5, 3), np.float32)), out=guarded.empty((4, 4)))


# ---------------------------------------------------------------- convolution

# (N, H, W, C, K, R, S, stride, padding): test_emulated_gemm_conv.py's cases (strides 1-4,
# kernels 1x1 to 11x11, C in {1, 3, 4, 6, 96}, asymmetric paddings, a split-K weight
# gradient), then LeNet-5's two layers at batch 2 (C = 1; K = 6 and 16).
CONV_CASES = test_emulated_gemm_conv.CONV_CASES + [
    (2, 28, 28, 1, 6, 5, 5, (1, 1), (2, 2, 2, 2)),          # LeNet-5 conv1, 'same'
]
WGRAD_SPLIT = test_emulated_gemm_conv.WGRAD_SPLIT
# AlexNet's five layers at batch 1, full size (conv1's backward passes on a 31x31 crop:
# the same kernel, stride and channels; full size its backward-data is a GEMM of depth
# 11*11*96 over 227*227 rows, minutes on the emulator).
ALEXNET = [
    ("conv1", (1, 227, 227, 3, 96, 11, 11, (4, 4), V0), False),
    ("conv2", (1, 27, 27, 96, 256, 5, 5, (1, 1), (2, 2, 2, 2)), True),
    ("conv3", (1, 13, 13, 256, 384, 3, 3, (1, 1), (1, 1, 1, 1)), True),
    ("conv4", (1, 13, 13, 384, 384, 3, 3, (1, 1), (1, 1, 1, 1)), True),
    ("conv5", (1, 13, 13, 384, 256, 3, 3, (1, 1), (1, 1, 1, 1)), True),
]


def _conv_case(guarded, case, log, passes=("forward", "data", "weights")):
    N, H, W, C, K, R, S, stride, padding = case
    rng = np.random.default_rng(N * H * W + C * K + R)
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K, scale=(R * S * C) ** -0.5), rand(rng, K)
    P, Q = checks.output_size((H, W), (R, S), stride, padding, "kernel")
    dy = rand(rng, N, P, Q, K)
    x, w, b, dy = (guarded.wrap(a) for a in (x, w, b, dy))
    what = f"tc_tf32 {conv_id(case)}"
    xt, wt, dyt = _t64(x, w, dy)
    ax, aw, ady = np.abs(xt), np.abs(wt), np.abs(dyt)
    if "forward" in passes:
        for bias, relu in ((b, True), (None, False)):
            expected = ref.conv2d_forward(xt, wt, *_f64(bias), stride, padding, relu)
            magnitude = ref.conv2d_forward(ax, aw, *[None if bias is None else np.abs(_f64(bias)[0])],
                                           stride, padding, False)
            plain = ref.conv2d_forward(*_f64(x, w, bias), stride, padding, relu)
            assert_tf32_close(tc("conv2d_forward")(x, w, bias, stride, padding, relu), expected, magnitude,
                              R * S * C, f"forward {what} relu {relu}", plain)
    if "data" in passes:
        out = guarded.empty(x.shape)
        assert tc("conv2d_backward_data")(dy, w, x.shape, stride, padding, out=out) is out
        assert_tf32_close(out, ref.conv2d_backward_data(dyt, wt, x.shape, stride, padding),
                          ref.conv2d_backward_data(ady, aw, x.shape, stride, padding), R * S * K,
                          f"backward_data {what}")
    if "weights" in passes:
        out = guarded.empty(w.shape)
        assert tc("conv2d_backward_weights")(x, dy, w.shape, stride, padding, out=out) is out
        assert_tf32_close(out, ref.conv2d_backward_weights(xt, dyt, w.shape, stride, padding),
                          ref.conv2d_backward_weights(ax, ady, w.shape, stride, padding), N * P * Q,
                          f"backward_weights {what}")


@pytest.fixture
def emulated_conv(emulated):
    cuda_emu.prebuild(("conv_tc.cu", ()), ("conv.cu", conv.NAME_EXPRESSIONS))
    return emulated


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv_tf32(emulated_conv, case):
    guarded, log = emulated_conv
    _conv_case(guarded, case, log)
    if case == WGRAD_SPLIT:
        assert any(name == "gemm_splitk_reduce" for name, _, _ in log), f"split-K not taken: {log}"


@pytest.mark.slow
@pytest.mark.parametrize("layer,case,backward", ALEXNET, ids=[a[0] for a in ALEXNET])
def test_conv_tf32_alexnet_layers(monkeypatch, layer, case, backward):
    """One layout (aligned, copies landing at their wait: the pipeline's strict side)."""
    cuda_emu.prebuild(("conv_tc.cu", ()), ("conv.cu", conv.NAME_EXPRESSIONS), ("gemm.cu", gemm.NAME_EXPRESSIONS))
    guarded, log = cuda_emu.Guarded(), []
    cuda_emu.patch_backend(monkeypatch, guarded, log=log, cp_async="at_wait")
    _conv_case(guarded, case, log, ("forward", "data", "weights") if backward else ("forward",))
    if not backward:
        _conv_case(guarded, (1, 31, 31, 3, 96, 11, 11, (4, 4), V0), log, ("data", "weights"))
    assert guarded.intact(), f"a kernel wrote outside its array: {log}"


def test_gpus_without_tf32_tensor_cores_are_refused(emulated, monkeypatch):
    """Below compute capability 8.0 the variants refuse (NotApplicable: auto uses another)."""
    from fastcnn.backend.cuda import _launch
    guarded, _ = emulated
    monkeypatch.setattr(_launch, "compute_capability", lambda: 75)
    a = guarded.wrap(np.ones((4, 4), np.float32))
    x, w = guarded.wrap(np.ones((1, 4, 4, 4), np.float32)), guarded.wrap(np.ones((1, 1, 4, 4), np.float32))
    for call in (lambda: tc("matmul")(a, a), lambda: tc("conv2d_forward")(x, w, None, (1, 1), (0, 0, 0, 0), False)):
        with pytest.raises(registry.NotApplicable, match=r"compute capability 8.0 or newer\); this GPU has 7.5"):
            call()


def test_ldmatrix_fragment_loads_are_free_of_bank_conflicts(emulated):
    """Every operand tile read by ldmatrix (K-contiguous: GEMM A unless transposed, B when
    given as (N, K), the forward and backward-data gathers) in one wavefront a matrix."""
    guarded, _ = emulated
    rng = np.random.default_rng(1)
    files = [cuda_emu.load("gemm_tc.cu", gemm_tc.NAME_EXPRESSIONS), cuda_emu.load("conv_tc.cu")]
    before = [f.ldmatrix_conflicts() for f in files]
    a, b = guarded.wrap(rand(rng, 70, 40)), guarded.wrap(rand(rng, 90, 40))
    tc("matmul")(a, b, False, True)                                   # A and B K-contiguous
    x, w, dy = (guarded.wrap(rand(rng, *s)) for s in ((1, 9, 9, 8), (3, 3, 8, 12), (1, 9, 9, 12)))
    tc("conv2d_forward")(x, w, None, (1, 1), (1, 1, 1, 1), False)
    tc("conv2d_backward_data")(dy, w, x.shape, (1, 1), (1, 1, 1, 1))
    assert [f.ldmatrix_conflicts() for f in files] == before
