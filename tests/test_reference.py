"""The NumPy reference backend: gradients by central differences, forwards against
direct loops (tests/loops.py), optimizer steps against the Keras formulas, Philox
against Random123's known answers, and every bad input rejected by name."""
import numpy as np
import pytest

import loops
from fastcnn import dtypes
from fastcnn.backend import PRIMITIVES
from fastcnn.backend import reference as ref
from helpers import assert_close, numeric_grad, rand



def check_grad(analytic, f, x, name, rtol=1e-6):
    assert_close(analytic, numeric_grad(f, x), rtol=rtol, name=name)


# ------------------------------------------------------------------ module surface

def test_every_primitive_and_attribute_is_there():
    missing = [op for op in PRIMITIVES if not callable(getattr(ref, op, None))]
    assert missing == []
    assert (ref.name, ref.xp, ref.device) == ("reference", np, "cpu")
    assert ref.unavailable_reason() is None
    assert ref.synchronize() is None


def test_asarray_makes_contiguous_arrays_and_to_host_returns_numpy():
    a = np.arange(12.0).reshape(3, 4).T
    b = ref.asarray(a, dtype=np.float32)
    assert b.flags.c_contiguous and b.dtype == np.float32 and np.array_equal(b, a)
    assert ref.asarray([[1, 2]]).shape == (1, 2)
    assert isinstance(ref.to_host(b), np.ndarray)

    class FakeDeviceArray:  # a CuPy array (told by its module, checks.is_cupy): .get() copies to the host
        def get(self):
            return np.ones(3)
    FakeDeviceArray.__module__ = "cupy._core.core"
    assert np.array_equal(ref.asarray(FakeDeviceArray()), np.ones(3))
    assert np.array_equal(ref.to_host(FakeDeviceArray()), np.ones(3))


# ------------------------------------------------------------------ convolution

# (N, H, W, C, R, S, K, stride, padding): odd sizes, batch 1, strides 1-4, kernels 1-11,
# 'valid' (no padding), 'same'-like and asymmetric explicit paddings.
CONV_CASES = [
    (1, 5, 5, 1, 1, 1, 2, (1, 1), (0, 0, 0, 0)),
    (2, 7, 6, 3, 3, 3, 4, (1, 1), (1, 1, 1, 1)),
    (1, 9, 7, 2, 5, 5, 3, (1, 1), (2, 2, 2, 2)),
    (2, 8, 9, 2, 3, 2, 3, (2, 1), (0, 1, 1, 0)),
    (1, 10, 11, 3, 4, 3, 2, (3, 2), (1, 2, 0, 1)),
    (2, 13, 12, 2, 11, 11, 3, (4, 4), (0, 0, 0, 0)),
    (1, 12, 12, 1, 11, 11, 2, (4, 4), (5, 5, 5, 5)),
    (3, 6, 5, 4, 2, 3, 1, (1, 3), (0, 0, 1, 1)),
    (1, 28, 6, 1, 5, 5, 2, (1, 1), (2, 2, 2, 2)),  # Q > S*C: the channel-first im2col path
]


def conv_inputs(case, dtype, seed=0):
    N, H, W, C, R, S, K, stride, padding = case
    rng = np.random.default_rng(seed)
    return (rand(rng, N, H, W, C, dtype=dtype), rand(rng, R, S, C, K, dtype=dtype),
            rand(rng, K, dtype=dtype), stride, padding)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_conv_forward_matches_loops(case, relu):
    x, w, b, stride, padding = conv_inputs(case, np.float64)
    y = ref.conv2d_forward(x, w, b, stride, padding, relu)
    assert_close(y, loops.conv2d(x, w, b, stride, padding, relu), rtol=1e-12)
    assert_close(ref.conv2d_forward(x, w, None, stride, padding, False),
                 loops.conv2d(x, w, None, stride, padding, False), rtol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_gradients(case):
    x, w, b, stride, padding = conv_inputs(case, np.float64, seed=1)
    y = ref.conv2d_forward(x, w, b, stride, padding, False)
    dy = rand(np.random.default_rng(2), *y.shape, dtype=np.float64)

    def loss():
        return float(np.sum(ref.conv2d_forward(x, w, b, stride, padding, False) * dy))
    check_grad(ref.conv2d_backward_data(dy, w, x.shape, stride, padding), loss, x, "dx")
    check_grad(ref.conv2d_backward_weights(x, dy, w.shape, stride, padding), loss, w, "dw")
    check_grad(ref.bias_grad(dy), loss, b, "db")


@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[5], CONV_CASES[8]], ids=str)
def test_conv_float32_stays_float32_and_agrees(case):
    x, w, b, stride, padding = conv_inputs(case, np.float32)
    y = ref.conv2d_forward(x, w, b, stride, padding, True)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    assert_close(y, loops.conv2d(x, w, b, stride, padding, True), rtol=1e-5)
    dx = ref.conv2d_backward_data(y, w, x.shape, stride, padding)
    dw = ref.conv2d_backward_weights(x, y, w.shape, stride, padding)
    assert dx.dtype == dw.dtype == np.float32
    y64 = y.astype(np.float64)
    assert_close(dx, ref.conv2d_backward_data(y64, w.astype(np.float64), x.shape, stride, padding), 1e-5)
    assert_close(dw, ref.conv2d_backward_weights(x.astype(np.float64), y64, w.shape, stride, padding), 1e-5)


# ------------------------------------------------------------------ bfloat16 GEMM and convolution

BF16 = dtypes.bfloat16


def assert_rounded_once(out, exact32, exact64, name):
    """out (bfloat16) is the float32 result rounded to nearest even, bit for bit, and lies within
    a bfloat16 rounding (2^-8 relative: 8 significant bits, plus float32 accumulation) of the float64
    result."""
    assert out.dtype == BF16, f"{name}: dtype {out.dtype}"
    assert np.array_equal(out.view(np.uint16), exact32.astype(BF16).view(np.uint16)), name
    err = np.abs(out.astype(np.float64) - exact64)
    assert np.all(err <= 2.0 ** -8 * np.abs(exact64) + 1e-5 * np.abs(exact64).max()), name


