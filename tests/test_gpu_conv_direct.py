"""The ``direct`` convolution variants (conv_direct.py, kernels/conv_direct.cu) against the reference.

GPU (``gpu`` marker, skipped without one): forward (bias+ReLU), backward-data and
backward-weights on a table of shapes (LeNet-5 layers at batch 200 and 1, odd sizes,
strides 1-4, asymmetric paddings, kernels 1-11, C in {1,3,6,16,96}, K in
{1,6,16,40,96}, AlexNet conv1 at batch 2), written into NaN-poisoned ``out=``
buffers, relative error in norm <= 1e-4 against float64; a second run without
``out=`` must give the same bits.  Bad inputs are refused before any launch.

CPU: the launch plans, host arrays refused, and the CUDA C source itself run on the
CPU by tests/cuda_emu.py (g++, one fiber per GPU thread, blocks in turn, __syncthreads
a barrier) and driven by the module's own checks and launch code, with guard zones
around every array.

    pytest tests/test_gpu_conv_direct.py
"""
import numpy as np
import pytest

import cuda_emu
from helpers import assert_close, rand, same4

from fastcnn.backend import checks
from fastcnn.backend import reference as ref
from fastcnn.backend.cuda import conv_direct as cd

gpu = pytest.mark.gpu
TOL = 1e-4
OPS = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights")


V0 = (0, 0, 0, 0)
# (N, H, W, C, K, R, S, stride, padding, relu)
CASES = [
    (200, 28, 28, 1, 6, 5, 5, (1, 1), same4(28, 28, 5, 5, 1, 1), True),   # LeNet-5 conv1
    (200, 14, 14, 6, 16, 5, 5, (1, 1), V0, True),                          # LeNet-5 conv2
    (1, 28, 28, 1, 6, 5, 5, (1, 1), same4(28, 28, 5, 5, 1, 1), True),     # the same at batch 1
    (1, 14, 14, 6, 16, 5, 5, (1, 1), V0, True),
    (2, 227, 227, 3, 96, 11, 11, (4, 4), V0, True),                        # AlexNet conv1
    (1, 5, 5, 1, 1, 1, 1, (1, 1), V0, False),
    (2, 9, 7, 3, 5, 3, 3, (1, 1), (1, 1, 1, 1), True),
    (1, 11, 13, 4, 8, 3, 2, (2, 3), (1, 0, 2, 1), True),
    (1, 10, 9, 5, 3, 4, 2, (3, 2), (2, 1, 0, 1), False),
    (3, 17, 19, 3, 7, 11, 11, (4, 4), (2, 3, 1, 0), True),
    (1, 12, 12, 16, 20, 2, 2, (2, 2), (0, 1, 0, 1), True),
    (1, 8, 8, 1, 1, 7, 7, (1, 1), (3, 3, 3, 3), False),
    (4, 40, 40, 2, 4, 3, 3, (1, 1), (1, 1, 1, 1), False),
    (2, 13, 11, 96, 40, 3, 3, (1, 1), (1, 1, 1, 1), True),                # C = 96: weights staged in parts
    (1, 9, 9, 96, 96, 5, 5, (2, 2), (2, 1, 1, 2), False),
    (2, 15, 16, 16, 96, 1, 1, (1, 1), V0, True),                           # 1x1
    (1, 23, 21, 6, 1, 11, 11, (3, 4), (5, 0, 2, 3), True),                 # K = 1, 11x11
    (2, 12, 13, 16, 6, 3, 3, (4, 3), (0, 2, 1, 0), False),
    (1, 7, 30, 3, 40, 5, 3, (1, 2), (2, 2, 0, 0), True),
    (2, 33, 31, 6, 16, 5, 5, (2, 1), (1, 1, 2, 2), True),
    (3, 31, 29, 1, 16, 3, 3, (1, 1), (0, 2, 2, 0), True),
]


def case_id(c):
    N, H, W, C, K, R, S, st, pad, relu = c
    return f"N{N}-{H}x{W}x{C}-K{K}-{R}x{S}-s{st[0]}{st[1]}-p{''.join(map(str, pad))}{'-relu' if relu else ''}"


def _f64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


