"""One rule, one message: a bad argument gets the same error whichever backend runs.

Each case below calls one primitive with one bad argument on the reference, on the Numba
backend (its simulator without a GPU) and on the CUDA C backend's wrappers (run on the CPU
with NumPy arrays standing in for CuPy ones, ``cuda_emu.patch_backend``: the checks run
before any launch, so no kernel is built), and asserts the same exception type and text from
all three, and that the text is the shared one (``fastcnn/backend/checks.py``).  Last, the
rules themselves: fastcnn.functional and the layers use them too, the CUDA kernels' 32-bit
limit says one message, and CuPy arrays are told by one rule.
"""
import types

import numpy as np
import pytest

import cuda_emu

import fastcnn.functional as F
from fastcnn.backend import checks, registry
from fastcnn.backend import numba as nb
from fastcnn.backend import reference as ref
from fastcnn.backend.cuda import pool as cuda_pool

_CUDA_VARIANT = {"conv2d_forward": "implicit_gemm", "conv2d_backward_data": "implicit_gemm",
                 "conv2d_backward_weights": "implicit_gemm", "maxpool_forward": "direct",
                 "maxpool_backward": "direct"}
PAD0 = (0, 0, 0, 0)


def _x(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _step():
    return np.array([3], np.int32)


BASIS = 0.1 * np.eye(3)

# (id, call(B, dev), shared text): B has the backend's primitives, dev moves a host array there.
CASES = [
    ("conv stride 0", lambda B, d: B.conv2d_forward(d(_x(1, 5, 5, 2)), d(_x(3, 3, 2, 4)), None, (0, 1), PAD0, False),
     "stride[0] must be a positive integer, got 0"),
    ("conv stride float", lambda B, d: B.conv2d_forward(d(_x(1, 5, 5, 2)), d(_x(3, 3, 2, 4)), None, (1.5, 1), PAD0,
                                                        False),
     "stride[0] must be a positive integer, got 1.5"),
    ("conv stride triple", lambda B, d: B.conv2d_forward(d(_x(1, 5, 5, 2)), d(_x(3, 3, 2, 4)), None, (1, 1, 1), PAD0,
                                                         False),
     "stride must be a pair (h, w) of positive integers"),
    ("conv padding negative", lambda B, d: B.conv2d_forward(d(_x(1, 5, 5, 2)), d(_x(3, 3, 2, 4)), None, (1, 1),
                                                            (0, -1, 0, 0), False),
     "padding[1] must be a non-negative integer, got -1"),
    ("conv padding not explicit", lambda B, d: B.conv2d_forward(d(_x(1, 5, 5, 2)), d(_x(3, 3, 2, 4)), None, (1, 1),
                                                                (1, 1), False),
     "padding must be explicit (top, bottom, left, right)"),
    ("conv channels", lambda B, d: B.conv2d_forward(d(_x(1, 5, 5, 3)), d(_x(3, 3, 2, 4)), None, (1, 1), PAD0, False),
     "channel mismatch: x has 3 channels"),
    ("conv kernel too large", lambda B, d: B.conv2d_forward(d(_x(1, 4, 4, 2)), d(_x(5, 5, 2, 4)), None, (1, 1), PAD0,
                                                            False),
     "non-positive output size 0x0: kernel 5x5 does not fit the input 4x4"),
    ("conv bias length", lambda B, d: B.conv2d_forward(d(_x(1, 5, 5, 2)), d(_x(3, 3, 2, 4)), d(_x(3)), (1, 1), PAD0,
                                                       False),
     "bias length 3 does not match the 4 output channels of w"),
    ("conv dgrad x_shape", lambda B, d: B.conv2d_backward_data(d(_x(1, 3, 3, 4)), d(_x(3, 3, 2, 4)), (1, 5, 5),
                                                               (1, 1), PAD0),
     "x_shape must be a 4-tuple"),
    ("conv dgrad dy shape", lambda B, d: B.conv2d_backward_data(d(_x(1, 2, 3, 4)), d(_x(3, 3, 2, 4)), (1, 5, 5, 2),
                                                                (1, 1), PAD0),
     "dy must have shape (1, 3, 3, 4), got (1, 2, 3, 4)"),
    ("conv dgrad channels", lambda B, d: B.conv2d_backward_data(d(_x(1, 3, 3, 4)), d(_x(3, 3, 2, 4)), (1, 5, 5, 3),
                                                                (1, 1), PAD0),
     "channel mismatch: x_shape has 3 channels"),
    ("conv wgrad channels", lambda B, d: B.conv2d_backward_weights(d(_x(1, 5, 5, 2)), d(_x(1, 3, 3, 4)), (3, 3, 1, 4),
                                                                   (1, 1), PAD0),
     "but w_shape expects 1"),
    ("conv wgrad stride", lambda B, d: B.conv2d_backward_weights(d(_x(1, 5, 5, 2)), d(_x(1, 3, 3, 4)), (3, 3, 2, 4),
                                                                 (1, -2), PAD0),
     "stride[1] must be a positive integer, got -2"),
    ("pool zero", lambda B, d: B.maxpool_forward(d(_x(1, 6, 6, 2)), (0, 2), (2, 2), PAD0),
     "pool[0] must be a positive integer, got 0"),
    ("pool too many positions", lambda B, d: B.maxpool_forward(d(_x(1, 20, 20, 2)), (16, 16), (1, 1), PAD0),
     "pool 16x16 has 256 positions; argmax is uint8, so at most 255"),
    ("pool padding", lambda B, d: B.maxpool_forward(d(_x(1, 6, 6, 2)), (2, 2), (2, 2), (0, 2, 0, 0)),
     "must be smaller than the pool 2x2 on every side"),
    ("pool larger than input", lambda B, d: B.maxpool_forward(d(_x(1, 3, 3, 2)), (4, 4), (1, 1), PAD0),
     "non-positive output size 0x0: pool 4x4 does not fit the input 3x3"),
    ("pool stride", lambda B, d: B.maxpool_forward(d(_x(1, 6, 6, 2)), (2, 2), 0, PAD0),
     "stride[0] must be a positive integer, got 0"),
    ("pool backward dy", lambda B, d: B.maxpool_backward(d(_x(1, 2, 3, 2)), d(np.zeros((1, 2, 3, 2), np.uint8)),
                                                         (1, 6, 6, 2), (2, 2), (2, 2), PAD0),
     "dy (1, 2, 3, 2) and argmax (1, 2, 3, 2) must both have shape (1, 3, 3, 2)"),
    ("lrn even size", lambda B, d: B.lrn_forward(d(_x(1, 2, 2, 6)), 4, 1e-4, 0.75, 2.0),
     "LRN size must be a positive odd integer (a window centred on each channel), got 4"),
    ("lrn zero size", lambda B, d: B.lrn_forward(d(_x(1, 2, 2, 6)), 0, 1e-4, 0.75, 2.0),
     "LRN size must be a positive odd integer"),
    ("lrn float size", lambda B, d: B.lrn_forward(d(_x(1, 2, 2, 6)), 5.0, 1e-4, 0.75, 2.0),
     "LRN size must be a positive odd integer (a window centred on each channel), got 5.0"),
    ("lrn alpha", lambda B, d: B.lrn_forward(d(_x(1, 2, 2, 6)), 5, "1e-4", 0.75, 2.0),
     "alpha must be a real number, got str"),
    ("lrn beta", lambda B, d: B.lrn_forward(d(_x(1, 2, 2, 6)), 5, 1e-4, None, 2.0),
     "beta must be a real number, got NoneType"),
    ("lrn k", lambda B, d: B.lrn_forward(d(_x(1, 2, 2, 6)), 5, 1e-4, 0.75, True),
     "k must be a real number, got bool"),
    ("lrn backward size", lambda B, d: B.lrn_backward(*(d(_x(1, 2, 2, 6)) for _ in range(3)),
                                                      d(np.full((1, 2, 2, 6), 2.0, np.float32)), 2, 1e-4, 0.75, 2.0),
     "LRN size must be a positive odd integer"),
    ("dropout rate 1", lambda B, d: B.dropout_forward(d(_x(2, 3)), 1.0, 5, d(_step())),
     "dropout rate must be in [0, 1), got 1.0"),
    ("dropout rate negative", lambda B, d: B.dropout_backward(d(_x(2, 3)), -0.1, 5, d(_step())),
     "dropout rate must be in [0, 1), got -0.1"),
    ("dropout rate string", lambda B, d: B.dropout_forward(d(_x(2, 3)), "0.5", 5, d(_step())),
     "dropout rate must be in [0, 1), got '0.5'"),
    ("dropout seed negative", lambda B, d: B.dropout_forward(d(_x(2, 3)), 0.5, -1, d(_step())),
     "seed must be an integer in [0, 2**64), got -1"),
    ("dropout seed too large", lambda B, d: B.dropout_forward(d(_x(2, 3)), 0.5, 2 ** 64, d(_step())),
     "seed must be an integer in [0, 2**64), got 18446744073709551616"),
    ("dropout seed float", lambda B, d: B.dropout_forward(d(_x(2, 3)), 0.5, 1.0, d(_step())),
     "seed must be an integer in [0, 2**64), got 1.0"),
    ("dropout offset negative", lambda B, d: B.dropout_forward(d(_x(2, 3)), 0.5, 5, d(_step()), -2),
     "offset must be an integer in [0, 2**31), got -2"),
    ("dropout offset too large", lambda B, d: B.dropout_backward(d(_x(2, 3)), 0.5, 5, d(_step()), 2 ** 31),
     "offset must be an integer in [0, 2**31), got 2147483648"),
    ("crop larger than images", lambda B, d: B.crop_forward(d(_x(2, 12, 12, 1)), 13, 8, True, True, 5, d(_step())),
     "crop 13x8 is larger than the 12x12 images"),
    ("crop zero height", lambda B, d: B.crop_forward(d(_x(2, 12, 12, 1)), 0, 8, False, False, 5, d(_step())),
     "crop height must be a positive int, got 0"),
    ("crop seed", lambda B, d: B.crop_forward(d(_x(2, 12, 12, 1)), 8, 8, True, True, -5, d(_step())),
     "seed must be an integer in [0, 2**64), got -5"),
    ("centre crop seed", lambda B, d: B.crop_forward(d(_x(2, 12, 12, 1)), 8, 8, False, False, -5, d(_step())),
     "seed must be an integer in [0, 2**64), got -5"),
    ("crop offset", lambda B, d: B.crop_forward(d(_x(2, 12, 12, 1)), 8, 8, True, True, 5, d(_step()), -1),
     "offset must be an integer in [0, 2**31), got -1"),
    ("crop backward x_shape", lambda B, d: B.crop_backward(d(_x(2, 8, 8, 1)), (2, 12, 12, 3), True, True, 5,
                                                           d(_step())),
     "dy (2, 8, 8, 1) does not match x_shape (2, 12, 12, 3) (batch and channels)"),
    ("crop backward window", lambda B, d: B.crop_backward(d(_x(2, 8, 13, 1)), (2, 12, 12, 1), True, True, 5,
                                                          d(_step())),
     "crop 8x13 is larger than the 12x12 images"),
    ("colour noise not RGB", lambda B, d: B.pca_noise_forward(d(_x(2, 4, 4, 2)), BASIS, 5, d(_step())),
     "colour noise needs RGB images (N, H, W, 3), got shape (2, 4, 4, 2)"),
    ("colour noise basis", lambda B, d: B.pca_noise_forward(d(_x(2, 4, 4, 3)), np.eye(2), 5, d(_step())),
     "basis must be 3x3 (RGB x components), got shape (2, 2)"),
    ("colour noise seed", lambda B, d: B.pca_noise_forward(d(_x(2, 4, 4, 3)), BASIS, 2 ** 64, d(_step())),
     "seed must be an integer in [0, 2**64)"),
    ("colour noise offset", lambda B, d: B.pca_noise_forward(d(_x(2, 4, 4, 3)), BASIS, 5, d(_step()), -3),
     "offset must be an integer in [0, 2**31), got -3"),
    ("leaky slope", lambda B, d: B.leaky_relu_forward(d(_x(2, 3)), -0.5),
     "negative_slope must be a finite number >= 0, got -0.5"),
    ("copy_channels range", lambda B, d: B.copy_channels(d(_x(2, 4)), d(_x(2, 3)), 0, 1, 3),
     "channels [1, 4) of src (3 channels) -> [0, 3) of dst (4) are out of range"),
]


def _error(call, B, dev):
    with pytest.raises((ValueError, TypeError)) as excinfo:
        call(B, dev)
    return type(excinfo.value), str(excinfo.value)


def _cuda_ops():
    """The CUDA backend's primitives, each an explicit variant (no selection, no timing)."""
    ops = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights", "maxpool_forward",
           "maxpool_backward", "lrn_forward", "lrn_backward", "dropout_forward", "dropout_backward",
           "crop_forward", "crop_backward", "pca_noise_forward", "leaky_relu_forward", "copy_channels")
    names = {op: registry.get(op, _CUDA_VARIANT.get(op, "cuda")).fn for op in ops}
    return types.SimpleNamespace(**names)