def bf16_conv_inputs(case, seed=0):
    """x and w already bfloat16 values, b float32 (the master bias)."""
    x, w, b, stride, padding = conv_inputs(case, np.float32, seed)
    return x.astype(BF16), w.astype(BF16), b, stride, padding


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_conv_bfloat16_is_float32_math_rounded_once(case, relu):
    x, w, b, stride, padding = bf16_conv_inputs(case)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = ref.conv2d_forward(x, w, b, stride, padding, relu)
    assert_rounded_once(y, ref.conv2d_forward(x32, w32, b, stride, padding, relu),
                        loops.conv2d(x64, w64, b, stride, padding, relu), "y")
    dy = rand(np.random.default_rng(3), *y.shape).astype(BF16)
    dy32, dy64 = dy.astype(np.float32), dy.astype(np.float64)
    dx = ref.conv2d_backward_data(dy, w, x.shape, stride, padding)
    assert_rounded_once(dx, ref.conv2d_backward_data(dy32, w32, x.shape, stride, padding),
                        ref.conv2d_backward_data(dy64, w64, x.shape, stride, padding), "dx")
    dw = ref.conv2d_backward_weights(x, dy, w.shape, stride, padding)
    assert dw.dtype == np.float32   # a weight gradient stays float32
    assert np.array_equal(dw, ref.conv2d_backward_weights(x32, dy32, w.shape, stride, padding))
    out = np.full(w.shape, np.nan, np.float32)
    assert ref.conv2d_backward_weights(x, dy, w.shape, stride, padding, out=out) is out
    assert np.array_equal(out, dw)


@pytest.mark.parametrize("relu", [False, True])
def test_dense_bfloat16_is_float32_math_rounded_once(relu):
    rng = np.random.default_rng(8)
    x, w, b = rand(rng, 9, 37).astype(BF16), rand(rng, 37, 11).astype(BF16), rand(rng, 11)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    assert_rounded_once(ref.dense_forward(x, w, b, relu), ref.dense_forward(x32, w32, b, relu),
                        loops.dense(x.astype(np.float64), w.astype(np.float64), b, relu), "y")
    assert_rounded_once(ref.dense_forward(x, w, None, relu), ref.dense_forward(x32, w32, None, relu),
                        loops.dense(x.astype(np.float64), w.astype(np.float64), None, relu), "y without bias")


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_bfloat16_gives_bfloat16_or_float32_into_a_float32_out(trans_a, trans_b):
    rng = np.random.default_rng(9)
    a = (rand(rng, 33, 21) if not trans_a else rand(rng, 21, 33)).astype(BF16)
    b = (rand(rng, 21, 7) if not trans_b else rand(rng, 7, 21)).astype(BF16)
    exact32 = ref.matmul(a.astype(np.float32), b.astype(np.float32), trans_a, trans_b)
    exact64 = ref.matmul(a.astype(np.float64), b.astype(np.float64), trans_a, trans_b)
    assert_rounded_once(ref.matmul(a, b, trans_a, trans_b), exact32, exact64, "bf16")
    into_bf16 = np.zeros((33, 7), BF16)
    assert ref.matmul(a, b, trans_a, trans_b, out=into_bf16) is into_bf16
    assert_rounded_once(into_bf16, exact32, exact64, "out= bf16")
    into_f32 = np.full((33, 7), np.nan, np.float32)   # a weight gradient's view
    assert ref.matmul(a, b, trans_a, trans_b, out=into_f32) is into_f32
    assert np.array_equal(into_f32, exact32)


def test_bfloat16_gemm_rounds_ties_to_even_once():
    # bfloat16 keeps 8 significant bits.  1 + 2^-8 lies halfway between 1 and 1 + 2^-7: the tie goes
    # to the even one, 1 (ties away from zero would give 1 + 2^-7); 1 + 3 * 2^-8 lies halfway between
    # 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6; 1 + 2^-7 + 2^-9 is below half a step: down.
    ones = np.ones((1, 2), BF16)
    for halves, expect in ((np.array([[1.0], [2.0 ** -8]]), 1.0), (np.array([[1.0], [3 * 2.0 ** -8]]), 1 + 2.0 ** -6),
                           (np.array([[1 + 2.0 ** -7], [2.0 ** -9]]), 1 + 2.0 ** -7)):
        y = ref.matmul(ones, halves.astype(BF16), False, False)
        assert y.dtype == BF16 and float(y[0, 0]) == expect, (halves.ravel(), float(y[0, 0]))
        assert float(ref.dense_forward(ones, halves.astype(BF16), None, False)[0, 0]) == expect


def test_bfloat16_gemm_takes_a_float32_bias_only():
    x, w = np.ones((2, 3), BF16), np.ones((3, 4), BF16)
    for b in (np.ones(4, BF16), np.ones(4, np.float64)):
        with pytest.raises(TypeError, match="float32 master bias"):
            ref.dense_forward(x, w, b, False)
        with pytest.raises(TypeError, match="float32 master bias"):
            ref.conv2d_forward(np.ones((1, 3, 3, 3), BF16), np.ones((1, 1, 3, 4), BF16), b, (1, 1), (0,) * 4, False)
    with pytest.raises(TypeError, match="w has dtype float32"):
        ref.dense_forward(x, np.ones((3, 4), np.float32), None, False)
    with pytest.raises(ValueError, match="expected"):   # a bfloat16 weight gradient is refused
        ref.conv2d_backward_weights(np.ones((1, 3, 3, 3), BF16), np.ones((1, 3, 3, 4), BF16), (1, 1, 3, 4),
                                    (1, 1), (0,) * 4, out=np.zeros((1, 1, 3, 4), BF16))


# ------------------------------------------------------------------ bfloat16 in the rest of a step

def bf16_bits(a):
    return np.asarray(a).view(np.uint16)


def same_bf16(got, want32, name):
    """got is bfloat16 and, bit for bit, the float32 result want32 rounded once to nearest even."""
    assert got.dtype == BF16, f"{name}: dtype {got.dtype}"
    assert np.array_equal(bf16_bits(got), bf16_bits(want32.astype(BF16))), name


def bf16_values(rng, *shape, scale=1.0):
    """Random bfloat16 values (exact float32 after widening) with ties and signed zeros."""
    a = rand(rng, *shape, scale=scale)
    a.reshape(-1)[::7] = 0.0
    a.reshape(-1)[3::11] = -0.0
    a.reshape(-1)[5::13] = 0.5
    return a.astype(BF16)


W32 = np.float32  # the exact widening: bf16.astype(np.float32)

STEP_OPS_BF16 = {
    # name: (call on the arrays, the arrays' shapes)
    "relu_forward": (lambda x: ref.relu_forward(x), [(3, 5, 7, 4)]),
    "relu_backward": (lambda dy, y: ref.relu_backward(dy, y), [(3, 5, 7, 4)] * 2),
    "add": (lambda a, b: ref.add(a, b), [(7, 33)] * 2),
    "maxpool_forward": (lambda x: ref.maxpool_forward(x, 3, 2, (1, 1, 1, 1)), [(2, 9, 9, 5)]),
    "dropout_forward": (lambda x: ref.dropout_forward(x, 0.3, 7, np.array([2], np.int32), 3), [(4, 6, 5)]),
    "dropout_backward": (lambda dy: ref.dropout_backward(dy, 0.5, 2**40, np.array([9], np.int32)), [(4, 30)]),
    "crop_forward": (lambda x: ref.crop_forward(x, 5, 4, True, True, 3, np.array([1], np.int32), 2), [(6, 8, 7, 3)]),
    "crop_backward": (lambda dy: ref.crop_backward(dy, (6, 8, 7, 3), True, True, 3, np.array([1], np.int32)),
                      [(6, 5, 4, 3)]),
    "pca_noise_forward": (lambda x: ref.pca_noise_forward(x, 0.1 * np.eye(3), 5, np.array([4], np.int32)),
                          [(3, 4, 5, 3)]),
    "lrn_forward": (lambda x: ref.lrn_forward(x, 5, 1e-2, 0.75, 2.0), [(2, 3, 4, 9)]),
    "lrn_backward": (lambda dy, x, y, scale: ref.lrn_backward(dy, x, y, scale, 5, 1e-2, 0.75, 2.0),
                     [(2, 3, 4, 9)] * 4),
}


