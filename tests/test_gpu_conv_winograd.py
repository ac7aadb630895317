"""The `winograd` (F(2x2,3x3) and F(2x2,5x5)) and `winograd4` (F(4x4,3x3) and F(4x4,5x5))
variants (fastcnn/backend/cuda/conv_winograd.py, kernels/conv_winograd.cu); their
backward-weights is F(3x3, mxm) / F(5x5, mxm) over dy's tiles.

GPU (``gpu`` marker): conv2d_forward, conv2d_backward_data and conv2d_backward_weights against the float64
reference on AlexNet's conv3-conv5 shapes at batch 2 and on small odd shapes
(spatial 5, 7, 13, 14; C and K in 1, 3, 8, 96; 'same', 'valid' and asymmetric
padding; with and without bias and ReLU), written into NaN-poisoned ``out=``
buffers, relative error in norm <= 1e-4, then again without ``out=`` bit for bit;
shapes it does not handle raise ValueError.  5x5 kernels: AlexNet conv2 (27x27x96
-> 256, pad 2) at batch 2, LeNet-5 conv1 (1 -> 6, pad 2) and conv2 (6 -> 16, valid),
and odd shapes with paddings up to 4.

CPU (no GPU): each variant is registered and refuses other kernel sizes, stride 2 and
padding R from the shapes alone, before any CuPy call; the 5x5 transform matrices,
rebuilt in exact fractions by the Toom-Cook construction, match a direct
correlation and round <= 1e-4 in float32 on AlexNet conv2; and, where g++ is found,
the CUDA C source itself runs on the CPU under tests/cuda_emu.py (one fiber per CUDA
thread of a block, blocks one after another, __syncthreads a barrier, __shared__ a
static shared by the block's threads) through the module's own launch sequence, with
guard zones around every array and workspace, against the reference.

    pytest tests/test_gpu_conv_winograd.py
"""
import types

import numpy as np
import pytest

import cuda_emu
from helpers import assert_close, rand

from fastcnn.backend import checks
from fastcnn.backend import reference as ref
from fastcnn.backend import registry
from fastcnn.backend.cuda import conv as conv_checks  # the shared argument checks
from fastcnn.backend.cuda import conv_winograd as cw

gpu = pytest.mark.gpu
TOL = 1e-4
NAMES = ("winograd", "winograd4")
SAME, VALID = (1, 1, 1, 1), (0, 0, 0, 0)
SAME5 = (2, 2, 2, 2)

# (N, H, W, C, K, padding, bias, relu)
CASES = [
    (2, 13, 13, 256, 384, SAME, True, True),     # AlexNet conv3
    (2, 13, 13, 384, 384, SAME, True, True),     # AlexNet conv4
    (2, 13, 13, 384, 256, SAME, True, True),     # AlexNet conv5
    (2, 13, 13, 384, 256, SAME, False, False),
    (1, 5, 5, 1, 1, SAME, True, False),
    (2, 5, 5, 3, 8, VALID, False, True),
    (1, 7, 7, 8, 3, (2, 0, 1, 2), True, True),
    (2, 7, 5, 96, 8, SAME, False, False),
    (1, 13, 14, 3, 96, VALID, True, False),
    (2, 14, 13, 8, 96, (0, 2, 2, 0), True, True),
    (1, 14, 14, 96, 1, (2, 2, 2, 2), False, True),
    (3, 13, 7, 1, 3, (1, 0, 0, 1), True, True),
    (1, 14, 5, 96, 96, (0, 1, 2, 1), True, False),
    (1, 3, 3, 8, 8, VALID, True, True),          # one output pixel
]
# (N, H, W, C, K, padding, bias, relu) for 5x5 kernels
CASES5 = [
    (2, 27, 27, 96, 256, SAME5, True, True),     # AlexNet conv2
    (2, 27, 27, 96, 256, SAME5, False, False),
    (2, 28, 28, 1, 6, SAME5, True, True),        # LeNet-5 conv1
    (2, 14, 14, 6, 16, VALID, True, True),       # LeNet-5 conv2
    (1, 5, 5, 1, 1, VALID, True, False),         # one output pixel
    (1, 7, 7, 3, 8, (4, 4, 4, 4), False, True),
    (2, 9, 11, 8, 3, (4, 0, 1, 3), True, True),
    (1, 13, 7, 96, 8, SAME5, False, False),
    (3, 6, 13, 1, 3, (1, 2, 0, 4), True, False),
    (1, 11, 14, 13, 131, (3, 1, 2, 0), True, True),
]