def _problem(op, case, seed):
    """(host args, float64 reference result) of one op on one case."""
    N, H, W, C, K, R, S, stride, padding, relu = case
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K, scale=(R * S * C) ** -0.5), rand(rng, K)
    P, Q = checks.output_size((H, W), (R, S), stride, padding, "kernel")
    dy = rand(rng, N, P, Q, K)
    if op == "conv2d_forward":
        b = b if seed % 2 == 0 else None  # with and without bias
        return (x, w, b, stride, padding, relu), ref.conv2d_forward(*_f64(x, w, b), stride, padding, relu)
    if op == "conv2d_backward_data":
        return (dy, w, x.shape, stride, padding), ref.conv2d_backward_data(*_f64(dy, w), x.shape, stride, padding)
    return (x, dy, w.shape, stride, padding), ref.conv2d_backward_weights(*_f64(x, dy), w.shape, stride, padding)


FN = {"conv2d_forward": cd.conv2d_forward, "conv2d_backward_data": cd.conv2d_backward_data,
      "conv2d_backward_weights": cd.conv2d_backward_weights}


# ---------------------------------------------------------------- CPU: registration and plans

def test_registered_as_direct_never_default():
    from fastcnn.backend import registry
    for op in OPS:
        v = registry.get(op, "direct")
        assert v.fn is FN[op] and v.source == "cuda" and v.note
        assert registry.get(op).name != "direct"


@pytest.mark.parametrize("op", OPS)
def test_numpy_input_refused(op):
    """A host array is a TypeError that says to move it to the GPU (runs without a GPU)."""
    pytest.importorskip("cupy")  # a CPU-only install has no GPU arrays to ask for
    args, _ = _problem(op, CASES[6], 0)
    with pytest.raises(TypeError, match="CuPy array"):
        FN[op](*args)


@pytest.mark.parametrize("sms", [1, 8, 132])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_wgrad_plan(case, sms):
    N, H, W, C, K, R, S, stride, padding, _ = case
    P, Q = checks.output_size((H, W), (R, S), stride, padding, "kernel")
    RSC, NPQ = R * S * C, N * P * Q
    KC, TR, JL, row_tiles, k_tiles, chunks, chunk = cd.wgrad_plan(RSC, K, NPQ, sms)
    assert KC in cd.CHUNKS and k_tiles * KC >= K > (k_tiles - 1) * KC
    assert TR % 32 == 0 and TR <= cd.WGRAD_ROWS and TR * JL <= cd.WGRAD_THREADS
    assert row_tiles * TR >= RSC > (row_tiles - 1) * TR
    assert (chunks - 1) * chunk < NPQ <= chunks * chunk  # every chunk non-empty, all covered
    if NPQ >= 16 * JL * 4 * sms:  # enough positions: about 4 blocks per SM
        assert row_tiles * k_tiles * chunks >= 2 * sms


@pytest.mark.parametrize("chunks", [2, 7, 8, 15, 16, 30, 64, 264, 528, 5000])
def test_reduce_lanes(chunks):
    lanes = cd.reduce_lanes(chunks)
    assert lanes in (1, 2, 4, 8, 16, 32) and (lanes == 1 or chunks >= 4 * lanes)
    assert lanes == 32 or chunks < 16 * lanes


def test_wgrad_plan_lenet_fills_an_h200():
    for RSC, K, NPQ in ((25, 6, 200 * 784), (150, 16, 200 * 100)):
        *_, row_tiles, k_tiles, chunks, _ = cd.wgrad_plan(RSC, K, NPQ, 132)
        assert row_tiles * k_tiles * chunks >= 2 * 132


# ---------------------------------------------------------------- CPU: the CUDA C source, emulated

EMU_CASES = [CASES[i] for i in (3, 6, 7, 8, 9, 10, 11, 14, 15, 16, 17, 19, 20)] + [
    (2, 28, 28, 1, 6, 5, 5, (1, 1), same4(28, 28, 5, 5, 1, 1), True),  # LeNet-5 conv1, batch 2
    (1, 7, 6, 96, 40, 3, 3, (1, 1), (1, 1, 1, 1), True),               # weights staged in 4 parts
]