@pytest.mark.parametrize("op", sorted(STEP_OPS_BF16))
def test_step_op_in_bfloat16_is_the_float32_op_rounded_once(op):
    """The contract's rule: bfloat16 inputs widened exactly, the float32 op, each float result
    rounded once (RNE); uint8 results (argmax) as in float32."""
    call, shapes = STEP_OPS_BF16[op]
    rng = np.random.default_rng(len(op))
    arrays = [bf16_values(rng, *shape) for shape in shapes]
    if op == "lrn_backward":
        arrays[3] = (np.abs(arrays[3].astype(W32)) + 1).astype(BF16)   # scale > 0
    got, want = call(*arrays), call(*[a.astype(W32) for a in arrays])
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for i, (g, w) in enumerate(zip(got, want)):
        if w.dtype == np.float32:
            same_bf16(g, w, f"{op} result {i}")
        else:
            assert g.dtype == w.dtype and np.array_equal(g, w), f"{op} result {i}"


def test_bfloat16_relu_and_pool_keep_the_values_exactly():
    """Max and ReLU pick one of their inputs: the bfloat16 result is that input, unrounded."""
    x = bf16_values(np.random.default_rng(1), 2, 6, 6, 3)
    assert np.array_equal(bf16_bits(ref.relu_forward(x)), bf16_bits(np.maximum(x.astype(W32), 0).astype(BF16)))
    y, argmax = ref.maxpool_forward(x, 2, 2, (0, 0, 0, 0))
    assert set(bf16_bits(y).ravel()) <= set(bf16_bits(x).ravel()) | {0}
    dx = ref.maxpool_backward(y, argmax, x.shape, 2, 2, (0, 0, 0, 0))
    assert dx.dtype == BF16 and np.array_equal(dx.astype(W32)[dx.astype(W32) != 0],
                                               x.astype(W32)[dx.astype(W32) != 0])


def test_bfloat16_sums_are_rounded_once_at_the_end():
    # 1 + 2^-9 + 2^-9: float32 gives 1 + 2^-8, a tie that rounds to even (1); adding in bfloat16
    # step by step would give 1 + 0 + 0 as well, so use three taps: 1 + 3 * 2^-9 > half a step: up.
    dy = np.array([1.0, 2.0 ** -9, 2.0 ** -9, 2.0 ** -9], np.float32).reshape(1, 2, 2, 1)
    argmax = np.zeros((1, 2, 2, 1), np.uint8)
    dx = ref.maxpool_backward(dy.astype(BF16), argmax, (1, 2, 2, 1), 1, 1, (0, 0, 0, 0))
    assert dx.dtype == BF16 and np.array_equal(dx.astype(W32), dy)   # windows 1x1: nothing summed
    a = np.array([1.0, 1.0, -3.0], np.float32)
    b = np.array([2.0 ** -8, 3 * 2.0 ** -8, 2.0 ** -7], np.float32)
    assert ref.add(a.astype(BF16), b.astype(BF16)).astype(W32).tolist() == [1.0, 1 + 2.0 ** -6, -3.0]


def test_bias_grad_and_softmax_of_bfloat16_are_float32():
    rng = np.random.default_rng(2)
    dy = bf16_values(rng, 300, 7)
    got = ref.bias_grad(dy)
    assert got.dtype == np.float32 and np.array_equal(got, ref.bias_grad(dy.astype(W32)))
    out = np.full(7, np.nan, np.float32)
    assert ref.bias_grad(dy, out=out) is out and np.array_equal(out, got)
    x = bf16_values(rng, 5, 10, scale=3.0)
    p = ref.softmax(x)
    assert p.dtype == np.float32 and np.array_equal(p, ref.softmax(x.astype(W32)))


@pytest.mark.parametrize("labels", ["int32", "onehot"])
def test_softmax_cross_entropy_of_bfloat16_logits(labels):
    """float32 math on the widened logits: the totals are the float32 call's, dlogits rounded once."""
    rng = np.random.default_rng(3)
    logits = bf16_values(rng, 9, 10, scale=3.0)
    idx = rng.integers(0, 10, 9).astype(np.int32)
    lab = idx if labels == "int32" else np.eye(10, dtype=np.float32)[idx]
    t16, t32 = np.array([1.0, 2.0]), np.array([1.0, 2.0])
    d = ref.softmax_cross_entropy(logits, lab, t16)
    same_bf16(d, ref.softmax_cross_entropy(logits.astype(W32), lab, t32), "dlogits")
    assert np.array_equal(t16, t32)


def test_bfloat16_operands_must_not_mix_with_float32():
    x = np.ones((2, 3), BF16)
    with pytest.raises(TypeError, match="b has dtype float32 but the other operands are bfloat16"):
        ref.add(x, np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="y has dtype float32 but the other operands are bfloat16"):
        ref.relu_backward(x, np.ones((2, 3), np.float32))


def test_cast_rounds_to_nearest_even_and_widens_exactly():
    halfway = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8), 1 + 2.0 ** -8 + 2.0 ** -20,
                        np.finfo(np.float32).max, np.inf, -np.inf, 1e-40, -0.0], np.float32)
    # ties to even (down, up), the sign, just past a tie (up), past the largest bf16 (to inf),
    # infinities, a subnormal, -0.0
    want = [1.0, 1 + 2.0 ** -6, -1.0, 1 + 2.0 ** -7, np.inf, np.inf, -np.inf]
    got = ref.cast(halfway, "bfloat16")
    assert got.dtype == BF16
    assert got.astype(W32)[:7].tolist() == want
    assert got.astype(W32)[7] == np.float32(1e-40).astype(BF16).astype(W32) != 0   # subnormals kept
    assert bf16_bits(got)[8] == 0x8000
    assert np.isnan(ref.cast(np.array([np.nan], np.float32), "bfloat16").astype(W32)[0])
    back = ref.cast(got, "float32")
    assert back.dtype == np.float32 and np.array_equal(back.view(np.uint32) >> 16, bf16_bits(got).astype(np.uint32))
    assert not np.any(back.view(np.uint32) & 0xFFFF)                     # widening is exact
    same = ref.cast(halfway, "float32")
    assert same is not halfway and np.array_equal(same, halfway)         # a copy
    with pytest.raises(ValueError, match="dtype must be one of"):
        ref.cast(halfway, "float16")
    with pytest.raises(TypeError, match="float64"):
        ref.cast(halfway.astype(np.float64), "bfloat16")


