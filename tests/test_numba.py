"""Numba CUDA kernels (fastcnn/backend/numba/) against the NumPy reference.

Without a GPU (conftest sets NUMBA_ENABLE_CUDASIM=1) the kernels run in Numba's
CUDA simulator on NumPy arrays: tiny shapes only (the simulator runs each CUDA
thread as a Python thread).  On a GPU the same tests run on CuPy arrays, and the
`gpu` tests add every numba variant at LeNet-5 sizes (batch 200) and a launch
inside a captured CUDA graph.  Outputs go into NaN-poisoned ``out=`` buffers so
that an element a kernel forgets to write fails.  The PTX test compiles every
kernel for sm_90 in a subprocess without the simulator and runs ``ptxas -v`` on
it: registers, shared memory and spills are printed (``pytest -s``), spills fail.

    pytest tests/test_numba.py                 # about 2 minutes on 2 cores
    pytest tests/test_numba.py -s -k ptx       # the resource table
"""
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_close, rand

import fastcnn
import fastcnn.functional as F
from fastcnn import backend, dtypes
from fastcnn.backend import numba as nb
from fastcnn.backend import reference as ref
from fastcnn.backend import registry

REPO = Path(__file__).resolve().parents[1]
cuda = nb.cuda   # numba.cuda (or None without numba); a module global, as the simulator requires
EW, RED, GEMM = 1e-6, 1e-5, 1e-5
pytestmark = pytest.mark.skipif(nb.unavailable_reason() is not None,
                                reason=f"numba backend unavailable: {nb.unavailable_reason()}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def dev(a):
    return nb.asarray(a)


def host(a):
    return nb.to_host(a)


def nan_out(shape, dtype=np.float32):
    """A NaN-filled (or 0xEE-filled, for integers) output buffer on the backend's device."""
    a = np.empty(shape, dtype)
    a.fill(np.nan if np.issubdtype(dtype, np.floating) else 0xEE)
    return dev(a)


# ---------------------------------------------------------------- GEMM engine

@pytest.mark.parametrize("cfg", sorted(nb.TILE_CONFIGS))
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_every_tile_config(rng, cfg, trans_a, trans_b):
    M, K, N = 5, 11, (19 if cfg == "64x64" else 7)
    a = rand(rng, *((K, M) if trans_a else (M, K)))
    b = rand(rng, *((N, K) if trans_b else (K, N)))
    out = nan_out((M, N))
    with nb.tile_config(cfg):
        got = nb.matmul(dev(a), dev(b), trans_a, trans_b, out=out)
    assert got is out
    assert_close(host(got), ref.matmul(a, b, trans_a, trans_b), GEMM, f"matmul {cfg}")


@pytest.mark.parametrize("M,K,N,trans_a,trans_b", [
    (128, 17, 128, False, True),    # one full tile: unguarded interior loads, then a 1-deep K edge
    (130, 9, 129, True, False),     # an interior tile plus row/column edge tiles
    (128, 16, 128, False, False),   # interior only, two whole K slices (the prefetch path)
    (3, 8, 131, True, True),
])
def test_matmul_128x128_kernel_interior_and_edges(rng, M, K, N, trans_a, trans_b):
    """The generated large-problem kernel (one per transpose pair), at tile-sized shapes."""
    a = rand(rng, *((K, M) if trans_a else (M, K)))
    b = rand(rng, *((N, K) if trans_b else (K, N)))
    with nb.tile_config("128x128"):
        got = nb.matmul(dev(a), dev(b), trans_a, trans_b, out=nan_out((M, N)))
    assert_close(host(got), ref.matmul(a, b, trans_a, trans_b), GEMM, "matmul 128x128")


def test_dense_forward_128x128_epilogue(rng):
    x, w, b = rand(rng, 129, 5), rand(rng, 5, 7), rand(rng, 7)
    with nb.tile_config("128x128"):
        got = nb.dense_forward(dev(x), dev(w), dev(b), True, out=nan_out((129, 7)))
    assert_close(host(got), ref.dense_forward(x, w, b, True), GEMM, "dense 128x128")


def test_matmul_split_k_and_batch_one(rng):
    # M x N is one tile and K spans 66 K-tiles: split along K into partial sums.
    a, b = rand(rng, 1, 530), rand(rng, 530, 3)
    with nb.tile_config("64x16"):
        got = nb.matmul(dev(a), dev(b))
    assert_close(host(got), ref.matmul(a, b, False, False), GEMM, "split-K matmul")


@pytest.mark.parametrize("with_bias,relu", [(True, True), (True, False), (False, True)])
def test_dense_forward(rng, with_bias, relu):
    x, w, b = rand(rng, 3, 13), rand(rng, 13, 9), rand(rng, 9)
    bias = b if with_bias else None
    got = nb.dense_forward(dev(x), dev(w), dev(bias) if with_bias else None, relu, out=nan_out((3, 9)))
    assert_close(host(got), ref.dense_forward(x, w, bias, relu), GEMM, "dense_forward")


# N, H, W, C, R, S, K, stride, padding (top, bottom, left, right)
CONV_CASES = [
    (1, 5, 5, 1, 3, 3, 2, (1, 1), (1, 1, 1, 1)),      # batch 1, one channel, 'same'
    (2, 7, 6, 3, 3, 2, 4, (2, 3), (0, 1, 2, 0)),      # odd sizes, strides 2/3, lopsided padding
    (1, 6, 7, 2, 5, 5, 3, (3, 2), (2, 2, 2, 2)),      # stride 3 with a 5x5 kernel
    (1, 4, 3, 2, 1, 1, 17, (1, 1), (0, 0, 0, 0)),     # 1x1, 17 outputs: more than one N tile
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])) + f"s{c[7]}p{c[8]}")
def test_conv2d_forward_and_backward(rng, case):
    N, H, W, C, R, S, K, stride, padding = case
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K), rand(rng, K)
    y_ref = ref.conv2d_forward(x, w, b, stride, padding, True)
    y = nb.conv2d_forward(dev(x), dev(w), dev(b), stride, padding, True, out=nan_out(y_ref.shape))
    assert_close(host(y), y_ref, GEMM, "conv2d_forward")
    dy = rand(rng, *y_ref.shape)
    dx = nb.conv2d_backward_data(dev(dy), dev(w), x.shape, stride, padding, out=nan_out(x.shape))
    assert_close(host(dx), ref.conv2d_backward_data(dy, w, x.shape, stride, padding), GEMM,
                 "conv2d_backward_data")
    dw = nb.conv2d_backward_weights(dev(x), dev(dy), w.shape, stride, padding, out=nan_out(w.shape))
    assert_close(host(dw), ref.conv2d_backward_weights(x, dy, w.shape, stride, padding), GEMM,
                 "conv2d_backward_weights")