@pytest.mark.parametrize("sms", [2, 132])
@pytest.mark.parametrize("case", EMU_CASES, ids=case_id)
def test_cuda_source_emulated_on_cpu(monkeypatch, case, sms):
    """The module's own checks and launch plan, NumPy arrays, the real kernels run on the CPU.

    Two SM counts give different channel chunks and wgrad chunk counts (one pass or two);
    with 2 SMs every array is misaligned by 4 bytes (scalar loads instead of float4)."""
    guarded, launches = cuda_emu.Guarded(shift=1 if sms == 2 else 0), []
    cuda_emu.patch_backend(monkeypatch, guarded, sms=sms, log=launches)
    for i, op in enumerate(OPS):
        args, expected = _problem(op, case, i)
        args = tuple(guarded.wrap(a) if isinstance(a, np.ndarray) else a for a in args)
        got = FN[op](*args)
        assert_close(got, expected, TOL, f"{op} {case} (launches {launches})")
    assert all(b[0] % 32 == 0 and b[0] <= 256 and b[1:] == (1, 1) for _, _, b in launches), launches
    assert guarded.intact(), f"a kernel wrote outside its array: {launches}"


# ---------------------------------------------------------------- GPU

@gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_direct_matches_reference(op, case):
    import cupy as cp
    args, expected = _problem(op, case, CASES.index(case))
    dev = tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    out = cp.full(expected.shape, np.nan, dtype=np.float32)
    got = FN[op](*dev, out=out)
    assert got is out, f"{op}: the result is not the out= buffer"
    assert_close(cp.asnumpy(got), expected, TOL, f"{op}/direct {case}")
    again = FN[op](*dev)
    assert np.array_equal(cp.asnumpy(again), cp.asnumpy(got)), f"{op}/direct {case}: differs from run to run"


def _no_launch(name):
    raise AssertionError(f"kernel {name} fetched for a call that should have been refused")


@gpu
def test_bad_inputs_refused_before_launch(monkeypatch):
    import cupy as cp
    monkeypatch.setattr(cd, "_kernel", _no_launch)
    f32 = lambda *s: cp.ones(s, np.float32)  # noqa: E731
    x, w, dy, b = f32(1, 6, 6, 4), f32(3, 3, 4, 2), f32(1, 4, 4, 2), f32(2)
    fwd, bwd_d, bwd_w = cd.conv2d_forward, cd.conv2d_backward_data, cd.conv2d_backward_weights
    with pytest.raises(TypeError, match="float32"):
        fwd(x.astype(np.float64), w, b, (1, 1), V0, True)
    with pytest.raises(TypeError, match="float32"):
        bwd_d(dy, w.astype(np.float64), x.shape, (1, 1), V0)
    with pytest.raises(TypeError, match="float32"):
        bwd_w(x, dy.astype(np.float64), w.shape, (1, 1), V0)
    with pytest.raises(ValueError, match="C-contiguous"):
        fwd(cp.asfortranarray(x), w, b, (1, 1), V0, True)
    with pytest.raises(ValueError, match="C-contiguous"):
        bwd_d(dy[:, :, ::-1], w, x.shape, (1, 1), V0)
    with pytest.raises(ValueError, match="C-contiguous"):
        bwd_w(x, cp.asfortranarray(dy), w.shape, (1, 1), V0)
    with pytest.raises(ValueError, match="channel mismatch"):
        fwd(f32(1, 6, 6, 3), w, b, (1, 1), V0, True)
    with pytest.raises(ValueError, match="channel mismatch"):
        bwd_d(dy, w, (1, 6, 6, 3), (1, 1), V0)
    with pytest.raises(ValueError, match="channel mismatch"):
        bwd_w(f32(1, 6, 6, 3), dy, w.shape, (1, 1), V0)
    with pytest.raises(ValueError, match="bias length"):
        fwd(x, w, f32(3), (1, 1), V0, True)
    with pytest.raises(ValueError, match="dy has shape"):
        bwd_d(f32(1, 5, 4, 2), w, x.shape, (1, 1), V0)
    with pytest.raises(ValueError, match="dy has shape"):
        bwd_w(x, f32(1, 4, 4, 3), w.shape, (1, 1), V0)
    with pytest.raises(ValueError, match="non-positive output size"):
        fwd(x, f32(7, 3, 4, 2), b, (1, 1), V0, True)
    with pytest.raises(ValueError, match="stride"):
        fwd(x, w, b, (0, 1), V0, True)
    with pytest.raises(ValueError, match="padding"):
        bwd_w(x, dy, w.shape, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="shape"):
        fwd(x, w, b, (1, 1), V0, True, out=f32(1, 4, 4, 3))
    with pytest.raises(TypeError, match="float32"):
        bwd_d(dy, w, x.shape, (1, 1), V0, out=cp.ones(x.shape, np.float64))
    with pytest.raises(ValueError, match="shape"):
        bwd_w(x, dy, w.shape, (1, 1), V0, out=f32(3, 3, 2, 4))