@pytest.mark.parametrize("update", ["sgd", "sgd_momentum", "adam", "rmsprop"])
def test_optimizers_write_the_bfloat16_copy_of_the_updated_weights(update):
    rng = np.random.default_rng(4)
    n = 37
    p, g = rand(rng, n), rand(rng, n)
    state = [rand(rng, n, scale=0.1) for _ in range(3)]
    plain_p, plain_state = p.copy(), [s.copy() for s in state]
    copy16 = np.zeros(n, BF16)

    def run(p, state, **kw):
        if update == "sgd":
            return ref.sgd_update(p, g, None, 0.1, 0.0, False, **kw)
        if update == "sgd_momentum":
            return ref.sgd_update(p, g, state[0], 0.1, 0.9, True, 5e-4, **kw)
        if update == "adam":
            return ref.adam_update(p, g, state[0], np.abs(state[1]), np.array([2], np.int32), 0.01, 0.9, 0.999,
                                   1e-7, **kw)
        return ref.rmsprop_update(p, g, np.abs(state[0]), state[1], state[2], 0.01, 0.9, 0.5, 1e-7, **kw)

    run(p, state, p_bf16=copy16)
    run(plain_p, plain_state)
    assert np.array_equal(p, plain_p)                     # the float32 master update is unchanged
    assert np.array_equal(bf16_bits(copy16), bf16_bits(p.astype(BF16)))
    for bad, match in ((np.zeros(n, np.float32), "p_bf16 must be bfloat16"),
                       (np.zeros(n + 1, BF16), "must be the bfloat16 copy")):
        with pytest.raises((TypeError, ValueError), match=match):
            run(p, state, p_bf16=bad)


def test_in_place_moves_take_bfloat16():
    rng = np.random.default_rng(5)
    src = bf16_values(rng, 6, 4, 5)
    dst = np.zeros((6, 4, 5), BF16)
    ref.copy(dst, src)
    assert np.array_equal(bf16_bits(dst), bf16_bits(src))
    wide = np.zeros((6, 4, 8), BF16)
    ref.copy_channels(wide, src, 3, 1, 4)
    assert np.array_equal(bf16_bits(wide[..., 3:7]), bf16_bits(src[..., 1:5]))
    picked = np.zeros((3, 4, 5), BF16)
    ref.gather_rows(picked, src, np.array([5, 0, 5], np.int32))
    assert np.array_equal(bf16_bits(picked), bf16_bits(src[[5, 0, 5]]))
    with pytest.raises(TypeError, match="gather_rows moves"):
        ref.gather_rows(picked, src.astype(W32), np.array([5, 0, 5], np.int32))


# ------------------------------------------------------------------ max-pooling

POOL_CASES = [  # (N, H, W, C, pool, stride, padding)
    (2, 6, 6, 3, (2, 2), (2, 2), (0, 0, 0, 0)),
    (1, 7, 9, 2, (2, 2), (2, 2), (0, 0, 0, 0)),      # odd sizes: the last row/column is dropped
    (2, 9, 9, 2, (3, 3), (2, 2), (0, 0, 0, 0)),      # overlapping windows
    (1, 8, 7, 3, (3, 3), (2, 2), (1, 1, 0, 1)),      # asymmetric padding
    (1, 5, 5, 1, (2, 2), (2, 2), (0, 1, 0, 1)),      # Keras 'same' on an odd size
    (2, 7, 6, 2, (3, 2), (1, 3), (2, 0, 1, 1)),
]


def distinct(rng, shape):
    """Values at least 0.01 apart, so that no window holds a tie within the difference step."""
    return rng.permutation(np.arange(np.prod(shape))).reshape(shape) * 0.01 - 1.0


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool_forward_matches_loops(case):
    N, H, W, C, pool, stride, padding = case
    x = rand(np.random.default_rng(3), N, H, W, C, dtype=np.float32)
    y, argmax = ref.maxpool_forward(x, pool, stride, padding)
    y_loop, argmax_loop = loops.maxpool(x, pool, stride, padding)
    assert y.dtype == np.float32 and argmax.dtype == np.uint8
    assert np.array_equal(y, y_loop) and np.array_equal(argmax, argmax_loop)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool_gradient(case):
    N, H, W, C, pool, stride, padding = case
    rng = np.random.default_rng(4)
    x = distinct(rng, (N, H, W, C))
    y, argmax = ref.maxpool_forward(x, pool, stride, padding)
    dy = rand(rng, *y.shape, dtype=np.float64)

    def loss():
        return float(np.sum(ref.maxpool_forward(x, pool, stride, padding)[0] * dy))
    check_grad(ref.maxpool_backward(dy, argmax, x.shape, pool, stride, padding), loss, x, "dx")


def test_maxpool_first_max_wins_and_padding_never_wins():
    x = np.full((1, 3, 3, 1), -np.inf)  # all -inf: the padding (also -inf inside) must still lose
    x[0, 2, 2, 0] = 5.0
    x[0, 1, 1, 0] = 5.0
    y, argmax = ref.maxpool_forward(x, (3, 3), (2, 2), (1, 1, 1, 1))
    assert y[0, :, :, 0].tolist() == [[5.0, 5.0], [5.0, 5.0]]
    # x[1, 1] sits at window positions 8, 6, 2, 0; the last window also holds x[2, 2] at 4: first wins
    assert argmax[0, :, :, 0].tolist() == [[8, 6], [2, 0]]
    _, argmax = ref.maxpool_forward(np.full((1, 2, 2, 1), -np.inf), (2, 2), (1, 1), (1, 0, 1, 0))
    assert argmax[0, 0, 0, 0] == 3  # the only position inside x, although the padding ties
    _, argmax = ref.maxpool_forward(np.ones((1, 2, 2, 1)), (2, 2), (2, 2), (0, 0, 0, 0))
    assert argmax.item() == 0


# ------------------------------------------------------------------ dense, matmul, relu, bias