def test_conv2d_forward_no_bias_no_relu(rng):
    x, w = rand(rng, 1, 4, 5, 2), rand(rng, 2, 2, 2, 3)
    got = nb.conv2d_forward(dev(x), dev(w), None, (1, 1), (0, 0, 0, 0), False)
    assert_close(host(got), ref.conv2d_forward(x, w, None, (1, 1), (0, 0, 0, 0), False), GEMM)


# ---------------------------------------------------------------- max-pool

POOL_CASES = [
    (2, 5, 7, 3, (2, 2), (2, 2), (0, 0, 0, 0)),    # odd sizes: the last row/column is never pooled
    (1, 7, 7, 2, (3, 3), (2, 2), (0, 0, 0, 0)),    # overlapping windows
    (2, 6, 5, 3, (3, 3), (2, 2), (1, 1, 1, 1)),    # padding never wins
    (1, 4, 5, 1, (2, 3), (1, 2), (1, 0, 2, 1)),
    (2, 5, 7, 4, (2, 2), (2, 2), (0, 0, 0, 0)),    # C % 4 == 0: numba_vec's 4-channel kernel
    (1, 7, 6, 8, (3, 3), (2, 2), (1, 1, 1, 1)),    # ... overlapping, padded, two channel groups
    (1, 6, 5, 12, (2, 3), (1, 2), (1, 0, 2, 1)),   # ... lopsided padding, stride 1 x 2
]
POOL_VARIANTS = {"direct": (nb.maxpool_forward, nb.maxpool_backward),
                 "vec": (nb.maxpool_forward_vec, nb.maxpool_backward_vec),
                 "lanes": (nb.maxpool_forward_lanes, nb.maxpool_backward)}


@pytest.mark.parametrize("variant", sorted(POOL_VARIANTS))
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"C{c[3]}{c[4]}s{c[5]}p{c[6]}")
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool(rng, case, ties, variant):
    forward, backward = POOL_VARIANTS[variant]
    N, H, W, C, pool, stride, padding = case
    x = rand(rng, N, H, W, C)
    if ties:   # small integers: many equal maxima, so "first max wins" is tested
        x = np.round(x).astype(np.float32)
    if padding != (0, 0, 0, 0):
        x -= 10.0   # all negative: a padded zero would win if padding could
    y_ref, am_ref = ref.maxpool_forward(x, pool, stride, padding)
    y, am = forward(dev(x), pool, stride, padding,
                    out=(nan_out(y_ref.shape), nan_out(y_ref.shape, np.uint8)))
    np.testing.assert_array_equal(host(y), y_ref)
    np.testing.assert_array_equal(host(am), am_ref)
    dy = rand(rng, *y_ref.shape)
    dx = backward(dev(dy), am, x.shape, pool, stride, padding, out=nan_out(x.shape))
    assert_close(host(dx), ref.maxpool_backward(dy, am_ref, x.shape, pool, stride, padding), EW,
                 "maxpool_backward")


@pytest.mark.parametrize("variant", sorted(POOL_VARIANTS))
@pytest.mark.parametrize("case", [POOL_CASES[1], POOL_CASES[4]], ids=["C1", "C4"])
def test_maxpool_nan_follows_the_reference(rng, case, variant):
    """A window holding NaN gives y = NaN and argmax = the last window position."""
    forward, _ = POOL_VARIANTS[variant]
    N, H, W, C, pool, stride, padding = case
    x = rand(rng, N, H, W, C)
    x[0, 1, 2, 0] = np.nan                       # inside some window, neither first nor last
    x[-1, -1, -1, -1] = np.nan
    y_ref, am_ref = ref.maxpool_forward(x, pool, stride, padding)
    assert np.isnan(y_ref).any()
    y, am = forward(dev(x), pool, stride, padding,
                    out=(nan_out(y_ref.shape), nan_out(y_ref.shape, np.uint8)))
    np.testing.assert_array_equal(host(y), y_ref)       # NaNs in the same places
    np.testing.assert_array_equal(host(am), am_ref)


def test_maxpool_vec_is_registered_beside_direct():
    assert fastcnn.kernels.variants("maxpool_forward", source="numba") == ["numba_direct", "numba_vec",
                                                                            "numba_lanes"]
    assert registry.get("maxpool_forward", "numba_lanes").fn is nb.maxpool_forward_lanes
    assert fastcnn.kernels.variants("maxpool_backward", source="numba") == ["numba_gather", "numba_vec"]
    assert registry.get("maxpool_forward", "numba_vec").fn is nb.maxpool_forward_vec
    assert registry.get("maxpool_backward", "numba_vec").fn is nb.maxpool_backward_vec


# ---------------------------------------------------------------- elementwise, bias, softmax, loss