@pytest.mark.skipif(nb.unavailable_reason() is not None, reason="numba backend unavailable")
@pytest.mark.parametrize("call, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_backend_refuses_with_the_same_message(monkeypatch, call, text):
    got = {"reference": _error(call, ref, np.asarray), "numba": _error(call, nb, nb.asarray)}
    cuda = _cuda_ops()
    guarded = cuda_emu.Guarded()
    cuda_emu.patch_backend(monkeypatch, guarded)
    monkeypatch.setattr(cuda_pool, "_device", lambda: -1)
    monkeypatch.setattr(cuda_pool, "_PLANS", {})
    got["cuda"] = _error(call, cuda, guarded.wrap)
    assert text in got["reference"][1], got["reference"]
    assert got["numba"] == got["reference"], got
    assert got["cuda"] == got["reference"], got


@pytest.mark.skipif(nb.unavailable_reason() is not None, reason="numba backend unavailable")
def test_numba_geometry_cache_is_not_fooled_by_lookalikes():
    """True == 1 and 1.0 == 1: the Numba backend's geometry cache must not hand a refused stride
    the result of a valid call (the reference refuses both)."""
    x, w = nb.asarray(_x(1, 5, 5, 2)), nb.asarray(_x(3, 3, 2, 4))
    nb.conv2d_forward(x, w, None, (1, 1), PAD0, False)
    nb.maxpool_forward(x, (2, 2), (1, 1), PAD0)
    for stride in ((True, 1), (1.0, 1)):
        with pytest.raises(ValueError, match=r"stride\[0\] must be a positive integer"):
            nb.conv2d_forward(x, w, None, stride, PAD0, False)
        with pytest.raises(ValueError, match=r"stride\[0\] must be a positive integer"):
            nb.maxpool_forward(x, (2, 2), stride, PAD0)


def test_the_kernels_32_bit_limit_says_one_message(monkeypatch):
    """check_int32 is the one 32-bit rule: the CUDA max-pool refuses a 2.5e9-element x_shape
    (before any allocation) with its message, and so do the GEMM/convolution plans."""
    with pytest.raises(ValueError) as expected:
        checks.check_int32(x_size=50000 * 50000)
    assert str(expected.value) == "x_size = 2500000000 exceeds the kernels' 32-bit index range"
    checks.check_int32(x_size=2 ** 31 - 1)  # the largest that fits
    guarded = cuda_emu.Guarded()
    cuda_emu.patch_backend(monkeypatch, guarded)
    monkeypatch.setattr(cuda_pool, "_device", lambda: -1)
    monkeypatch.setattr(cuda_pool, "_PLANS", {})
    backward = registry.get("maxpool_backward", "direct").fn
    with pytest.raises(ValueError) as got:
        backward(guarded.wrap(_x(1, 2, 2, 1)), guarded.wrap(np.zeros((1, 2, 2, 1), np.uint8)),
                 (1, 50000, 50000, 1), (2, 2), (2, 2), PAD0)
    assert str(got.value) == str(expected.value)


def test_functional_and_layers_use_the_shared_rules():
    from fastcnn import layers
    with pytest.raises(ValueError, match=r"strides\[0\] must be a positive integer, got 0"):
        F.conv2d(_x(1, 5, 5, 1), _x(3, 3, 1, 2), strides=(0, 1))
    with pytest.raises(ValueError, match="channel mismatch: x has 3 channels"):
        F.conv2d(_x(1, 5, 5, 3), _x(3, 3, 1, 2))
    with pytest.raises(ValueError, match="pool 16x16 has 256 positions"):
        F.max_pool2d(_x(1, 20, 20, 1), 16, 1)
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\), got 1.5"):
        F.dropout(_x(2, 3), 1.5, True)
    with pytest.raises(ValueError, match="LRN size must be a positive odd integer"):
        F.lrn(_x(1, 2, 2, 4), size=4)
    with pytest.raises(ValueError, match=r"kernel_size\[1\] must be a positive integer, got 2.5"):
        layers.Conv2D(4, (3, 2.5))
    with pytest.raises(ValueError, match="non-positive output size 0x0: pool 3x3 does not fit the input 2x2"):
        layers.MaxPool2D(3).compute_output_shape((2, 2, 1))
    assert F.pair(3, "strides") == (3, 3) and F.pair([2, 1], "strides") == (2, 1)
    assert checks.output_size((28, 28), (5, 5), (1, 1), (2, 2, 2, 2), "kernel") == (28, 28)


def test_one_rule_tells_cupy_arrays_apart():
    class FakeCupyArray:
        def get(self):
            return np.arange(3.0)
    FakeCupyArray.__module__ = "cupy._core.core"

    class HasGet(dict):  # a .get() method alone does not make a device array
        pass
    assert checks.is_cupy(FakeCupyArray()) and not checks.is_cupy(np.ones(2)) and not checks.is_cupy(HasGet())
    assert checks.array_module(np.ones(2)) is np
    assert np.array_equal(checks.to_host(FakeCupyArray()), np.arange(3.0))
    for backend in (ref, nb):
        assert np.array_equal(backend.to_host(FakeCupyArray()), np.arange(3.0))
    assert np.array_equal(ref.asarray(FakeCupyArray(), np.float32), np.arange(3.0, dtype=np.float32))