@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 2), (5, 7, 4)], ids=str)
def test_dense_forward_matches_loops_and_gradients(shape, relu):
    N, I, O = shape
    rng = np.random.default_rng(5)
    x, w, b = rand(rng, N, I, dtype=np.float64), rand(rng, I, O, dtype=np.float64), rand(rng, O, dtype=np.float64)
    assert_close(ref.dense_forward(x, w, b, relu), loops.dense(x, w, b, relu), rtol=1e-12)
    assert_close(ref.dense_forward(x, w, None, relu), loops.dense(x, w, None, relu), rtol=1e-12)
    dy = rand(rng, N, O, dtype=np.float64)

    def loss():
        return float(np.sum(ref.dense_forward(x, w, b, False) * dy))
    check_grad(ref.matmul(dy, w, False, True), loss, x, "dx")
    check_grad(ref.matmul(x, dy, True, False), loss, w, "dw")
    check_grad(ref.bias_grad(dy), loss, b, "db")


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_transposes(trans_a, trans_b):
    rng = np.random.default_rng(6)
    a = rand(rng, 3, 5) if not trans_a else rand(rng, 5, 3)
    b = rand(rng, 5, 4) if not trans_b else rand(rng, 4, 5)
    out = ref.matmul(a, b, trans_a, trans_b)
    expect = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert_close(out, expect, rtol=1e-6)


def test_relu_forward_and_gradient():
    rng = np.random.default_rng(7)
    x = rand(rng, 3, 5, dtype=np.float64)
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink
    y = ref.relu_forward(x)
    assert np.array_equal(y, np.maximum(x, 0))
    dy = rand(rng, 3, 5, dtype=np.float64)
    check_grad(ref.relu_backward(dy, y), lambda: float(np.sum(ref.relu_forward(x) * dy)), x, "dx")


@pytest.mark.parametrize("slope", [0.3, 0.0, 2.0])
def test_leaky_relu_forward_and_gradient(slope):
    rng = np.random.default_rng(17)
    x = rand(rng, 3, 5, dtype=np.float64)
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink
    y = ref.leaky_relu_forward(x, slope)
    assert np.array_equal(y, np.where(x > 0, x, slope * x)) and y.dtype == np.float64
    dy = rand(rng, 3, 5, dtype=np.float64)
    check_grad(ref.leaky_relu_backward(dy, x, slope),
               lambda: float(np.sum(ref.leaky_relu_forward(x, slope) * dy)), x, "dx")
    # at the kink, Keras's rule: x >= 0 takes the identity's gradient (-0.0 too)
    x32 = np.array([0.0, -0.0, -1.0, np.nan], np.float32)
    assert ref.leaky_relu_backward(np.ones(4, np.float32), x32, 0.5).tolist() == [1.0, 1.0, 0.5, 0.5]
    assert ref.leaky_relu_forward(x32, slope).dtype == np.float32
    # bfloat16: float32 math on the widened values, rounded once
    xb, dyb = dtypes.to_bfloat16(rand(rng, 4, 6)), dtypes.to_bfloat16(rand(rng, 4, 6))
    yb = ref.leaky_relu_forward(xb, 0.3)
    assert yb.dtype == dtypes.bfloat16
    assert np.array_equal(yb, dtypes.to_bfloat16(ref.leaky_relu_forward(dtypes.to_float32(xb), 0.3)))
    assert np.array_equal(ref.leaky_relu_backward(dyb, xb, 0.3),
                          dtypes.to_bfloat16(ref.leaky_relu_backward(dtypes.to_float32(dyb),
                                                                     dtypes.to_float32(xb), 0.3)))


@pytest.mark.parametrize("slope, error", [(-0.5, ValueError), (float("inf"), ValueError), (None, TypeError)])
def test_leaky_relu_refuses_a_bad_slope(slope, error):
    with pytest.raises(error, match="negative_slope"):
        ref.leaky_relu_forward(np.ones(3, np.float32), slope)


def test_bias_grad_sums_every_axis_but_the_last():
    dy = rand(np.random.default_rng(8), 2, 3, 4, 5)
    assert_close(ref.bias_grad(dy), dy.astype(np.float64).sum(axis=(0, 1, 2)), rtol=1e-6)
    assert ref.bias_grad(dy).dtype == np.float32


# ------------------------------------------------------------------ softmax and cross-entropy

