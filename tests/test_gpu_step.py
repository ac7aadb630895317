"""The rest of a training step on the GPU (fastcnn/backend/cuda/step.py) against the reference.

Every op is run with its result written into a NaN-poisoned ``out=`` buffer (each
step.py op takes one), compared with fastcnn.backend.reference, then run again
without ``out=`` and required to give the same bits (allocation path, determinism).
Tolerances (relative, in norm): 1e-6 elementwise and optimizers, 1e-5 reductions,
softmax and LRN; dropout masks and accuracy counts exact.  bfloat16: the cast's rounding
(cvt.rn.bf16.f32) bit for bit as the emulator assumes, the elementwise ops, dropout and
crops bit for bit the reference's, reductions as above, the optimizers' p_bf16 copy exact.

    pytest tests/test_gpu_step.py            # the gpu tests skip without a GPU
"""
import shutil
import subprocess

import numpy as np
import pytest

from helpers import assert_close, rand

from fastcnn import _paths, dtypes
from fastcnn.backend import reference as ref

gpu = pytest.mark.gpu
EW, RED = 1e-6, 1e-5


@pytest.fixture(scope="module")
def S():
    from fastcnn.backend.cuda import step
    return step


def _cp():
    import cupy
    return cupy


def _nan(shape, dtype=np.float32):
    a = _cp().empty(shape, dtype=dtype)
    a.fill(np.nan)
    return a


def _dev(a):
    return _cp().asarray(a) if isinstance(a, np.ndarray) else a


def _host(a):
    return _cp().asnumpy(a)