@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # -inf * 0, in the simulator's threads
@pytest.mark.parametrize("slope", [0.3, 0.0])
def test_leaky_relu(rng, slope):
    x, dy = rand(rng, 3, 5, 7), rand(rng, 3, 5, 7)
    x[0, 0, :2] = np.nan
    x[1, 1, :3] = (0.0, -0.0, -np.inf)
    with np.errstate(invalid="ignore"):  # -inf * 0 -> NaN
        want_y, want_dx = ref.leaky_relu_forward(x, slope), ref.leaky_relu_backward(dy, x, slope)
        y = host(nb.leaky_relu_forward(dev(x), slope, out=nan_out(x.shape)))
    dx = host(nb.leaky_relu_backward(dev(dy), dev(x), slope, out=nan_out(x.shape)))
    np.testing.assert_array_equal(y, want_y)                      # NaN where the reference has NaN
    np.testing.assert_array_equal(np.signbit(y), np.signbit(want_y))  # -0.0 stays -0.0
    np.testing.assert_array_equal(dx, want_dx)
    with pytest.raises(ValueError, match="negative_slope"):
        nb.leaky_relu_forward(dev(x), -1.0)
    with pytest.raises(ValueError, match="shape"):
        nb.leaky_relu_backward(dev(dy), dev(x[:2]), slope)


def test_relu_add_copy_increment(rng):
    x, y, dy = rand(rng, 3, 5, 7), rand(rng, 3, 5, 7), rand(rng, 3, 5, 7)
    x[0, 0, :2] = np.nan    # relu propagates NaN, as numpy.maximum(x, 0) does
    np.testing.assert_array_equal(host(nb.relu_forward(dev(x), out=nan_out(x.shape))), ref.relu_forward(x))
    np.testing.assert_array_equal(host(nb.relu_backward(dev(dy), dev(y), out=nan_out(x.shape))),
                                  ref.relu_backward(dy, y))
    np.testing.assert_array_equal(host(nb.add(dev(x), dev(y), out=nan_out(x.shape))), ref.add(x, y))
    dst = nan_out(x.shape)
    assert nb.copy(dst, dev(x)) is None
    np.testing.assert_array_equal(host(dst), x)
    labels = dev(np.zeros(5, np.int32))
    nb.copy(labels, dev(np.arange(5, dtype=np.int32)))    # graphs copy int32 label batches too
    np.testing.assert_array_equal(host(labels), np.arange(5))
    step = dev(np.array([41], np.int32))
    nb.increment(step)
    assert int(host(step)[0]) == 42


def test_group_conv_towers_match_the_reference(rng):
    """Channel slices, per-tower convolutions and the concat (AlexNet 'original') on Numba kernels."""
    from fastcnn import Tensor
    from fastcnn.layers import ChannelConcat, ChannelSlice
    x, w, gy = rand(rng, 1, 5, 5, 4), rand(rng, 3, 3, 2, 3), rand(rng, 1, 5, 5, 6)
    results = {}
    for name in ("reference", "numba"):
        with fastcnn.backend.using(name):
            tx, tw = Tensor(dev(x), requires_grad=True), Tensor(dev(w), requires_grad=True)
            towers = [F.conv2d(ChannelSlice(2 * g, 2 * g + 2)(tx), tw, padding="same") for g in range(2)]
            y = ChannelConcat()(*towers)
            y.backward(dev(gy))
            results[name] = [host(a) for a in (y.data, tx.grad, tw.grad)]
    for got, want, what in zip(results["numba"], results["reference"], ("y", "dx", "dw")):
        assert_close(got, want, GEMM, what)


@pytest.mark.parametrize("rows", [(2, 3), (40,)])
def test_copy_channels(rng, rows):
    src, dst = rand(rng, *rows, 7), rand(rng, *rows, 4)
    expected = dst.copy()
    expected[..., 1:4] = src[..., 2:5]
    d = dev(dst)
    assert nb.copy_channels(d, dev(src), 1, 2, 3) is None
    np.testing.assert_array_equal(host(d), expected)
    with pytest.raises(ValueError, match="out of range"):
        nb.copy_channels(d, dev(src), 2, 0, 3)


@pytest.mark.parametrize("dtype, shape", [(np.float32, (9, 2, 3)), (np.int32, (9,))])
def test_gather_rows(rng, dtype, shape):
    src = (rng.standard_normal(shape) * 100).astype(dtype)
    rows = np.array([8, 0, 3, 3, 8, 1, 2, 7, 6, 5, 4, 0, 1, 2, 3, 4, 5], np.int32)   # 17 picks: rows loop
    d = dev(np.zeros((len(rows),) + shape[1:], dtype))
    assert nb.gather_rows(d, dev(src), dev(rows)) is None
    np.testing.assert_array_equal(host(d), src[rows])
    bad = dev(np.array([0, 9], np.int32))
    d2 = dev(np.zeros((2,) + shape[1:], dtype))
    nb.gather_rows(d2, dev(src), bad)           # outside the source: all-ones bits, no read past it
    assert (host(d2)[1].view(np.int32) == -1).all() and np.array_equal(host(d2)[0], src[0])
    with pytest.raises(TypeError, match="rows must be int32"):
        nb.gather_rows(d, dev(src), dev(rows.astype(np.float32)))


@pytest.mark.parametrize("shape", [(7,), (3, 10), (2, 5, 3, 6), (300, 37), (2, 120)])
def test_bias_grad(rng, shape):
    dy = rand(rng, *shape)
    got = nb.bias_grad(dev(dy), out=nan_out(shape[-1:]))
    assert_close(host(got), ref.bias_grad(dy), RED, "bias_grad")


def test_softmax(rng):
    x = rand(rng, 3, 70, scale=5.0)   # 70 classes: more than one per thread of the row block
    assert_close(host(nb.softmax(dev(x), out=nan_out(x.shape))), ref.softmax(x), RED, "softmax")