def test_softmax_rows_sum_to_one_and_survive_large_logits():
    x = np.array([[1000.0, 1000.0, -1000.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    s = ref.softmax(x)
    assert s.dtype == np.float32 and np.all(np.isfinite(s))
    assert_close(s[0], [0.5, 0.5, 0.0], rtol=1e-6)
    e = np.exp(np.array([1.0, 2.0, 3.0]))
    assert_close(s[1], e / e.sum(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["int", "int64", "onehot", "soft"])
def test_softmax_cross_entropy_loss_accuracy_and_gradient(kind):
    rng = np.random.default_rng(9)
    N, classes = 5, 4
    logits = rand(rng, N, classes, dtype=np.float64, scale=3.0)
    index = rng.integers(0, classes, N)
    onehot = np.eye(classes)[index]
    labels = {"int": index.astype(np.int32), "int64": index, "onehot": onehot,
              "soft": rng.dirichlet(np.ones(classes), N)}[kind]
    rows = onehot if kind != "soft" else labels
    totals = np.zeros(2)
    dlogits = ref.softmax_cross_entropy(logits, labels, totals)
    loss_sum, correct = loops.softmax_cross_entropy(logits, rows)
    assert totals[0] == pytest.approx(loss_sum, rel=1e-12) and totals[1] == correct
    ref.softmax_cross_entropy(logits, labels, totals)
    assert totals[0] == pytest.approx(2 * loss_sum, rel=1e-12) and totals[1] == 2 * correct

    def mean_loss():
        t = np.zeros(2)
        ref.softmax_cross_entropy(logits, labels, t)
        return t[0] / N
    check_grad(dlogits, mean_loss, logits, "dlogits")


def test_softmax_cross_entropy_is_stable_and_counts_first_max():
    logits = np.array([[1000.0, 0.0, 1000.0], [-1000.0, 0.0, 5.0]], dtype=np.float32)
    totals = np.zeros(2)
    d = ref.softmax_cross_entropy(logits, np.array([2, 2]), totals)
    assert d.dtype == np.float32 and np.all(np.isfinite(d)) and np.isfinite(totals[0])
    assert totals[0] == pytest.approx(np.log(2.0) + np.log1p(np.exp(-5.0) + np.exp(-1005.0)), rel=1e-5)
    assert totals[1] == 1  # row 0's tie goes to class 0, the first maximum


# ------------------------------------------------------------------ dropout (Philox 4x32-10)

@pytest.mark.parametrize("counter, key, expect", [
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
])
def test_philox_random123_known_answers(counter, key, expect):
    assert tuple(int(w) for w in ref.philox4x32_10(counter, key)) == expect


def test_dropout_keep_is_philox_of_seed_step_and_index():
    seed, step, n = (7 << 32) | 3, 5, 11
    keep = ref.dropout_keep(n, 0.5, seed, np.array([step], np.int32))
    for i in (0, 5, 10):
        word = ref.philox4x32_10((i // 4, 0, step, 0), (3, 7))[i % 4]
        assert keep[i] == (int(word) >= 2 ** 31)
    assert np.array_equal(keep, ref.dropout_keep(n, 0.5, seed, step))  # replay gives the same mask
    assert not np.array_equal(ref.dropout_keep(4000, 0.5, seed, step),
                              ref.dropout_keep(4000, 0.5, seed, step + 1))
    assert ref.dropout_keep(100, 0.0, 1, 0).all()


def test_a_slice_of_the_batch_draws_what_the_whole_batch_draws_for_it():
    """offset (the global index of the first sample): each slice of a batch gets the masks, windows
    and colour offsets that one process draws for those samples of the whole batch."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 5, 6, 3))      # 90 elements per sample: slices start mid-Philox-group
    step = np.array([4], np.int32)
    basis = 0.1 * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES)[None, :]
    whole = (ref.dropout_forward(x, 0.5, 9, step), ref.crop_forward(x, 3, 4, True, True, 9, step),
             ref.pca_noise_forward(x, basis, 9, step))
    for lo, hi in ((0, 3), (3, 4), (4, 7), (1, 6)):
        part = x[lo:hi]
        got = (ref.dropout_forward(part, 0.5, 9, step, lo), ref.crop_forward(part, 3, 4, True, True, 9, step, lo),
               ref.pca_noise_forward(part, basis, 9, step, lo))
        for g, w in zip(got, whole):
            assert np.array_equal(g, w[lo:hi]), (lo, hi)
    assert np.array_equal(ref.dropout_keep(13, 0.5, 9, 4, start=6), ref.dropout_keep(19, 0.5, 9, 4)[6:])
    assert not np.array_equal(ref.dropout_forward(x[3:4], 0.5, 9, step), whole[0][3:4])   # offset 0: other draws
    with pytest.raises(ValueError, match="offset must be an integer"):
        ref.dropout_forward(x, 0.5, 9, step, -1)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keeps_about_one_minus_rate(rate):
    keep = ref.dropout_keep(200_000, rate, 1234, np.array([3], np.int32))
    assert abs(keep.mean() - (1 - rate)) < 0.005  # ~5 standard deviations at this n


def test_dropout_forward_backward_scale_and_gradient():
    rng = np.random.default_rng(10)
    x = rand(rng, 2, 3, 4, dtype=np.float64)
    step = np.array([2], np.int32)
    y = ref.dropout_forward(x, 0.25, 99, step)
    keep = ref.dropout_keep(x.size, 0.25, 99, step).reshape(x.shape)
    assert_close(y, np.where(keep, x / 0.75, 0.0), rtol=1e-12)
    assert ref.dropout_forward(x.astype(np.float32), 0.25, 99, step).dtype == np.float32
    dy = rand(rng, *x.shape, dtype=np.float64)
    check_grad(ref.dropout_backward(dy, 0.25, 99, step),
               lambda: float(np.sum(ref.dropout_forward(x, 0.25, 99, step) * dy)), x, "dx")


# ------------------------------------------------------------------ LRN

@pytest.mark.parametrize("size, C", [(5, 7), (3, 2), (1, 3), (5, 3)])
def test_lrn_forward_matches_loops_and_gradient(size, C):
    rng = np.random.default_rng(11)
    x = rand(rng, 2, 3, 2, C, dtype=np.float64, scale=3.0)
    alpha, beta, k = 0.05, 0.75, 2.0  # a large alpha so that the cross-channel terms matter
    y, scale = ref.lrn_forward(x, size, alpha, beta, k)
    assert_close(y, loops.lrn(x, size, alpha, beta, k), rtol=1e-12)
    assert_close(y, x * scale ** -beta, rtol=1e-12)
    dy = rand(rng, *x.shape, dtype=np.float64)
    check_grad(ref.lrn_backward(dy, x, y, scale, size, alpha, beta, k),
               lambda: float(np.sum(ref.lrn_forward(x, size, alpha, beta, k)[0] * dy)), x, "dx")
    y32, _ = ref.lrn_forward(x.astype(np.float32), size, alpha, beta, k)
    assert y32.dtype == np.float32


# ------------------------------------------------------------------ optimizers and small ops

@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_update_is_one_keras_step(momentum, nesterov):
    rng = np.random.default_rng(12)
    p, g, v = rand(rng, 7), rand(rng, 7), rand(rng, 7)
    lr = 0.1
    v_new = momentum * v.astype(np.float64) - lr * g  # Keras: v = m*v - lr*g
    p_new = p + (momentum * v_new - lr * g if nesterov else v_new)
    ref.sgd_update(p, g, v, lr, momentum, nesterov)
    assert_close(p, p_new, rtol=1e-6, name="p")
    assert_close(v, v_new, rtol=1e-6, name="v")
    q = rand(rng, 7)
    q_expect = q.astype(np.float64) - lr * g
    ref.sgd_update(q, g, None, lr, 0.0, False)
    assert_close(q, q_expect, rtol=1e-6, name="p without velocity")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_weight_decay_is_the_alexnet_papers_rule(momentum):
    # v = momentum*v - lr*(g + wd*p); p += v (Krizhevsky et al. 2012, section 5, with wd 0.0005)
    rng = np.random.default_rng(14)
    p, g, v = rand(rng, 9), rand(rng, 9), rand(rng, 9)
    lr, wd = 0.01, 5e-4
    v_new = momentum * v.astype(np.float64) - lr * (g + wd * p.astype(np.float64))
    p_new = p + v_new
    g_before = g.copy()
    ref.sgd_update(p, g, v if momentum else None, lr, momentum, False, wd)
    assert_close(p, p_new, rtol=1e-6, name="p")
    assert np.array_equal(g, g_before)                      # the gradient buffer is left as it was


@pytest.mark.parametrize("step_value", [0, 4])
def test_adam_update_is_one_keras_step(step_value):
    rng = np.random.default_rng(13)
    p, g = rand(rng, 9), rand(rng, 9)
    m, v = rand(rng, 9, scale=0.1), np.abs(rand(rng, 9, scale=0.1))
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    t = step_value + 1
    m_new = b1 * m.astype(np.float64) + (1 - b1) * g
    v_new = b2 * v.astype(np.float64) + (1 - b2) * g.astype(np.float64) ** 2
    p_new = p - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m_new / (np.sqrt(v_new) + eps)
    step = np.array([step_value], np.int32)
    ref.adam_update(p, g, m, v, step, lr, b1, b2, eps)
    assert step[0] == step_value
    assert_close(m, m_new, rtol=1e-6, name="m")
    assert_close(v, v_new, rtol=1e-6, name="v")
    assert_close(p, p_new, rtol=1e-6, name="p")


def test_increment_add_copy():
    step = np.array([41], np.int32)
    ref.increment(step)
    assert step[0] == 42
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    assert np.array_equal(ref.add(a, b), a + 1)
    dst = np.zeros((2, 3))
    ref.copy(dst, a)
    assert np.array_equal(dst, a)


def test_copy_channels():
    src = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    dst = np.full((2, 3, 4), -1.0, np.float32)
    assert ref.copy_channels(dst, src, 1, 2, 3) is None
    assert np.array_equal(dst[..., 1:], src[..., 2:5])
    assert np.all(dst[..., 0] == -1.0)     # channels outside the range are left alone


def test_gather_rows():
    src = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    dst = np.full((4, 2, 3), np.nan, np.float32)
    assert ref.gather_rows(dst, src, np.array([4, 0, 4, 2], np.int32)) is None
    assert np.array_equal(dst, src[[4, 0, 4, 2]])
    labels, picked = np.arange(5, dtype=np.int32), np.zeros(2, np.int32)
    ref.gather_rows(picked, labels, np.array([3, 1], np.int32))
    assert picked.tolist() == [3, 1]


# ------------------------------------------------------------------ bad inputs

def _f(*shape):
    return np.ones(shape, np.float32)


BAD_INPUTS = [
    ("x 3-D", lambda: ref.conv2d_forward(_f(4, 4, 1), _f(3, 3, 1, 2), None, (1, 1), (0,) * 4, False),
     ValueError, "x must be 4-D"),
    ("channel mismatch (NCHW)", lambda: ref.conv2d_forward(_f(1, 3, 8, 8), _f(3, 3, 3, 2), None, (1, 1), (0,) * 4, False),
     ValueError, "channel mismatch"),
    ("kernel too large", lambda: ref.conv2d_forward(_f(1, 4, 4, 1), _f(5, 5, 1, 2), None, (1, 1), (0,) * 4, False),
     ValueError, "non-positive output size"),
    ("bias length", lambda: ref.conv2d_forward(_f(1, 4, 4, 1), _f(3, 3, 1, 2), _f(3), (1, 1), (0,) * 4, False),
     ValueError, "bias length"),
    ("padding not explicit", lambda: ref.conv2d_forward(_f(1, 4, 4, 1), _f(3, 3, 1, 2), None, (1, 1), "same", False),
     ValueError, "padding must be explicit"),
    ("negative padding", lambda: ref.conv2d_forward(_f(1, 4, 4, 1), _f(3, 3, 1, 2), None, (1, 1), (0, -1, 0, 0), False),
     ValueError, "padding[1]"),
    ("zero stride", lambda: ref.conv2d_forward(_f(1, 4, 4, 1), _f(3, 3, 1, 2), None, (0, 1), (0,) * 4, False),
     ValueError, "stride[0]"),
    ("mixed dtypes", lambda: ref.conv2d_forward(_f(1, 4, 4, 1), np.ones((3, 3, 1, 2)), None, (1, 1), (0,) * 4, False),
     TypeError, "w has dtype float64"),
    ("integer input", lambda: ref.relu_forward(np.ones(3, np.int32)), TypeError, "x must be float32, bfloat16 or float64"),
    ("list input", lambda: ref.relu_forward([1.0]), TypeError, "x must be a NumPy array"),
    ("empty batch", lambda: ref.conv2d_forward(_f(0, 4, 4, 1), _f(3, 3, 1, 2), None, (1, 1), (0,) * 4, False),
     ValueError, "x is empty"),
    ("dy shape", lambda: ref.conv2d_backward_data(_f(1, 3, 3, 2), _f(3, 3, 1, 2), (1, 4, 4, 1), (1, 1), (0,) * 4),
     ValueError, "dy must have shape"),
    ("w_shape channels", lambda: ref.conv2d_backward_weights(_f(1, 4, 4, 2), _f(1, 2, 2, 2), (3, 3, 1, 2), (1, 1), (0,) * 4),
     ValueError, "channel mismatch"),
    ("pool padding", lambda: ref.maxpool_forward(_f(1, 4, 4, 1), (2, 2), (2, 2), (2, 0, 0, 0)),
     ValueError, "smaller than the pool"),
    ("pool too big for uint8", lambda: ref.maxpool_forward(_f(1, 16, 16, 1), (16, 16), (1, 1), (0,) * 4),
     ValueError, "at most 255"),
    ("argmax dtype", lambda: ref.maxpool_backward(_f(1, 2, 2, 1), np.zeros((1, 2, 2, 1), np.int64), (1, 4, 4, 1), (2, 2), (2, 2), (0,) * 4),
     TypeError, "argmax must be a uint8"),
    ("dense features", lambda: ref.dense_forward(_f(2, 3), _f(4, 5), None, False), ValueError, "x has 3 features"),
    ("matmul inner", lambda: ref.matmul(_f(2, 3), _f(2, 3), False, False), ValueError, "inner dimensions"),
    ("label out of range", lambda: ref.softmax_cross_entropy(_f(2, 3), np.array([0, 3]), np.zeros(2)),
     ValueError, "label 3 is out of range"),
    ("negative label", lambda: ref.softmax_cross_entropy(_f(2, 3), np.array([-1, 0]), np.zeros(2)),
     ValueError, "label -1 is out of range"),
    ("one-hot width", lambda: ref.softmax_cross_entropy(_f(2, 3), _f(2, 4), np.zeros(2)),
     ValueError, "must have 3 columns"),
    ("float indices", lambda: ref.softmax_cross_entropy(_f(2, 3), np.array([0.0, 1.0]), np.zeros(2)),
     TypeError, "must be integers"),
    ("totals dtype", lambda: ref.softmax_cross_entropy(_f(2, 3), np.array([0, 1]), np.zeros(2, np.float32)),
     TypeError, "totals must be float64"),
    ("dropout rate", lambda: ref.dropout_keep(4, 1.0, 0, 0), ValueError, "rate must be in [0, 1)"),
    ("dropout seed", lambda: ref.dropout_keep(4, 0.5, -1, 0), ValueError, "seed must be"),
    ("dropout step", lambda: ref.dropout_forward(_f(4), 0.5, 0, np.zeros(2, np.int32)), ValueError, "step must be"),
    ("lrn even size", lambda: ref.lrn_forward(_f(1, 2, 2, 4), 4, 1e-4, 0.75, 2.0), ValueError, "size must be a positive odd integer"),
    ("sgd no velocity", lambda: ref.sgd_update(_f(3), _f(3), None, 0.1, 0.9, False), ValueError, "v (the velocity"),
    ("adam length", lambda: ref.adam_update(_f(3), _f(4), _f(3), _f(3), np.zeros(1, np.int32), 1e-3, 0.9, 0.999, 1e-7),
     ValueError, "g float32 (4,) does not match p"),
    ("in-place on a strided view", lambda: ref.sgd_update(_f(6)[::2], _f(3), None, 0.1, 0.0, False),
     ValueError, "p must be a writeable C-contiguous"),
    ("increment float", lambda: ref.increment(np.zeros(1)), ValueError, "step must be an integer array"),
    ("add shapes", lambda: ref.add(_f(2), _f(3)), ValueError, "same shape"),
    ("copy dtype", lambda: ref.copy(_f(2), np.ones(2)), ValueError, "must match dst"),
    ("copy_channels range", lambda: ref.copy_channels(_f(2, 3), _f(2, 5), 1, 3, 3), ValueError,
     "channels [3, 6) of src (5 channels)"),
    ("copy_channels rows", lambda: ref.copy_channels(_f(2, 3), _f(3, 3), 0, 0, 1), ValueError,
     "same shape but for the last"),
    ("copy_channels width", lambda: ref.copy_channels(_f(2, 3), _f(2, 3), 0, 0, 0), ValueError, "out of range"),
    ("copy_channels dtype", lambda: ref.copy_channels(_f(2, 3), np.ones((2, 3)), 0, 0, 1), TypeError,
     "src has dtype float64"),
    ("gather_rows index", lambda: ref.gather_rows(_f(2, 3), _f(4, 3), np.array([0, 4], np.int32)), IndexError,
     "rows must lie in [0, 4)"),
    ("gather_rows rows dtype", lambda: ref.gather_rows(_f(2, 3), _f(4, 3), np.array([0, 1])), TypeError,
     "1-D int32"),
    ("gather_rows shape", lambda: ref.gather_rows(_f(2, 3), _f(4, 2), np.array([0, 1], np.int32)), ValueError,
     "trailing shape"),
    ("gather_rows dtype", lambda: ref.gather_rows(np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1], np.int32)),
     TypeError, "float32, bfloat16 or int32"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_by_name(call, error, message):
    with pytest.raises(error) as excinfo:
        call()
    assert message in str(excinfo.value)


# ------------------------------------------------------------------ crop (random crop and mirror)

def test_crop_windows_centre_and_random():
    top, left, mirrored = ref.crop_windows(3, (256, 250), (227, 227), False, True, 5, 0)
    assert list(top) == [14] * 3 and list(left) == [11] * 3 and not mirrored.any()
    top, left, mirrored = ref.crop_windows(20000, (256, 256), (227, 227), True, True, 5, np.array([2], np.int32))
    assert top.min() == 0 and top.max() == 29 and left.min() == 0 and left.max() == 29
    assert abs(mirrored.mean() - 0.5) < 0.02 and abs(top.mean() - 14.5) < 0.3
    word = ref.philox4x32_10((7, 0, 2, ref.CROP_STREAM), (5, 0))
    assert (top[7], left[7], mirrored[7]) == (int(word[0]) % 30, int(word[1]) % 30, int(word[2]) >= 2 ** 31)
    again = ref.crop_windows(20000, (256, 256), (227, 227), True, True, 5, 2)
    assert all(np.array_equal(a, b) for a, b in zip(again, (top, left, mirrored)))   # a replay: the same
    nxt = ref.crop_windows(20000, (256, 256), (227, 227), True, True, 5, 3)
    assert not np.array_equal(nxt[0], top)                                             # the next step: new
    assert not ref.crop_windows(100, (9, 9), (4, 4), True, False, 5, 3)[2].any()       # flip off: never mirrored


def test_crop_forward_takes_the_window_and_backward_is_its_adjoint():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 9, 8, 3))
    for random, flip in ((False, False), (True, False), (True, True)):
        y = ref.crop_forward(x, 5, 4, random, flip, 11, 4)
        top, left, mirrored = ref.crop_windows(6, (9, 8), (5, 4), random, flip, 11, 4)
        for n in range(6):
            window = x[n, top[n]:top[n] + 5, left[n]:left[n] + 4]
            assert np.array_equal(y[n], window[:, ::-1] if mirrored[n] else window)
        dy = rng.standard_normal(y.shape)
        dx = ref.crop_backward(dy, x.shape, random, flip, 11, 4)
        assert np.isclose(np.sum(y * dy), np.sum(x * dx))      # <crop(x), dy> == <x, crop'(dy)>
        assert np.count_nonzero(dx) == dy.size
    with pytest.raises(ValueError, match="crop 10x4 is larger than the 9x8 images"):
        ref.crop_forward(x, 10, 4, False, False, 0, 0)
    with pytest.raises(ValueError, match="does not match x_shape"):
        ref.crop_backward(np.zeros((6, 5, 4, 2)), x.shape, False, False, 0, 0)


# ------------------------------------------------------------------ PCA colour noise (AlexNet)

def _imagenet_basis(stddev=0.1):
    return stddev * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES)[None, :]


def test_pca_noise_offsets_follow_the_papers_law():
    basis = _imagenet_basis()
    offsets = ref.pca_noise_offsets(200_000, basis, 7, np.array([3], np.int32))
    assert offsets.dtype == np.float32 and offsets.shape == (200_000, 3)
    np.testing.assert_allclose(offsets.std(axis=0), np.sqrt((basis ** 2).sum(axis=1)), rtol=0.01)
    np.testing.assert_allclose(offsets.mean(axis=0), 0, atol=1e-4)
    w0, w1, w2, w3 = (float(w) for w in ref.philox4x32_10((5, 0, 3, ref.PCA_STREAM), (7, 0)))
    r01, r2 = np.sqrt(-2 * np.log((w0 + 1) / 2 ** 32)), np.sqrt(-2 * np.log((w2 + 1) / 2 ** 32))
    z = [r01 * np.cos(2 * np.pi * w1 / 2 ** 32), r01 * np.sin(2 * np.pi * w1 / 2 ** 32),
         r2 * np.cos(2 * np.pi * w3 / 2 ** 32)]                 # Box-Muller on image 5's Philox words
    np.testing.assert_allclose(offsets[5], basis @ z, rtol=1e-6)
    assert not np.array_equal(offsets[:100], ref.pca_noise_offsets(100, basis, 7, 4))   # a new step: new draws
    np.testing.assert_array_equal(offsets[:100], ref.pca_noise_offsets(100, basis, 7, 3))  # a replay: the same


def test_pca_noise_forward_adds_one_offset_per_image():
    x = np.random.default_rng(1).random((4, 5, 6, 3), dtype=np.float32)
    y = ref.pca_noise_forward(x, _imagenet_basis(), 11, 2)
    offsets = ref.pca_noise_offsets(4, _imagenet_basis(), 11, 2)
    np.testing.assert_array_equal(y, x + offsets[:, None, None, :])
    with pytest.raises(ValueError, match="needs RGB images"):
        ref.pca_noise_forward(x[..., :2], _imagenet_basis(), 11, 2)
    with pytest.raises(ValueError, match="basis must be 3x3"):
        ref.pca_noise_forward(x, np.eye(2), 11, 2)