def _ids(cases):
    return [f"{N}x{H}x{W}x{C}-K{K}-pad{''.join(map(str, p))}{'-b' if b else ''}{'-relu' if r else ''}"
            for N, H, W, C, K, p, b, r in cases]


IDS, IDS5 = _ids(CASES), _ids(CASES5)
# (variant, R, case) for the GPU tests: every case for each variant, 3x3 and 5x5
GPU_CASES = [(n, 3, c) for n in NAMES for c in CASES] + [(n, 5, c) for n in NAMES for c in CASES5]
GPU_IDS = [f"{n}-3x3-{i}" for n in NAMES for i in IDS] + [f"{n}-5x5-{i}" for n in NAMES for i in IDS5]


def _f64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


def _problem(case, seed, R=3):
    N, H, W, C, K, padding, bias, relu = case
    rng = np.random.default_rng(seed)
    x, w = rand(rng, N, H, W, C), rand(rng, R, R, C, K, scale=(R * R * C) ** -0.5)
    b = rand(rng, K) if bias else None
    P, Q = checks.output_size((H, W), (R, R), (1, 1), padding, "kernel")
    dy = rand(rng, N, P, Q, K)
    return x, w, b, dy, padding, relu


# ---------------------------------------------------------------- CPU: registration and refusals

@pytest.mark.parametrize("name", NAMES)
def test_registered_not_default(name):
    for op in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights"):
        assert name in registry.variants(op, "cuda")
        v = registry.get(op, name)
        assert v.source == "cuda" and "Winograd" in v.note
        assert registry.get(op).name != name  # never the default (fastcnn.backend.preferences)