@pytest.mark.parametrize("onehot", [False, True])
@pytest.mark.parametrize("n,classes", [(1, 10), (4, 10), (3, 67)])
def test_softmax_cross_entropy(rng, onehot, n, classes):
    logits = rand(rng, n, classes, scale=3.0)
    labels = rng.integers(0, classes, n).astype(np.int32)
    labels[0] = int(np.argmax(logits[0]))          # at least one correct prediction
    lab = np.eye(classes, dtype=np.float32)[labels] if onehot else labels
    t_ref = np.array([1.5, 2.0])
    d_ref = ref.softmax_cross_entropy(logits, lab, t_ref)
    totals = dev(np.array([1.5, 2.0]))
    d = nb.softmax_cross_entropy(dev(logits), dev(lab), totals, out=nan_out(logits.shape))
    assert_close(host(d), d_ref, RED, "dlogits")
    t = host(totals)
    assert abs(t[0] - t_ref[0]) <= 1e-5 * abs(t_ref[0]), (t, t_ref)
    assert t[1] == t_ref[1]


@pytest.mark.parametrize("rate", [0.0, 0.5])
@pytest.mark.parametrize("shape", [(3, 11), (1, 4)])
def test_dropout(rng, rate, shape):
    x = rand(rng, *shape)
    seed, step = 0x1234_5678_9ABC, np.array([7], np.int32)
    y = host(nb.dropout_forward(dev(x), rate, seed, dev(step), out=nan_out(shape)))
    np.testing.assert_allclose(y, ref.dropout_forward(x, rate, seed, step), rtol=EW, atol=0)
    keep = ref.dropout_keep(x.size, rate, seed, step).reshape(shape)
    np.testing.assert_array_equal(y != 0, keep)
    dx = host(nb.dropout_backward(dev(x), rate, seed, dev(step)))
    np.testing.assert_array_equal(dx, y)   # the same mask for the same (seed, step)


def test_random_ops_with_an_offset(rng):
    """A slice of a batch (offset = its first sample's index) draws what the reference draws."""
    x = rand(rng, 3, 4, 5, 3)
    seed, step = 2**40 + 3, np.array([9], np.int32)
    basis = 0.1 * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES)[None, :]
    y = host(nb.dropout_forward(dev(x), 0.5, seed, dev(step), 5, out=nan_out(x.shape)))
    np.testing.assert_allclose(y, ref.dropout_forward(x, 0.5, seed, step, 5), rtol=EW, atol=0)
    np.testing.assert_array_equal(host(nb.dropout_backward(dev(x), 0.5, seed, dev(step), 5)), y)
    y = host(nb.crop_forward(dev(x), 3, 4, True, True, seed, dev(step), 7, out=nan_out((3, 3, 4, 3))))
    np.testing.assert_array_equal(y, ref.crop_forward(x, 3, 4, True, True, seed, step, 7))
    dx = host(nb.crop_backward(dev(y), x.shape, True, True, seed, dev(step), 7, out=nan_out(x.shape)))
    np.testing.assert_array_equal(dx, ref.crop_backward(y, x.shape, True, True, seed, step, 7))
    y = host(nb.pca_noise_forward(dev(x), basis, seed, dev(step), 11, out=nan_out(x.shape)))
    np.testing.assert_allclose(y, ref.pca_noise_forward(x, basis, seed, step, 11), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("random,flip", [(False, False), (True, True)])
def test_crop(rng, random, flip):
    x = rand(rng, 3, 5, 6, 2)
    seed, step = 2**40 + 3, np.array([9], np.int32)
    y = host(nb.crop_forward(dev(x), 3, 4, random, flip, seed, dev(step), out=nan_out((3, 3, 4, 2))))
    np.testing.assert_array_equal(y, ref.crop_forward(x, 3, 4, random, flip, seed, step))
    dx = host(nb.crop_backward(dev(y), x.shape, random, flip, seed, dev(step), out=nan_out(x.shape)))
    np.testing.assert_array_equal(dx, ref.crop_backward(y, x.shape, random, flip, seed, step))


def test_pca_noise(rng):
    x = rand(rng, 2, 3, 4, 3)
    basis = 0.1 * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES)[None, :]
    step = np.array([6], np.int32)
    y = host(nb.pca_noise_forward(dev(x), basis, 2**33 + 1, dev(step), out=nan_out(x.shape)))
    np.testing.assert_allclose(y, ref.pca_noise_forward(x, basis, 2**33 + 1, step), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("size", [3, 5])
def test_lrn(rng, size):
    x = rand(rng, 2, 3, 2, 7)
    args = (size, 1e-2, 0.75, 2.0)
    y_ref, s_ref = ref.lrn_forward(x, *args)
    y, s = nb.lrn_forward(dev(x), *args, out=(nan_out(x.shape), nan_out(x.shape)))
    assert_close(host(y), y_ref, RED, "lrn y")
    assert_close(host(s), s_ref, RED, "lrn scale")
    dy = rand(rng, *x.shape)
    dx = nb.lrn_backward(dev(dy), dev(x), y, s, *args, out=nan_out(x.shape))
    assert_close(host(dx), ref.lrn_backward(dy, x, y_ref, s_ref, *args), RED, "lrn dx")


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0),
                                                  (0.0, False, 0.01), (0.9, False, 0.01)])
def test_sgd_update(rng, momentum, nesterov, wd):
    p, g, v = rand(rng, 77), rand(rng, 77), rand(rng, 77)
    pr, vr = p.copy(), (v.copy() if momentum else None)
    ref.sgd_update(pr, g, vr, 0.01, momentum, nesterov, wd)
    pd, vd = dev(p), (dev(v) if momentum else None)
    assert nb.sgd_update(pd, dev(g), vd, 0.01, momentum, nesterov, wd) is None
    assert_close(host(pd), pr, EW, "p")
    if momentum:
        assert_close(host(vd), vr, EW, "v")