def _check(name, gpu_fn, ref_fn, args, rtol):
    """gpu_fn(device args, out=NaN buffers) ~ ref_fn(host args); the same bits without out=."""
    expected = ref_fn(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
    expected = expected if isinstance(expected, tuple) else (expected,)
    dev = [_dev(a) for a in args]
    outs = tuple(_nan(e.shape) for e in expected)
    got = gpu_fn(*dev, out=outs if len(outs) > 1 else outs[0])
    got = got if isinstance(got, tuple) else (got,)
    for g, o, e in zip(got, outs, expected):
        assert g is o, f"{name}: the result is not the out= buffer"
        assert_close(_host(g), e, rtol, name)
    again = gpu_fn(*dev)
    again = again if isinstance(again, tuple) else (again,)
    for a, g in zip(again, got):
        assert np.array_equal(_host(a), _host(g)), f"{name}: differs from run to run"


# ---------------------------------------------------------------- elementwise and reductions

SHAPES = [(1,), (7, 13), (200, 10), (3, 5, 7, 9), (2, 27, 27, 96), (1000, 1000)]


@gpu
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward", "add"])
def test_elementwise(S, op, shape):
    rng = np.random.default_rng(len(shape) * 1000 + shape[0])
    a, b = rand(rng, *shape), rand(rng, *shape)
    args = {"relu_forward": (a,), "relu_backward": (a, np.maximum(b, 0)), "leaky_relu_forward": (a, 0.3),
            "leaky_relu_backward": (a, b, 0.3), "add": (a, b)}[op]
    _check(op, getattr(S, op), getattr(ref, op), args, EW)


@gpu
@pytest.mark.parametrize("shape", [(5,), (1, 10), (7, 3), (200, 120), (128, 4096), (1000, 1000),
                                   (200, 28, 28, 6), (16, 55, 55, 96)], ids=str)
def test_bias_grad(S, shape):
    rng = np.random.default_rng(shape[-1])
    _check("bias_grad", S.bias_grad, ref.bias_grad, (rand(rng, *shape),), RED)


@gpu
@pytest.mark.parametrize("shape", [(1, 10), (3, 1), (7, 1000), (200, 10), (1000, 1000), (33, 37)],
                         ids=str)
def test_softmax(S, shape):
    rng = np.random.default_rng(shape[0])
    _check("softmax", S.softmax, ref.softmax, (rand(rng, *shape, scale=3.0),), RED)


@gpu
@pytest.mark.parametrize("onehot", [False, True], ids=["int32", "onehot"])
@pytest.mark.parametrize("classes", [10, 1000])
@pytest.mark.parametrize("rows", [1, 7, 200, 1000])
def test_softmax_cross_entropy(S, rows, classes, onehot):
    cp = _cp()
    rng = np.random.default_rng(rows * classes)
    logits = rand(rng, rows, classes, scale=3.0)
    idx = np.where(rng.random(rows) < 0.5, logits.argmax(axis=1),  # about half right
                   rng.integers(0, classes, rows)).astype(np.int32)
    labels = np.eye(classes, dtype=np.float32)[idx] if onehot else idx
    totals = np.array([1.5, 2.0])
    expected = ref.softmax_cross_entropy(logits, labels, totals)
    d_totals = cp.asarray([1.5, 2.0])
    out = _nan((rows, classes))
    got = S.softmax_cross_entropy(cp.asarray(logits), cp.asarray(labels), d_totals, out=out)
    assert got is out
    assert_close(_host(out), expected, RED, "dlogits")
    t = _host(d_totals)
    assert_close(t[:1], totals[:1], RED, "loss sum")
    assert t[1] == totals[1], f"correct count {t[1]} != {totals[1]}"
    again = S.softmax_cross_entropy(cp.asarray(logits), cp.asarray(labels), d_totals)
    assert np.array_equal(_host(again), _host(out))
    assert _host(d_totals)[1] == 2 * totals[1] - 2.0


# ---------------------------------------------------------------- dropout

@gpu
@pytest.mark.parametrize("seed,step", [(0, 0), (2**40 + 12345, 7), (2**64 - 1, 2**31 - 1)])
@pytest.mark.parametrize("rate", [0.0, 0.5])
@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 5, 7, 9), (128, 4096)], ids=str)
def test_dropout(S, shape, rate, seed, step):
    cp = _cp()
    rng = np.random.default_rng(7)
    x = (rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape)).astype(np.float32)  # never 0
    step_h = np.array([step], np.int32)
    keep = ref.dropout_keep(x.size, rate, seed, step_h).reshape(shape)
    for op in ("dropout_forward", "dropout_backward"):
        out = _nan(shape)
        got = getattr(S, op)(cp.asarray(x), rate, seed, cp.asarray(step_h), out=out)
        assert got is out
        mask = _host(out) != 0
        assert np.array_equal(mask, keep), f"{op}: {np.count_nonzero(mask != keep)} mask bits differ"
        assert_close(_host(out), getattr(ref, op)(x, rate, seed, step_h), EW, op)
    if rate and x.size > 1000:  # the next step draws another mask
        nxt = S.dropout_forward(cp.asarray(x), rate, seed, cp.asarray(step_h + 1))
        assert not np.array_equal(_host(nxt) != 0, keep)


@gpu
@pytest.mark.parametrize("random,flip", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("shape,crop", [((128, 256, 256, 3), (227, 227)), ((3, 7, 300, 1), (5, 257))], ids=str)
def test_crop(S, shape, crop, random, flip):
    cp = _cp()
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    step_h = np.array([12], np.int32)
    args = (random, flip, 2**40 + 1, cp.asarray(step_h))
    out = _nan((shape[0], *crop, shape[3]))
    assert S.crop_forward(cp.asarray(x), *crop, *args, out=out) is out
    expected = ref.crop_forward(x, *crop, random, flip, 2**40 + 1, step_h)
    assert np.array_equal(_host(out), expected)
    dx = _nan(shape)
    S.crop_backward(out, shape, *args, out=dx)
    assert np.array_equal(_host(dx), ref.crop_backward(expected, shape, random, flip, 2**40 + 1, step_h))


@gpu
def test_pca_noise(S):
    cp = _cp()
    x = np.random.default_rng(6).random((128, 227, 227, 3), dtype=np.float32)
    basis = 0.1 * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES)[None, :]
    step_h = np.array([9], np.int32)
    out = _nan(x.shape)
    assert S.pca_noise_forward(cp.asarray(x), basis, 77, cp.asarray(step_h), out=out) is out
    np.testing.assert_allclose(_host(out), ref.pca_noise_forward(x, basis, 77, step_h), rtol=2 ** -23, atol=2 ** -24)