@pytest.fixture
def no_gpu(monkeypatch):
    """Any array check, allocation or launch fails the test: refusals must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("the GPU was touched before the shape was refused")
    monkeypatch.setattr(cw, "_launch", types.SimpleNamespace(check=boom, function=boom))
    monkeypatch.setattr(conv_checks, "_launch", types.SimpleNamespace(check=boom, function=boom))
    monkeypatch.setattr(conv_checks, "out_array", boom)
    monkeypatch.setattr(cw, "_DEVICE", types.SimpleNamespace(empty=boom, launch=boom, blocks=boom))


REFUSED = [((7, 7), (1, 1), (2, 2, 2, 2), r"3x3 and 5x5 kernels only.*7x7"),
           ((5, 3), (1, 1), SAME, r"3x3 and 5x5 kernels only.*5x3"),
           ((1, 1), (1, 1), VALID, r"3x3 and 5x5 kernels only.*1x1"),
           ((3, 3), (2, 2), SAME, r"stride 1 only.*\(2, 2\)"),
           ((3, 3), (1, 2), SAME, r"stride 1 only"),
           ((3, 3), (1, 1), (3, 1, 1, 1), r"padding up to 2 per side \(3x3"),
           ((5, 5), (2, 2), SAME5, r"stride 1 only.*\(2, 2\)"),
           ((5, 5), (1, 1), (2, 2, 5, 2), r"padding up to 4 per side \(5x5")]
REFUSALS = [(n,) + c for n in NAMES for c in REFUSED]
REFUSAL_IDS = [f"{n}-{i}" for n in NAMES
               for i in ("7x7", "5x3", "1x1", "stride2", "stride1x2", "pad3", "5x5-stride2", "5x5-pad5")]


@pytest.mark.parametrize("name,rs,stride,padding,match", REFUSALS, ids=REFUSAL_IDS)
def test_refuses_other_shapes_before_the_gpu(no_gpu, name, rs, stride, padding, match):
    x = np.ones((1, 9, 9, 4), np.float32)
    w = np.ones(rs + (4, 2), np.float32)
    with pytest.raises(ValueError, match=match):
        registry.get("conv2d_forward", name).fn(x, w, None, stride, padding, True)
    dy = np.ones((1, 4, 4, 2), np.float32)  # shape irrelevant: refused before it is looked at
    with pytest.raises(ValueError, match=match):
        registry.get("conv2d_backward_data", name).fn(dy, w, x.shape, stride, padding)
    if "padding up to" not in match:  # backward-weights takes any padding
        with pytest.raises(ValueError, match=match):
            registry.get("conv2d_backward_weights", name).fn(x, dy, w.shape, stride, padding)


@pytest.mark.parametrize("blocks,T,slots,splits", [
    (128, 6272, 264, 2),    # AlexNet conv2, F(5x5,4x4): 128 blocks -> 256 of 264 slots
    (324, 2048, 264, 3),    # AlexNet conv4, F(3x3,4x4): 1.2 waves -> 972 blocks in 4 (92%)
    (216, 2048, 264, 6),    # AlexNet conv3 / conv5
    (264, 100000, 264, 1),  # a whole wave already
    (64, 300, 264, 1),      # too few tiles to split (chunks of >= 256)
    (10, 10**6, 264, 8),    # never more than 8 splits: the best filled of them
])
def test_wgrad_splits_fill_whole_waves(blocks, T, slots, splits):
    assert cw.wgrad_splits(blocks, T, slots) == splits


# ---------------------------------------------------------------- CPU: the 5x5 transforms in NumPy

def _toom_cook(m, r, points):
    """A^T (m x n), G (n x r), B^T (n x n) of F(m, r), n = m + r - 1, from the finite points and
    infinity (Lavin & Gray; wincnn), in exact fractions: y = A^T [(G g) * (B^T d)] is the
    correlation y[i] = sum_k d[i+k] g[k]."""
    from fractions import Fraction

    def mul(a, b):
        out = [Fraction(0)] * (len(a) + len(b) - 1)
        for i, u in enumerate(a):
            for j, v in enumerate(b):
                out[i + j] += u * v
        return out
    pts, n = [Fraction(p) for p in points], m + r - 1
    assert len(pts) == n - 1
    AT = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    G, BT, full = [], [], [Fraction(1)]
    for j, p in enumerate(pts):
        full = mul(full, [-p, Fraction(1)])
        others, f = [Fraction(1)], Fraction(1)
        for q in pts[:j] + pts[j + 1:]:
            others, f = mul(others, [-q, Fraction(1)]), f * (p - q)
        G.append([p ** k / f for k in range(r)])
        BT.append(others + [Fraction(0)])
    G.append([Fraction(int(k == r - 1)) for k in range(r)])
    BT.append(full)
    return [np.array([[float(v) for v in row] for row in X]) for X in (AT, G, BT)]


POINTS5 = {2: (0, 1, -1, 2, -2), 4: (0, 1, -1, 2, -2, 0.5, -0.5)}  # output tile m -> finite points


def _winograd_numpy(x, w, pad, m, mats, dtype):
    """Same-padded (pad on every side) stride-1 conv by 2-D Winograd, all in ``dtype``."""
    AT, G, BT = (a.astype(dtype) for a in mats)
    N, H, W, C = x.shape
    R, K = w.shape[0], w.shape[3]
    n, P, Q = m + R - 1, H + 2 * pad - R + 1, W + 2 * pad - R + 1
    TH, TW = -(-P // m), -(-Q // m)
    xp = np.zeros((N, TH * m + R - 1, TW * m + R - 1, C), dtype)
    xp[:, pad:pad + H, pad:pad + W] = x
    U = np.einsum("ir,rsck,js->ijck", G, w.astype(dtype), G)
    rows = np.arange(TH)[:, None] * m + np.arange(n)
    cols = np.arange(TW)[:, None] * m + np.arange(n)
    d = xp[:, rows][:, :, :, cols]  # N, TH, n, TW, n, C
    V = np.einsum("ia,nxaybc,jb->ijnxyc", BT, d, BT).reshape(n, n, -1, C)
    M = np.matmul(V, U).reshape(n, n, N, TH, TW, K)
    y = np.einsum("pi,ijnxyk,qj->nxpyqk", AT, M, AT).reshape(N, TH * m, TW * m, K)
    return y[:, :P, :Q]


@pytest.mark.parametrize("name", NAMES)
def test_5x5_transforms_exact_and_float32_error_on_alexnet_conv2(name):
    m, R = cw.VARIANTS[name], 5
    mats = _toom_cook(m, R, POINTS5[m])
    rng = np.random.default_rng(3)
    for _ in range(3):  # 1-D: exact (up to float64 rounding) against a direct correlation
        d, g = rng.standard_normal(m + R - 1), rng.standard_normal(R)
        y = mats[0] @ ((mats[1] @ g) * (mats[2] @ d))
        assert np.allclose(y, [d[i:i + R] @ g for i in range(m)], rtol=0, atol=1e-12)
    # AlexNet conv2 (27x27x96 -> 256, pad 2) and its dgrad (256 -> 96): float32 vs float64 direct
    for C, K in ((96, 256), (256, 96)):
        x = rng.standard_normal((1, 27, 27, C))
        w = rng.standard_normal((R, R, C, K)) * (R * R * C) ** -0.5
        expected = ref.conv2d_forward(x, w, None, (1, 1), (2, 2, 2, 2), False)
        assert np.allclose(_winograd_numpy(x, w, 2, m, mats, np.float64), expected, rtol=0, atol=1e-10)
        got = _winograd_numpy(x, w, 2, m, mats, np.float32)
        err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert err <= 1e-4, f"{name}: float32 error {err:.2e} on C={C}, K={K}"


# ---------------------------------------------------------------- CPU: the CUDA C source, emulated

EMU_CASES = [CASES[i] for i in (4, 5, 6, 9, 11, 13)] + [(1, 4, 9, 13, 131, (1, 0, 0, 1), True, False)]
EMU_CASES5 = [CASES5[i] for i in (4, 5, 6, 8)] + [
    (1, 28, 28, 1, 6, SAME5, True, True),        # LeNet-5 conv1 at batch 1
    (1, 14, 14, 6, 16, VALID, True, True),       # LeNet-5 conv2 at batch 1
    (1, 9, 10, 13, 131, (3, 1, 2, 0), True, False),
    (1, 6, 7, 96, 9, SAME5, True, True),
]
EMU = [(n, 3, c) for n in NAMES for c in EMU_CASES] + [(n, 5, c) for n in NAMES for c in EMU_CASES5]
EMU_IDS = [f"{n}-{R}x{R}-{c[:5]}{c[5]}" for n, R, c in EMU]


@pytest.mark.parametrize("name,R,case", EMU, ids=EMU_IDS)
def test_cuda_source_emulated_on_cpu(monkeypatch, case, name, R):
    """The module's own checks and launch sequence (the real _DEVICE: workspaces from
    cupy.empty, kernels by name), with NumPy arrays in guard zones and the kernels run on the
    CPU.  Grid-stride grids are capped at 3 blocks so that their loops go round."""
    guarded, launches = cuda_emu.Guarded(), []
    cuda_emu.patch_backend(monkeypatch, guarded, grid_cap=3, log=launches)
    x, w, b, dy, padding, relu = (guarded.wrap(a) if isinstance(a, np.ndarray) else a for a in _problem(case, 7, R))
    out = guarded.empty(dy.shape)
    y = registry.get("conv2d_forward", name).fn(x, w, b, (1, 1), padding, relu, out=out)
    assert y is out
    assert_close(y, ref.conv2d_forward(*_f64(x, w, b), (1, 1), padding, relu), TOL, "forward")
    dx = registry.get("conv2d_backward_data", name).fn(dy, w, x.shape, (1, 1), padding)
    assert_close(dx, ref.conv2d_backward_data(*_f64(dy, w), x.shape, (1, 1), padding), TOL, "dgrad")
    dw = registry.get("conv2d_backward_weights", name).fn(x, dy, w.shape, (1, 1), padding, out=guarded.empty(w.shape))
    assert_close(dw, ref.conv2d_backward_weights(*_f64(x, dy), w.shape, (1, 1), padding), TOL, "wgrad")
    assert all(grid[0] <= 3 for kernel, grid, _ in launches if "transform" in kernel), launches
    assert guarded.intact(), f"a kernel wrote outside an array or workspace: {launches}"


# (N, H, W, C, K, padding, R): padding past R-1 (backward-weights takes any), ragged tiles
EMU_WGRAD = [(2, 9, 7, 3, 5, (3, 0, 4, 1), 3), (3, 6, 11, 13, 131, (0, 3, 2, 2), 3),
             (2, 8, 9, 5, 7, (5, 1, 0, 6), 5), (1, 12, 10, 96, 9, (2, 2, 2, 2), 5)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", EMU_WGRAD, ids=lambda c: f"{c[6]}x{c[6]}-{c[:5]}{c[5]}")
def test_wgrad_split_over_tiles_emulated_on_cpu(monkeypatch, case, name):
    """Backward-weights with its reduction over the tiles split in 2-3 chunks (multiples of 8
    tiles), so that the output transform sums partial GEMMs and the last chunk is ragged."""
    N, H, W, C, K, padding, R = case
    guarded, launches = cuda_emu.Guarded(), []
    cuda_emu.patch_backend(monkeypatch, guarded, grid_cap=3, log=launches)
    monkeypatch.setattr(cw, "wgrad_splits", lambda blocks, T, slots: 3)  # the plan itself: tested above
    rng = np.random.default_rng(11)
    P, Q = checks.output_size((H, W), (R, R), (1, 1), padding, "kernel")
    x, dy = guarded.wrap(rand(rng, N, H, W, C)), guarded.wrap(rand(rng, N, P, Q, K))
    dw = registry.get("conv2d_backward_weights", name).fn(x, dy, (R, R, C, K), (1, 1), padding)
    E = (cw.VARIANTS[name] + R - 1) ** 2
    gemm_z = [grid[2] for kernel, grid, _ in launches if kernel == "winograd_wgrad_gemm"]
    assert gemm_z and gemm_z[0] > E and gemm_z[0] % E == 0, launches   # split in more than one chunk
    assert_close(dw, ref.conv2d_backward_weights(*_f64(x, dy), (R, R, C, K), (1, 1), padding), TOL, "wgrad")
    assert guarded.intact(), f"a kernel wrote outside an array or workspace: {launches}"


# ---------------------------------------------------------------- GPU

def _poisoned(cp, shape):
    a = cp.empty(shape, dtype=np.float32)
    a.fill(np.nan)
    return a


def _pass(kind, case, R):
    """(op, positional args with NumPy arrays, float64 expected result) of one pass."""
    x, w, b, dy, padding, relu = _problem(case, {"forward": 1, "dgrad": 2, "wgrad": 3}[kind], R)
    if kind == "forward":
        return "conv2d_forward", (x, w, b, (1, 1), padding, relu), \
            ref.conv2d_forward(*_f64(x, w, b), (1, 1), padding, relu)
    if kind == "dgrad":
        return "conv2d_backward_data", (dy, w, x.shape, (1, 1), padding), \
            ref.conv2d_backward_data(*_f64(dy, w), x.shape, (1, 1), padding)
    return "conv2d_backward_weights", (x, dy, w.shape, (1, 1), padding), \
        ref.conv2d_backward_weights(*_f64(x, dy), w.shape, (1, 1), padding)


@gpu
@pytest.mark.parametrize("kind", ["forward", "dgrad", "wgrad"])
@pytest.mark.parametrize("name,R,case", GPU_CASES, ids=GPU_IDS)
def test_matches_reference(case, name, R, kind):
    """Into a NaN-poisoned out= buffer, then again without it, bit for bit."""
    import cupy as cp
    op, args, expected = _pass(kind, case, R)
    fn = registry.get(op, name).fn
    dev = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    out = _poisoned(cp, expected.shape)
    got = fn(*dev, out=out)
    assert got is out
    assert_close(cp.asnumpy(got), expected, TOL, f"{name} {kind} {case}")
    again = fn(*dev)
    assert np.array_equal(cp.asnumpy(again), cp.asnumpy(got)), "differs from run to run"


@gpu
@pytest.mark.parametrize("name,rs,stride,padding,match", REFUSALS, ids=REFUSAL_IDS)
def test_refuses_other_shapes_on_the_gpu(rs, stride, padding, match, name):
    import cupy as cp
    x = cp.ones((1, 9, 9, 4), np.float32)
    w = cp.ones(rs + (4, 2), np.float32)
    with pytest.raises(ValueError, match=match):
        registry.get("conv2d_forward", name).fn(x, w, None, stride, padding, True)
    with pytest.raises(ValueError, match=match):
        registry.get("conv2d_backward_data", name).fn(cp.ones((1, 4, 4, 2), np.float32), w, x.shape,
                                                      stride, padding)