def test_adam_update(rng):
    p, g, m, v = rand(rng, 77), rand(rng, 77), rand(rng, 77), np.abs(rand(rng, 77))
    step = np.array([4], np.int32)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    ref.adam_update(pr, g, mr, vr, step, 1e-3, 0.9, 0.999, 1e-7)
    pd, md, vd, sd = dev(p), dev(m), dev(v), dev(step)
    nb.adam_update(pd, dev(g), md, vd, sd, 1e-3, 0.9, 0.999, 1e-7)
    for name, got, want in (("p", pd, pr), ("m", md, mr), ("v", vd, vr)):
        assert_close(host(got), want, EW, name)
    assert int(host(sd)[0]) == 4   # adam reads step, increment changes it


def test_adamw_update(rng):
    p, g, m, v = rand(rng, 77), rand(rng, 77), rand(rng, 77), np.abs(rand(rng, 77))
    step = np.array([2], np.int32)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    ref.adam_update(pr, g, mr, vr, step, 1e-2, 0.9, 0.999, 1e-7, 0.004)
    pd, md, vd = dev(p), dev(m), dev(v)
    nb.adam_update(pd, dev(g), md, vd, dev(step), 1e-2, 0.9, 0.999, 1e-7, weight_decay=0.004)
    for name, got, want in (("p", pd, pr), ("m", md, mr), ("v", vd, vr)):
        assert_close(host(got), want, EW, name)


@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.0, True), (0.9, True)])
def test_rmsprop_update(rng, momentum, centered):
    p, g, v = rand(rng, 77), rand(rng, 77), np.abs(rand(rng, 77))
    mom = rand(rng, 77) if momentum else None
    avg = rand(rng, 77, scale=0.1) if centered else None
    host_copies = [None if a is None else a.copy() for a in (p, v, mom, avg)]
    ref.rmsprop_update(host_copies[0], g, host_copies[1], host_copies[2], host_copies[3], 1e-2, 0.9, momentum, 1e-7)
    devs = [None if a is None else dev(a) for a in (p, v, mom, avg)]
    assert nb.rmsprop_update(devs[0], dev(g), devs[1], devs[2], devs[3], 1e-2, 0.9, momentum, 1e-7) is None
    for name, got, want in zip(("p", "v", "mom", "avg"), devs, host_copies):
        if want is not None:
            assert_close(host(got), want, EW, name)


def test_cast_copies_float32_and_bfloat16_is_refused(rng):
    x = rand(rng, 3, 7)
    y = nb.cast(dev(x), "float32")
    assert np.array_equal(host(y), x)
    only = "the numba backend computes in float32 only; mixed_bfloat16 needs the cuda or reference backend"
    with pytest.raises(TypeError, match=f"cast to bfloat16: {only}"):
        nb.cast(dev(x), "bfloat16")
    with pytest.raises(TypeError, match=f"x is bfloat16: {only}"):
        nb.cast(dev(x.astype(dtypes.bfloat16)), "float32")
    with pytest.raises(TypeError, match=f"x is bfloat16: {only}"):
        nb.relu_forward(dev(x.astype(dtypes.bfloat16)))
    with pytest.raises(ValueError, match="dtype must be one of"):
        nb.cast(dev(x), "float64")
    p = dev(x.reshape(-1))
    with pytest.raises(TypeError, match=f"p_bf16 .*: {only}"):
        nb.sgd_update(p, p, None, 0.1, 0.0, False, p_bf16=dev(x.reshape(-1).astype(dtypes.bfloat16)))


# ---------------------------------------------------------------- bad input

def test_bad_input_is_refused_before_launch(rng):
    x = rand(rng, 2, 5, 5, 3)
    w = rand(rng, 3, 3, 3, 4)
    with pytest.raises(TypeError, match="x must be float32"):
        nb.conv2d_forward(dev(x.astype(np.float64)), dev(w), None, (1, 1), (0, 0, 0, 0), False)
    with pytest.raises(ValueError, match="channel mismatch"):
        nb.conv2d_forward(dev(x), dev(w[:, :, :2]), None, (1, 1), (0, 0, 0, 0), False)
    with pytest.raises(ValueError, match="stride"):
        nb.conv2d_forward(dev(x), dev(w), None, (0, 1), (0, 0, 0, 0), False)
    with pytest.raises(ValueError, match="do not chain"):
        nb.matmul(dev(x[0, 0]), dev(x[0, 0]), False, False)
    with pytest.raises(ValueError, match="C-contiguous"):
        nb.relu_forward(dev(x)[:, ::2])
    with pytest.raises(TypeError, match="labels"):
        nb.softmax_cross_entropy(dev(x[0, 0]), [0] * 5, dev(np.zeros(2)))
    with pytest.raises(ValueError, match="rate"):
        nb.dropout_forward(dev(x), 1.0, 1, dev(np.zeros(1, np.int32)))
    with pytest.raises(ValueError, match="out overlaps a"):
        a = dev(rand(rng, 4, 4))
        nb.matmul(a, dev(rand(rng, 4, 4)), out=a)
    with pytest.raises(ValueError, match="out must have shape"):
        nb.relu_forward(dev(x), out=nan_out((2, 5)))


# ---------------------------------------------------------------- backend and registry

def test_is_a_complete_backend():
    b = backend.get("numba")
    assert b is nb and b.name == "numba"
    assert b.device == ("cpu" if nb.SIMULATOR else "cuda")
    assert b.xp is (np if nb.SIMULATOR else __import__("cupy"))
    missing = [op for op in backend.PRIMITIVES if not callable(getattr(b, op, None))]
    assert not missing
    assert backend.availability()["numba"] is None


def test_every_primitive_has_a_numba_variant_never_the_default():
    for op in backend.PRIMITIVES:
        names = fastcnn.kernels.variants(op, source="numba")
        assert names and all(n.startswith("numba") for n in names), (op, names)
        v = registry.get(op, names[0])
        assert v.source == "numba" and v.fn is getattr(nb, op)
        if fastcnn.kernels.variants(op, source="cuda"):
            assert registry.get(op).source == "cuda", f"a numba variant became the default of {op}"