def test_philox_host_build_matches_reference(tmp_path):
    """kernels/dropout.cu's Philox, built for the host by nvcc, gives Random123's and the reference's words."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    cases = [(0, 0, 0, 0, 0, 0), (0xFFFFFFFF,) * 6,
             (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0),
             (5, 1, 7, 0, 0x9ABCDEF0, 0x12345678)]
    src = tmp_path / "philox.cu"
    src.write_text(f'#include <cstdio>\n#include "{_paths.KERNEL_DIR / "dropout.cu"}"\n'
                   "int main() { unsigned t[][6] = {"
                   + ", ".join("{" + ", ".join(f"{v}u" for v in c) + "}" for c in cases) + "};\n"
                   f"  for (int i = 0; i < {len(cases)}; ++i) {{ fc_u32x4 r = fc_philox4x32_10("
                   "t[i][0], t[i][1], t[i][2], t[i][3], t[i][4], t[i][5]);\n"
                   '    printf("%u %u %u %u\\n", r.v[0], r.v[1], r.v[2], r.v[3]); }\n  return 0; }\n')
    exe = tmp_path / "philox"
    subprocess.run([nvcc, "-std=c++17", "-o", str(exe), str(src)], check=True, capture_output=True)
    got = [tuple(map(int, line.split())) for line in subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()]
    expected = [tuple(int(w) for w in ref.philox4x32_10(c[:4], c[4:])) for c in cases]
    assert got == expected
    assert got[0] == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)  # Random123 known answer


# ---------------------------------------------------------------- LRN

@gpu
@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (5, 0.5, 0.75, 1.0),
                                               (3, 0.3, 0.6, 1.5), (1, 0.5, 0.75, 1.0)])
@pytest.mark.parametrize("channels", [1, 3, 7, 96])
def test_lrn(S, channels, size, alpha, beta, k):
    rng = np.random.default_rng(channels + size)
    x, dy = rand(rng, 2, 3, 5, channels), rand(rng, 2, 3, 5, channels)
    _check("lrn_forward", lambda *a, **kw: S.lrn_forward(*a, size, alpha, beta, k, **kw),
           lambda *a: ref.lrn_forward(*a, size, alpha, beta, k), (x,), RED)
    y, scale = ref.lrn_forward(x, size, alpha, beta, k)
    _check("lrn_backward", lambda *a, **kw: S.lrn_backward(*a, size, alpha, beta, k, **kw),
           lambda *a: ref.lrn_backward(*a, size, alpha, beta, k), (dy, x, y, scale), RED)


# ---------------------------------------------------------------- optimizers

def _compare_params(name, dev, host, p0):
    assert_close(_host(dev), host, EW, name)
    if p0 is not None:  # the update itself, not only p (which p0 dominates)
        assert_close(_host(dev) - p0, host - p0, RED, name + " update")


@gpu
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("n", [1, 1000, 61706])
@pytest.mark.parametrize("wd", [0.0, 5e-4])
def test_sgd_update(S, n, momentum, nesterov, wd):
    cp = _cp()
    rng = np.random.default_rng(n)
    p, v = rand(rng, n), (rand(rng, n, scale=0.1) if momentum else None)
    dp, dv = cp.asarray(p), (cp.asarray(v) if momentum else None)
    for _ in range(3):
        g, p0 = rand(rng, n), p.copy()
        ref.sgd_update(p, g, v, 0.1, momentum, nesterov, wd)
        S.sgd_update(dp, cp.asarray(g), dv, 0.1, momentum, nesterov, wd)
        _compare_params("p", dp, p, p0)
        if momentum:
            _compare_params("v", dv, v, None)


@gpu
@pytest.mark.parametrize("n", [1, 1000, 61706])
@pytest.mark.parametrize("wd", [0.0, 0.004], ids=["adam", "adamw"])
def test_adam_update(S, n, wd):
    cp = _cp()
    rng = np.random.default_rng(n)
    p, m, v = rand(rng, n), rand(rng, n, scale=0.01), np.abs(rand(rng, n, scale=0.01))
    step = np.array([3], np.int32)
    dp, dm, dv, dstep = (cp.asarray(a) for a in (p, m, v, step))
    for _ in range(5):
        g, p0 = rand(rng, n), p.copy()
        ref.adam_update(p, g, m, v, step, 0.01, 0.9, 0.999, 1e-7, wd)
        S.adam_update(dp, cp.asarray(g), dm, dv, dstep, 0.01, 0.9, 0.999, 1e-7, wd)
        _compare_params("p", dp, p, p0)
        _compare_params("m", dm, m, None)
        _compare_params("v", dv, v, None)
        ref.increment(step)
        S.increment(dstep)
        assert _host(dstep)[0] == step[0]


@gpu
@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.0, True), (0.9, True)])
@pytest.mark.parametrize("n", [1, 61706])
def test_rmsprop_update(S, n, momentum, centered):
    cp = _cp()
    rng = np.random.default_rng(n)
    p, v = rand(rng, n), np.abs(rand(rng, n, scale=0.1))
    mom = rand(rng, n, scale=0.01) if momentum else None
    avg = rand(rng, n, scale=0.01) if centered else None
    dp, dv = cp.asarray(p), cp.asarray(v)
    dmom, davg = (None if a is None else cp.asarray(a) for a in (mom, avg))
    for _ in range(3):
        g, p0 = rand(rng, n), p.copy()
        ref.rmsprop_update(p, g, v, mom, avg, 0.01, 0.9, momentum, 1e-7)
        S.rmsprop_update(dp, cp.asarray(g), dv, dmom, davg, 0.01, 0.9, momentum, 1e-7)
        _compare_params("p", dp, p, p0)
        for name, dev, host in (("v", dv, v), ("mom", dmom, mom), ("avg", davg, avg)):
            if host is not None:
                _compare_params(name, dev, host, None)


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64])
def test_copy(S, dtype):
    cp = _cp()
    src = cp.asarray(np.arange(1001).astype(dtype))
    dst = cp.zeros(1001, dtype)
    assert S.copy(dst, src) is None
    assert np.array_equal(_host(dst), _host(src))


@gpu
def test_copy_channels(S):
    cp = _cp()
    src = np.arange(128 * 27 * 27 * 96, dtype=np.float32).reshape(128, 27, 27, 96)   # AlexNet's two towers
    expected = np.full(src.shape[:-1] + (48,), np.nan, np.float32)
    dst = cp.asarray(expected)
    assert S.copy_channels(dst, cp.asarray(src), 0, 48, 48) is None
    np.testing.assert_array_equal(_host(dst), src[..., 48:])


@gpu
def test_gather_rows(S):
    cp = _cp()
    x = np.random.default_rng(0).random((1000, 28, 28, 1), dtype=np.float32)
    labels = np.arange(1000, dtype=np.int32)
    rows = np.random.default_rng(1).permutation(1000)[:200].astype(np.int32)
    xb, yb = cp.full((200, 28, 28, 1), np.nan, np.float32), cp.zeros(200, np.int32)
    d_rows = cp.asarray(rows)
    assert S.gather_rows(xb, cp.asarray(x), d_rows) is None
    S.gather_rows(yb, cp.asarray(labels), d_rows)
    np.testing.assert_array_equal(_host(xb), x[rows])
    np.testing.assert_array_equal(_host(yb), rows)


# ---------------------------------------------------------------- CUDA graphs

@gpu
def test_graph_replay_advances_step(S):
    """relu -> dropout -> softmax + xent -> adam -> increment, captured once, replayed 3 times."""
    cp = _cp()
    rng = np.random.default_rng(11)
    N, K, n = 200, 10, 5000
    x, labels = rand(rng, N, K, scale=2.0), rng.integers(0, K, N).astype(np.int32)
    p, g = rand(rng, n), rand(rng, n)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    step, totals = np.zeros(1, np.int32), np.zeros(2)
    d = {k: cp.asarray(a) for k, a in dict(x=x, labels=labels, p=p, g=g, m=m, v=v,
                                            step=step, totals=totals).items()}
    initial = {k: a.copy() for k, a in d.items()}
    relu_out, drop_out, dlogits = _nan((N, K)), _nan((N, K)), _nan((N, K))

    def body():
        S.relu_forward(d["x"], out=relu_out)
        S.dropout_forward(relu_out, 0.5, 1234, d["step"], out=drop_out)
        S.softmax_cross_entropy(drop_out, d["labels"], d["totals"], out=dlogits)
        S.adam_update(d["p"], d["g"], d["m"], d["v"], d["step"], 1e-3, 0.9, 0.999, 1e-7)
        S.increment(d["step"])

    cp.cuda.Device().synchronize()  # the arrays above were filled on the legacy stream
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        body()  # warm-up on the capture stream: compiles every module outside the capture
        for k in d:
            S.copy(d[k], initial[k])
        stream.synchronize()
        stream.begin_capture()
        body()
        graph = stream.end_capture()
    stream.synchronize()
    assert _host(d["step"])[0] == 0, "capture must not run the kernels"
    for replay in range(3):
        graph.launch(stream)
        stream.synchronize()
        r = ref.relu_forward(x)
        dr = ref.dropout_forward(r, 0.5, 1234, step)
        expected = ref.softmax_cross_entropy(dr, labels, totals)
        ref.adam_update(p, g, m, v, step, 1e-3, 0.9, 0.999, 1e-7)
        ref.increment(step)
        assert _host(d["step"])[0] == step[0] == replay + 1
        assert_close(_host(dlogits), expected, RED, f"dlogits, replay {replay}")
        assert_close(_host(d["totals"]), totals, RED, f"totals, replay {replay}")
        for k, a in (("p", p), ("m", m), ("v", v)):
            assert_close(_host(d[k]), a, EW, f"{k}, replay {replay}")


@gpu
def test_graph_with_allocating_ops(S):
    """Ops that allocate (results, bias_grad's two-pass workspace) inside a capture."""
    cp = _cp()
    rng = np.random.default_rng(12)
    dy, x = rand(rng, 64, 28, 28, 6), rand(rng, 50, 10)
    ddy, dx = cp.asarray(dy), cp.asarray(x)
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        S.bias_grad(ddy), S.softmax(dx)  # warm-up on the capture stream (compile, pool blocks)
        stream.synchronize()
        stream.begin_capture()
        bg, sm = S.bias_grad(ddy), S.softmax(dx)
        graph = stream.end_capture()
        bg.fill(np.nan)  # (outside the graph, same stream) the replay must rewrite both
        sm.fill(np.nan)
        graph.launch(stream)
    stream.synchronize()
    assert_close(_host(bg), ref.bias_grad(dy), RED, "bias_grad in a graph")
    assert_close(_host(sm), ref.softmax(x), RED, "softmax in a graph")


# ---------------------------------------------------------------- bad inputs, registration

def _bad_cases(S):
    cp = _cp()
    f, i32 = cp.ones((4, 10), np.float32), cp.zeros(4, np.int32)
    flat, step, totals = cp.ones(8, np.float32), cp.zeros(1, np.int32), cp.zeros(2)
    return [
        (TypeError, "CuPy", lambda: S.relu_forward(np.ones(3, np.float32))),
        (TypeError, "float32", lambda: S.relu_forward(f.astype(np.float64))),
        (ValueError, "shape", lambda: S.relu_backward(f, f[:2])),
        (ValueError, "contiguous", lambda: S.add(f[:, ::2], f[:, ::2].copy())),
        (ValueError, "shape", lambda: S.add(f, f, out=cp.empty((4, 9), np.float32))),
        (ValueError, "2 dimensions", lambda: S.softmax(flat)),
        (ValueError, "overlaps", lambda: S.softmax(f, out=f)),
        (TypeError, "int32", lambda: S.softmax_cross_entropy(f, i32.astype(np.int64), totals)),
        (TypeError, "float32", lambda: S.softmax_cross_entropy(f, f.astype(np.float64), totals)),
        (ValueError, "labels", lambda: S.softmax_cross_entropy(f, i32[:3], totals)),
        (TypeError, "float64", lambda: S.softmax_cross_entropy(f, i32, totals.astype(np.float32))),
        (ValueError, "totals", lambda: S.softmax_cross_entropy(f, i32, cp.zeros(3))),
        (ValueError, "rate", lambda: S.dropout_forward(f, 1.0, 0, step)),
        (ValueError, "rate", lambda: S.dropout_backward(f, -0.1, 0, step)),
        (ValueError, "seed", lambda: S.dropout_forward(f, 0.5, -1, step)),
        (TypeError, "int32", lambda: S.dropout_forward(f, 0.5, 0, step.astype(np.int64))),
        (ValueError, "step", lambda: S.dropout_forward(f, 0.5, 0, cp.zeros(2, np.int32))),
        (ValueError, "odd", lambda: S.lrn_forward(f.reshape(1, 1, 4, 10), 4, 1e-4, 0.75, 2.0)),
        (ValueError, "4 dimensions", lambda: S.lrn_forward(f, 5, 1e-4, 0.75, 2.0)),
        (ValueError, "velocity", lambda: S.sgd_update(flat, flat.copy(), None, 0.1, 0.9, False)),
        (ValueError, "equal length", lambda: S.sgd_update(flat, cp.ones(7, np.float32), None, 0.1, 0, False)),
        (ValueError, "1 dimensions", lambda: S.adam_update(f, f, f, f, step, 1e-3, 0.9, 0.999, 1e-7)),
        (TypeError, "int32", lambda: S.adam_update(flat, flat.copy(), flat.copy(), flat.copy(),
                                                   step.astype(np.float32), 1e-3, 0.9, 0.999, 1e-7)),
        (TypeError, "real number", lambda: S.adam_update(flat, flat.copy(), flat.copy(), flat.copy(),
                                                         step, "0.001", 0.9, 0.999, 1e-7)),
        (TypeError, "int32", lambda: S.increment(step.astype(np.int64))),
        (ValueError, "shape", lambda: S.copy(flat, cp.ones(9, np.float32))),
        (TypeError, "float32", lambda: S.copy(flat, cp.ones(8, np.float64))),
    ], flat


# ---------------------------------------------------------------- bfloat16

BF16 = dtypes.bfloat16


def _bf16_bits_nan_aware(a):
    """bfloat16 bits with every NaN as 0x7FFF (the GPU's conversion; ml_dtypes keeps the payload)."""
    bits = np.asarray(a).view(np.uint16).copy()
    bits[np.isnan(np.asarray(a).astype(np.float32))] = 0x7FFF
    return bits


@gpu
def test_cast_rounds_as_the_emulator_does(S):
    """cvt.rn.bf16.f32 on this GPU: ml_dtypes' round to nearest even on every pattern (ties,
    overflow, subnormals), NaN as 0x7FFF: what tests/cuda_emu.py's bfloat16 and
    tests/test_emu_bf16.py assume.  Widening back is exact."""
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    bits[::3] = (bits[::3] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    x = bits.view(np.float32)
    with np.errstate(invalid="ignore"):
        want = _bf16_bits_nan_aware(x.astype(BF16))
    got = _host(S.cast(_dev(x), "bfloat16"))
    assert got.dtype == BF16 and np.array_equal(got.view(np.uint16), want)
    back = _host(S.cast(_dev(got), "float32"))
    assert np.array_equal(back.view(np.uint32), got.view(np.uint16).astype(np.uint32) << 16)


@gpu
@pytest.mark.parametrize("op", ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward", "add",
                                "dropout_forward", "crop_forward", "crop_backward"])
def test_bfloat16_ops_are_the_references_bit_for_bit(S, op):
    """bfloat16 in, the float32 op on the widened values, one rounding: the reference's bits
    (NaN as NaN)."""
    rng = np.random.default_rng(len(op))
    a, b = (rand(rng, 4, 9, 8, 3).astype(BF16) for _ in range(2))
    step = np.array([3], np.int32)
    args = {"relu_forward": (a,), "relu_backward": (a, b), "leaky_relu_forward": (a, 0.3),
            "leaky_relu_backward": (a, b, 0.3), "add": (a, b), "dropout_forward": (a, 0.5, 7, step),
            "crop_forward": (a, 5, 4, True, True, 7, step),
            "crop_backward": (a[:, :5, :4], (4, 9, 8, 3), True, True, 7, step)}[op]
    args = tuple(np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for v in args)
    want = getattr(ref, op)(*args)
    got = _host(getattr(S, op)(*[_dev(v) for v in args]))
    assert got.dtype == BF16 and np.array_equal(_bf16_bits_nan_aware(got), _bf16_bits_nan_aware(want)), op


@gpu
def test_bfloat16_reductions_and_optimizer_copy(S):
    """bias_grad and softmax of bfloat16 are float32 (1e-5 of the reference); xent's dlogits within
    a bfloat16 rounding; an Adam step's p_bf16 is its p rounded, bit for bit."""
    cp = _cp()
    rng = np.random.default_rng(9)
    dy = rand(rng, 200, 120).astype(BF16)
    got = S.bias_grad(_dev(dy))
    assert got.dtype == np.float32
    assert_close(_host(got), ref.bias_grad(dy.astype(np.float64)), RED, "bias_grad")
    logits = rand(rng, 200, 10, scale=3.0).astype(BF16)
    assert_close(_host(S.softmax(_dev(logits))), ref.softmax(logits.astype(np.float64)), RED, "softmax")
    labels = rng.integers(0, 10, 200).astype(np.int32)
    totals, want_totals = cp.zeros(2), np.zeros(2)
    d = _host(S.softmax_cross_entropy(_dev(logits), _dev(labels), totals)).astype(np.float64)
    want = ref.softmax_cross_entropy(logits, labels, want_totals).astype(np.float64)
    assert np.all(np.abs(d - want) <= 2.0 ** -8 * np.abs(want) + 1e-9)
    assert_close(_host(totals)[:1], want_totals[:1], RED, "loss")
    assert _host(totals)[1] == want_totals[1]
    p, g, m, v = (rand(rng, 1031) for _ in range(4))
    v = np.abs(v)
    dp, dm, dv, p16 = _dev(p), _dev(m), _dev(v), cp.empty(1031, BF16)
    S.adam_update(dp, _dev(g), dm, dv, _dev(np.array([2], np.int32)), 1e-3, 0.9, 0.999, 1e-7, p_bf16=p16)
    assert np.array_equal(_host(p16).view(np.uint16), _host(dp).astype(BF16).view(np.uint16))


@gpu
def test_bad_inputs_rejected_before_launch(S):
    cases, flat = _bad_cases(S)
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
    assert np.array_equal(_host(flat), np.ones(8, np.float32)), "a rejected update changed p"


def test_every_op_has_a_cuda_default(S):
    from fastcnn import kernels
    for op in S._NOTES:
        assert "cuda" in kernels.variants(op, source="cuda")
        assert kernels.get(op, "cuda").fn is getattr(S, op)