def test_numpy_row_stack_shim(monkeypatch):
    """NumPy 2.5 removed np.row_stack, which numba-cuda 0.30.4 overloads at import."""
    from fastcnn import _numba_compat
    monkeypatch.delattr(np, "row_stack", raising=False)
    monkeypatch.setattr(_numba_compat, "PATCHED", [])
    assert _numba_compat.apply() == ["row_stack"]
    assert np.row_stack is np.vstack
    # In a fresh interpreter: without row_stack, numba-cuda's array module fails to
    # import unless fastcnn's shim ran first.
    code = ("import numpy; del numpy.row_stack\n{}\nimport numba.cuda.np.arrayobj\nprint('imported')")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with_shim = subprocess.run([sys.executable, "-c", code.format("import fastcnn._numba_compat")],
                               capture_output=True, text=True, env=env, timeout=120)
    assert with_shim.returncode == 0 and "imported" in with_shim.stdout, with_shim.stderr[-2000:]
    without = subprocess.run([sys.executable, "-c", code.format("")],
                             capture_output=True, text=True, env=env, timeout=120)
    if without.returncode == 0:
        pytest.skip("this numba-cuda no longer needs the shim (its import survives without row_stack)")
    assert "row_stack" in without.stderr


# ---------------------------------------------------------------- the simulator catches bugs

@pytest.mark.skipif(not nb.SIMULATOR, reason="bounds are checked by the simulator, not by a GPU")
def test_simulator_catches_an_out_of_bounds_index():
    @cuda.jit
    def broken_shift(x, y, n):
        i = cuda.grid(1)
        if i < n:
            y[i] = x[i + 1]   # the bug: the last thread reads one past the end

    x = np.arange(6, dtype=np.float32)
    y = np.zeros(6, np.float32)
    with pytest.raises(IndexError, match="out of bounds"):
        nb._launch._launch(broken_shift, 1, 8, x, y, 6)


# ---------------------------------------------------------------- LeNet-5, batch 2, end to end

LENET = {"w1": (5, 5, 1, 6), "b1": (6,), "w2": (5, 5, 6, 16), "b2": (16,),
         "w3": (400, 120), "b3": (120,), "w4": (120, 84), "b4": (84,), "w5": (84, 10), "b5": (10,)}
SAME, VALID, P2 = (2, 2, 2, 2), (0, 0, 0, 0), ((2, 2), (2, 2), (0, 0, 0, 0))


def lenet_step(B, x, labels, params):
    """Forward, backward and one Adam step of LeNet-5 through backend B's primitives only."""
    P = params
    a1 = B.conv2d_forward(x, P["w1"], P["b1"], (1, 1), SAME, True)          # 28x28x6
    p1, m1 = B.maxpool_forward(a1, *P2)                                      # 14x14x6
    a2 = B.conv2d_forward(p1, P["w2"], P["b2"], (1, 1), VALID, True)        # 10x10x16
    p2, m2 = B.maxpool_forward(a2, *P2)                                      # 5x5x16
    f = p2.reshape(p2.shape[0], 400)
    h3 = B.dense_forward(f, P["w3"], P["b3"], True)
    h4 = B.dense_forward(h3, P["w4"], P["b4"], True)
    z = B.dense_forward(h4, P["w5"], P["b5"], False)
    totals = B.asarray(np.zeros(2))
    dz = B.softmax_cross_entropy(z, labels, totals)
    G = {"w5": B.matmul(h4, dz, True, False), "b5": B.bias_grad(dz)}
    dh4 = B.relu_backward(B.matmul(dz, P["w5"], False, True), h4)
    G["w4"], G["b4"] = B.matmul(h3, dh4, True, False), B.bias_grad(dh4)
    dh3 = B.relu_backward(B.matmul(dh4, P["w4"], False, True), h3)
    G["w3"], G["b3"] = B.matmul(f, dh3, True, False), B.bias_grad(dh3)
    df = B.matmul(dh3, P["w3"], False, True)
    da2 = B.relu_backward(B.maxpool_backward(df.reshape(p2.shape), m2, a2.shape, *P2), a2)
    G["w2"], G["b2"] = B.conv2d_backward_weights(p1, da2, LENET["w2"], (1, 1), VALID), B.bias_grad(da2)
    dp1 = B.conv2d_backward_data(da2, P["w2"], p1.shape, (1, 1), VALID)
    da1 = B.relu_backward(B.maxpool_backward(dp1, m1, a1.shape, *P2), a1)
    G["w1"], G["b1"] = B.conv2d_backward_weights(x, da1, LENET["w1"], (1, 1), SAME), B.bias_grad(da1)
    # one Adam step over flat buffers (gathered with `copy` into views of one buffer)
    total = sum(int(np.prod(s)) for s in LENET.values())
    flat_p, flat_g = B.asarray(np.empty(total, np.float32)), B.asarray(np.empty(total, np.float32))
    offset = 0
    for k, shape in LENET.items():
        n = int(np.prod(shape))
        B.copy(flat_p[offset:offset + n].reshape(shape), P[k])
        B.copy(flat_g[offset:offset + n].reshape(shape), G[k])
        offset += n
    m = B.asarray(np.zeros(total, np.float32))
    v = B.asarray(np.zeros(total, np.float32))
    B.adam_update(flat_p, flat_g, m, v, B.asarray(np.zeros(1, np.int32)), 1e-3, 0.9, 0.999, 1e-7)
    out = {"logits": z, "dlogits": dz, "p_new": flat_p, "m": m, "v": v, "dx1": dp1}
    out.update({"d" + k: g for k, g in G.items()})
    return out, totals


@pytest.mark.parametrize("onehot", [False, True], ids=["int_labels", "onehot_labels"])
def test_lenet5_forward_backward_batch2(rng, onehot):
    if onehot and nb.SIMULATOR:
        pytest.skip("one LeNet pass in the simulator is enough; one-hot labels are covered above")
    params = {k: rand(rng, *s, scale=1.0 / np.sqrt(np.prod(s[:-1]) if len(s) > 1 else 10.0))
              for k, s in LENET.items()}
    x = rand(rng, 2, 28, 28, 1)
    labels = np.array([3, 8], np.int32)
    lab = np.eye(10, dtype=np.float32)[labels] if onehot else labels
    want, t_ref = lenet_step(ref, x, lab, params)
    got, t = lenet_step(nb, dev(x), dev(lab), {k: dev(p) for k, p in params.items()})
    for k in want:
        assert_close(host(got[k]), want[k], 1e-4, k)
    np.testing.assert_allclose(host(t), t_ref, rtol=1e-5)


# ---------------------------------------------------------------- PTX for sm_90, ptxas resources

_PTX_SCRIPT = r"""
import json, os, sys
try:
    from numba.cuda.cudadrv import nvvm
    nvvm.NVVM()
except Exception as exc:
    print(json.dumps({"skip": f"no NVVM for numba-cuda: {type(exc).__name__}: {exc}"}))
    sys.exit(0)
from fastcnn.backend import numba as nb
out = sys.argv[1]
for label, ptx in nb.compile_ptx_all((9, 0)).items():
    with open(os.path.join(out, label + ".ptx"), "w") as f:
        f.write(ptx)
print(json.dumps({"ok": True}))
"""
_RES = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def test_every_kernel_compiles_to_ptx_for_sm90_without_spills(tmp_path):
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas is not on PATH")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _PTX_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in status:
        pytest.skip(status["skip"])
    files = sorted(tmp_path.glob("*.ptx"))
    assert len(files) == len(nb.ptx_kernels())

    def assemble(path):
        r = subprocess.run([ptxas, "-arch=sm_90", "-v", str(path), "-o", os.devnull],
                           capture_output=True, text=True, timeout=300)
        return path.stem, r.returncode, r.stdout + r.stderr

    rows, failures = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for label, rc, log in pool.map(assemble, files):
            if rc != 0:
                failures.append(f"{label}: ptxas failed\n{log[-2000:]}")
                continue
            used = _USED.findall(log)
            spills = [tuple(map(int, m)) for m in _RES.findall(log)]
            regs = max(int(u[0]) for u in used)
            smem = max(int(u[1] or 0) for u in used)
            stack = max(s[0] for s in spills)
            spill = sum(s[1] + s[2] for s in spills)
            rows.append(f"{label:28s} regs {regs:4d}  smem {smem:6d} B  stack {stack:4d} B  spills {spill} B")
            if spill:
                failures.append(f"{label}: {spill} bytes of spills\n{log}")
    print("\nNumba kernels, ptxas -arch=sm_90 -v:\n" + "\n".join(rows))
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- GPU only

gpu = pytest.mark.gpu


def _lenet_cases(rng):
    """(op, args for the numba/cuda functions, args for the reference) at LeNet-5 sizes, batch 200."""
    x1 = rand(rng, 200, 28, 28, 1)
    w1, b1 = rand(rng, 5, 5, 1, 6, scale=0.2), rand(rng, 6)
    p1 = rand(rng, 200, 14, 14, 6)
    w2, b2 = rand(rng, 5, 5, 6, 16, scale=0.1), rand(rng, 16)
    dy1, dy2 = rand(rng, 200, 28, 28, 6), rand(rng, 200, 10, 10, 16)
    f, w3, b3 = rand(rng, 200, 400), rand(rng, 400, 120, scale=0.05), rand(rng, 120)
    dh = rand(rng, 200, 120)
    a1 = rand(rng, 200, 28, 28, 6)
    dp = rand(rng, 200, 14, 14, 6)
    z = rand(rng, 200, 10, scale=3.0)
    labels = rng.integers(0, 10, 200).astype(np.int32)
    onehot = np.eye(10, dtype=np.float32)[labels]
    _, am = ref.maxpool_forward(a1, (2, 2), (2, 2), (0, 0, 0, 0))
    lx = rand(rng, 8, 13, 13, 96)
    ax = rand(rng, 8, 55, 55, 96)       # AlexNet's first pool (C % 4 == 0: numba_vec's own kernel)
    _, am_ax = ref.maxpool_forward(ax, (3, 3), (2, 2), (0, 0, 0, 0))
    dax = rand(rng, *am_ax.shape)
    cases = [
        ("conv2d_forward", (x1, w1, b1, (1, 1), SAME, True)),
        ("conv2d_forward", (p1, w2, b2, (1, 1), VALID, True)),
        ("conv2d_backward_data", (dy2, w2, p1.shape, (1, 1), VALID)),
        ("conv2d_backward_weights", (x1, dy1, w1.shape, (1, 1), SAME)),
        ("conv2d_backward_weights", (p1, dy2, w2.shape, (1, 1), VALID)),
        ("maxpool_forward", (a1, (2, 2), (2, 2), (0, 0, 0, 0))),
        ("maxpool_forward", (a1, (3, 3), (2, 2), (1, 1, 1, 1))),
        ("maxpool_backward", (dp, am, a1.shape, (2, 2), (2, 2), (0, 0, 0, 0))),
        ("maxpool_forward", (ax, (3, 3), (2, 2), (0, 0, 0, 0))),
        ("maxpool_backward", (dax, am_ax, ax.shape, (3, 3), (2, 2), (0, 0, 0, 0))),
        ("matmul", (f, w3, False, False)),
        ("matmul", (f, dh, True, False)),
        ("matmul", (dh, w3, False, True)),
        ("dense_forward", (f, w3, b3, True)),
        ("bias_grad", (dy1,)),
        ("relu_forward", (a1,)),
        ("relu_backward", (dy1, a1)),
        ("leaky_relu_forward", (dy1, 0.3)),
        ("leaky_relu_backward", (dy1, a1, 0.3)),
        ("add", (dy1, a1)),
        ("softmax", (z,)),
        ("dropout_forward", (f, 0.5, 99, np.array([3], np.int32))),
        ("dropout_backward", (f, 0.5, 99, np.array([3], np.int32))),
        ("crop_forward", (x1, 24, 25, True, True, 99, np.array([3], np.int32))),
        ("crop_backward", (np.ascontiguousarray(x1[:, :24, :25]), x1.shape, True, True, 99,
                           np.array([3], np.int32))),
        ("pca_noise_forward", (np.ascontiguousarray(np.repeat(x1[:8], 3, axis=3)),
                               0.1 * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES),
                               99, np.array([3], np.int32))),
        ("lrn_forward", (lx, 5, 1e-4, 0.75, 2.0)),
    ]
    return cases, z, labels, onehot


def _to_dev(a):
    return dev(a) if isinstance(a, np.ndarray) else a


@gpu
def test_gpu_every_numba_variant_at_lenet_sizes():
    rng = np.random.default_rng(7)
    cases, z, labels, onehot = _lenet_cases(rng)
    for op, args in cases:
        want = getattr(ref, op)(*args)
        for variant in fastcnn.kernels.variants(op, source="numba"):
            got = registry.get(op, variant).fn(*(_to_dev(a) for a in args))
            pairs = zip(got, want) if isinstance(want, tuple) else [(got, want)]
            for g, w in pairs:
                tol = GEMM if op.startswith(("conv", "matmul", "dense")) else RED
                if w.dtype == np.uint8:
                    np.testing.assert_array_equal(host(g), w, err_msg=f"{op} {variant}")
                else:
                    assert_close(host(g), w, tol, f"{op} {variant}")
    for lab in (labels, onehot):
        t_ref = np.zeros(2)
        d_ref = ref.softmax_cross_entropy(z, lab, t_ref)
        t = dev(np.zeros(2))
        d = registry.get("softmax_cross_entropy", "numba_block_row").fn(dev(z), dev(lab), t)
        assert_close(host(d), d_ref, RED, "xent")
        np.testing.assert_allclose(host(t), t_ref, rtol=1e-5)
    n = 61706   # LeNet-5's parameter count, as one flat buffer
    p, g, m, v = rand(rng, n), rand(rng, n), rand(rng, n), np.abs(rand(rng, n))
    step = np.array([9], np.int32)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    ref.adam_update(pr, g, mr, vr, step, 1e-3, 0.9, 0.999, 1e-7)
    pd, md, vd = dev(p), dev(m), dev(v)
    registry.get("adam_update", "numba").fn(pd, dev(g), md, vd, dev(step), 1e-3, 0.9, 0.999, 1e-7)
    assert_close(host(pd), pr, EW, "adam p")


@gpu
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gpu_large_matmul_tile_config(trans_a, trans_b):
    """The generated 128x128 kernel at real sizes: interior and edge tiles, every transpose pair."""
    rng = np.random.default_rng(8)
    M, K, N = 1024, 777, 600
    assert nb.pick_config(M, N, K) == "128x128"
    a = rand(rng, *((K, M) if trans_a else (M, K)))
    b = rand(rng, *((N, K) if trans_b else (K, N)))
    got = nb.matmul(dev(a), dev(b), trans_a, trans_b)
    assert_close(host(got), ref.matmul(a, b, trans_a, trans_b), GEMM, "matmul 128x128")


@gpu
def test_gpu_128x128_split_k_and_epilogue():
    rng = np.random.default_rng(10)
    a, b = rand(rng, 200, 4100), rand(rng, 4100, 130)     # 2 x 2 tiles, 513 K slices: split K
    with nb.tile_config("128x128"):
        got = nb.matmul(dev(a), dev(b))
        x, w, bias = rand(rng, 300, 64), rand(rng, 64, 257), rand(rng, 257)
        y = nb.dense_forward(dev(x), dev(w), dev(bias), True)
    assert_close(host(got), ref.matmul(a, b, False, False), 1e-4, "split-K 128x128")
    assert_close(host(y), ref.dense_forward(x, w, bias, True), GEMM, "dense 128x128")


@gpu
def test_gpu_numba_launches_replay_in_a_captured_cupy_graph():
    import cupy as cp
    rng = np.random.default_rng(9)
    a, b, x = rand(rng, 200, 400), rand(rng, 400, 120), rand(rng, 200, 120)
    da, db, dx = dev(a), dev(b), dev(x)
    c, y, dst = cp.empty((200, 120), cp.float32), cp.empty((200, 120), cp.float32), cp.empty_like(dx)
    step = cp.zeros(1, cp.int32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        nb.matmul(da, db, out=c)            # warm-up: compile and load every kernel first
        nb.relu_forward(dx, out=y)
        nb.copy(dst, dx)
        nb.increment(step)
        step.fill(0)
        c.fill(np.nan)
        y.fill(np.nan)
        dst.fill(np.nan)
        stream.synchronize()
        stream.begin_capture()
        nb.matmul(da, db, out=c)
        nb.relu_forward(dx, out=y)
        nb.copy(dst, dx)
        nb.increment(step)
        graph = stream.end_capture()
        assert int(step.get()[0]) == 0      # captured, not run
        for _ in range(3):
            graph.launch(stream)
        stream.synchronize()
    assert int(step.get()[0]) == 3
    assert_close(c.get(), a @ b, GEMM, "matmul in graph")
    np.testing.assert_array_equal(y.get(), np.maximum(x, 0))
    np.testing.assert_array_equal(dst.get(), x)
