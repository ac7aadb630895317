"""The rest of a training step (fastcnn/backend/cuda/step.py and its six kernel files) run
on the CPU by tests/cuda_emu.py, through step.py's own entry points, against the reference.

Every op step.py registers is called as a user calls it, with guarded NumPy arrays
standing in for CuPy arrays (``cuda_emu.patch_backend``): step.py's argument checks,
overlap refusals, launch plans and the CUDA C kernels of elementwise.cu,
softmax_xent.cu (warp shuffles, a double atomicAdd), dropout.cu (Philox, the
``__CUDA_ARCH__`` branch), augment.cu, lrn.cu and optimizers.cu run; only the GPU is replaced.
Two layouts: every array 256-byte aligned with step.py's own grids, and every array 4
bytes off 16-byte alignment with ``step.MAX_BLOCKS`` = 2, so that every grid-stride loop
goes round (step.py has no float4 paths; the shift shows that none is assumed).
Outputs are NaN-poisoned ``out=`` buffers that must be the results; a second call
without ``out=`` must give the same bits; guard zones must stay intact.

Exact (bit for bit, NaN and infinities included): relu forward/backward (their zeros
by value: relu_forward keeps -0.0 where numpy.maximum gives +0.0, relu_backward gives
+0.0 where the reference's dy * (y > 0) gives -0.0), leaky relu forward/backward (signed
zeros too, slopes 0.3, 0 and 1.5), add, copy, increment, dropout
(the reference's Philox mask for the same seed and step, incl. seeds >= 2^32, the last
step and a negative one), crop forward/backward (the reference's windows: centre and
random, mirrored or not, 1 and 3 channels, a crop as large as the image), SGD (plain, momentum, Nesterov), Adam and AdamW (m, v and p: the
kernels round like NumPy's float32, and the host's pow is the one Python uses) and RMSprop (plain, momentum,
centered, both).
Within 1e-5 in norm against float64: bias_grad (one pass, and the two-pass chunked
sum), softmax, softmax_cross_entropy (dlogits and the loss total; the correct count is
exact) with int32 labels, one-hot and soft label rows, tied logits (the first maximum
wins), one block, several blocks (threshold patched, and a 263x1000 call past the real
2^18 threshold), out-of-range int32 labels (NaN loss, no count, dlogits = p / N, as
kernels/softmax_xent.cu documents), LRN forward/backward.

bfloat16 (the __nv_bfloat16 instance of every templated kernel): relu, leaky relu, add,
cast, copies and gathers, dropout, crops and the optimizers' p_bf16 copy are the
reference's bfloat16 bit for bit (NaN as NaN: the GPU's conversion gives 0x7FFF, ml_dtypes
keeps the payload); bias_grad within 1e-5 (float32 out); softmax, softmax_cross_entropy,
LRN and the colour noise are, bit for bit, the float instance's result on the widened inputs
rounded once (the contract's rule), and within one bfloat16 rounding plus the float32
tolerance of the reference.

Last, the emulator's warp-level operations and atomics: shuffles (xor, down, up, idx)
of every width on 1-, 2- and 3-D blocks with a partial last warp against CUDA's
documented lane rules, ballot/any/all, __syncwarp, float/double atomicAdd's returned
values, and the errors for a warp op that cannot complete (divergence, mask mismatch,
a source lane that does not take part, a bad width); and every kernels/*.cu but
timing.cu builds under the emulator.

    pytest tests/test_emulated_step.py
"""
import numpy as np
import pytest

import cuda_emu
from helpers import assert_close, rand

from fastcnn import _paths, dtypes
from fastcnn.backend import reference as ref
from fastcnn.backend import registry
from fastcnn.backend.cuda import step

RED = 1e-5
BF16 = dtypes.bfloat16
STEP_FILES = ("elementwise.cu", "softmax_xent.cu", "dropout.cu", "augment.cu", "lrn.cu", "optimizers.cu")
# (id, guard shift, step.MAX_BLOCKS)
LAYOUTS = [("aligned", 0, None), ("misaligned-2blocks", 1, 2)]
TESTED_OPS = {"relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward", "add", "cast", "copy", "copy_channels", "gather_rows", "increment", "bias_grad", "softmax",
              "softmax_cross_entropy", "dropout_forward", "dropout_backward", "crop_forward",
              "crop_backward", "pca_noise_forward", "lrn_forward",
              "lrn_backward", "sgd_update", "adam_update", "rmsprop_update"}


def _setup(monkeypatch, shift=0, cap=None):
    cuda_emu.prebuild(*[(f, ()) for f in STEP_FILES])
    guarded, log = cuda_emu.Guarded(shift=shift), []
    cuda_emu.patch_backend(monkeypatch, guarded, log=log)
    if cap is not None:
        monkeypatch.setattr(step, "MAX_BLOCKS", cap)
    return guarded, log


@pytest.fixture(params=LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def emulated(request, monkeypatch):
    """(guarded arrays, launch log) with fastcnn.backend.cuda running on the emulator."""
    _, shift, cap = request.param
    guarded, log = _setup(monkeypatch, shift, cap)
    yield guarded, log
    assert guarded.intact(), f"a kernel wrote outside its array: {log}"


@pytest.fixture
def aligned(monkeypatch):
    guarded, log = _setup(monkeypatch)
    yield guarded, log
    assert guarded.intact(), f"a kernel wrote outside its array: {log}"


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def _same_bits(a, b, zeros_by_value=False):
    """Bit for bit (NaN payloads too); ``zeros_by_value``: -0.0 == 0.0."""
    a, b = np.array(a), np.array(b)
    if zeros_by_value:
        a[a == 0], b[b == 0] = 0, 0
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def _same_bf16(got, want):
    """Two bfloat16 arrays with the same bits where want is a number and NaN where it is NaN (the
    GPU's conversion gives every NaN as 0x7FFF; ml_dtypes, the reference's, keeps the payload)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype != BF16 or want.dtype != BF16 or got.shape != want.shape:
        return False
    nan_got, nan_want = np.isnan(got.astype(np.float32)), np.isnan(want.astype(np.float32))
    return np.array_equal(nan_got, nan_want) and np.array_equal(got.view(np.uint16)[~nan_got],
                                                                want.view(np.uint16)[~nan_want])


def _with_and_without_out(guarded, fn, *args, shapes, dtype=np.float32):
    """fn(*args, out=NaN buffers) (the buffers must be the result), then fn(*args) with the same bits."""
    outs = tuple(guarded.empty(s, dtype) for s in shapes)
    got = fn(*args, out=outs if len(outs) > 1 else outs[0])
    got = got if isinstance(got, tuple) else (got,)
    assert all(g is o for g, o in zip(got, outs)), "the result is not the out= buffer"
    again = fn(*args)
    again = again if isinstance(again, tuple) else (again,)
    assert all(_same_bits(a, g) for a, g in zip(again, got)), "differs from run to run"
    return got if len(got) > 1 else got[0]


def _launched(log, name):
    """(grid, block) of each launch of kernel ``name`` (a template's instances of every element type)."""
    return [(g, b) for n, g, b in log if n.split("<")[0] == name]


def _bf16(a):
    return a.astype(BF16)


def test_every_registered_op_is_tested():
    ops = {op for op in step._NOTES if registry.get(op, "cuda").fn.__module__ == step.__name__}
    assert ops == TESTED_OPS, f"step.py ops not driven here: {ops - TESTED_OPS}; gone: {TESTED_OPS - ops}"


# ---------------------------------------------------------------- elementwise.cu

SHAPES = [(1,), (7, 13), (3, 5, 7, 9), (2, 27, 27, 3)]


def _special(rng, shape):
    a = rand(rng, *shape)
    flat = a.reshape(-1)
    flat[::11] = np.nan
    flat[3::13] = np.inf
    flat[5::17] = -np.inf
    flat[7::19] = 0.0
    flat[9::23] = -0.0
    return a


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_add(emulated, shape):
    guarded, log = emulated
    rng = np.random.default_rng(sum(shape))
    x, y = guarded.wrap(_special(rng, shape)), guarded.wrap(_special(rng, shape))
    dy = guarded.wrap(_special(rng, shape))  # inf or NaN where y <= 0: NaN, as dy * (y > 0) gives
    got = _with_and_without_out(guarded, step.relu_forward, x, shapes=[shape])
    assert _same_bits(got, ref.relu_forward(x)), "relu_forward"          # -0.0 -> +0.0, NaN stays
    got = _with_and_without_out(guarded, step.relu_backward, dy, y, shapes=[shape])
    with np.errstate(invalid="ignore"):                                  # inf * 0 -> NaN
        assert _same_bits(got, ref.relu_backward(dy, y)), "relu_backward"    # signed zeros too
    got = _with_and_without_out(guarded, step.add, x, y, shapes=[shape])
    assert _same_bits(got, ref.add(x, y)), "add"
    # in place (documented for the elementwise ops)
    expected_sum, expected_relu = ref.add(x, y), ref.relu_forward(ref.add(x, y))
    assert step.add(x, y, out=x) is x and _same_bits(x, expected_sum), "add in place"
    assert step.relu_forward(x, out=x) is x and _same_bits(x, expected_relu, True), "relu_forward in place"
    n = int(np.prod(shape))
    for name in ("relu_forward", "relu_backward", "add_arrays"):
        for g, b in _launched(log, name):
            assert b == (step.THREADS, 1, 1) and g[0] == min(-(-n // step.THREADS), step.MAX_BLOCKS)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("slope", [0.3, 0.0, 1.5])
def test_leaky_relu(emulated, shape, slope):
    guarded, log = emulated
    rng = np.random.default_rng(sum(shape) + 1)
    x, dy = guarded.wrap(_special(rng, shape)), guarded.wrap(_special(rng, shape))
    got = _with_and_without_out(guarded, step.leaky_relu_forward, x, slope, shapes=[shape])
    with np.errstate(invalid="ignore"):                                  # -inf * 0 -> NaN
        assert _same_bits(got, ref.leaky_relu_forward(x, slope)), "leaky_relu_forward"
    got = _with_and_without_out(guarded, step.leaky_relu_backward, dy, x, slope, shapes=[shape])
    with np.errstate(invalid="ignore"):
        assert _same_bits(got, ref.leaky_relu_backward(dy, x, slope)), "leaky_relu_backward"
    with np.errstate(invalid="ignore"):
        expected = ref.leaky_relu_forward(x, slope)
    assert step.leaky_relu_forward(x, slope, out=x) is x and _same_bits(x, expected), "in place"
    n = int(np.prod(shape))
    for name in ("leaky_relu_forward", "leaky_relu_backward"):
        assert _launched(log, name)
        for g, b in _launched(log, name):
            assert b == (step.THREADS, 1, 1) and g[0] == min(-(-n // step.THREADS), step.MAX_BLOCKS)


@pytest.mark.parametrize("slope", [0.3, 1.5])
def test_leaky_relu_bfloat16(emulated, slope):
    """float32 math on the widened values, one rounding: the reference's bfloat16 bit for bit (NaN as NaN)."""
    guarded, log = emulated
    shape = (3, 5, 7, 9)
    rng = np.random.default_rng(7)
    x, dy = guarded.wrap(_bf16(_special(rng, shape))), guarded.wrap(_bf16(_special(rng, shape)))
    with np.errstate(invalid="ignore"):
        got = _with_and_without_out(guarded, step.leaky_relu_forward, x, slope, shapes=[shape], dtype=BF16)
        assert _same_bf16(got, ref.leaky_relu_forward(x, slope)), "leaky_relu_forward"
        got = _with_and_without_out(guarded, step.leaky_relu_backward, dy, x, slope, shapes=[shape], dtype=BF16)
        assert _same_bf16(got, ref.leaky_relu_backward(dy, x, slope)), "leaky_relu_backward"
    assert {n for n, _, _ in log} == {"leaky_relu_forward<__nv_bfloat16>", "leaky_relu_backward<__nv_bfloat16>"}


def test_leaky_relu_refuses_a_bad_slope(aligned):
    guarded, _ = aligned
    x = guarded.wrap(np.ones((2, 3), np.float32))
    for slope, error in ((-0.1, ValueError), (float("nan"), ValueError), ("0.3", TypeError), (True, TypeError)):
        with pytest.raises(error, match="negative_slope"):
            step.leaky_relu_forward(x, slope)
        with pytest.raises(error, match="negative_slope"):
            step.leaky_relu_backward(x, x, slope)
    with pytest.raises(ValueError, match="shape"):
        step.leaky_relu_backward(x, guarded.wrap(np.ones((3, 2), np.float32)), 0.3)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_add_bfloat16(emulated, shape):
    """The float32 op on the widened values, rounded once: bit for bit the reference's bfloat16
    (NaN as NaN)."""
    guarded, log = emulated
    rng = np.random.default_rng(sum(shape) + 1)
    x, y, dy = (guarded.wrap(_bf16(_special(rng, shape))) for _ in range(3))
    got = _with_and_without_out(guarded, step.relu_forward, x, shapes=[shape], dtype=BF16)
    assert _same_bf16(got, ref.relu_forward(x)), "relu_forward"
    got = _with_and_without_out(guarded, step.relu_backward, dy, y, shapes=[shape], dtype=BF16)
    with np.errstate(invalid="ignore"):
        assert _same_bf16(got, ref.relu_backward(dy, y)), "relu_backward"
    got = _with_and_without_out(guarded, step.add, x, y, shapes=[shape], dtype=BF16)
    assert _same_bf16(got, ref.add(x, y)), "add"
    assert {n for n, _, _ in log} == {"relu_forward<__nv_bfloat16>", "relu_backward<__nv_bfloat16>",
                                      "add_arrays<__nv_bfloat16>"}
    with pytest.raises(TypeError, match="b must be bfloat16, got float32"):
        step.add(x, guarded.wrap(_special(rng, shape)))
    with pytest.raises(TypeError, match="out must be bfloat16"):
        step.relu_forward(x, out=guarded.empty(shape))


def _cast_patterns(rng, n):
    """float32 values: specials, exact ties of bfloat16 both ways, random bit patterns."""
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    bits[::3] = (bits[::3] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)   # ties
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-45, np.finfo(np.float32).max,
                        1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8], np.float32)
    return np.concatenate([special, bits.view(np.float32)])


@pytest.mark.parametrize("n", [1, 1000, 4099])
def test_cast(emulated, n):
    """float32 -> bfloat16 is ml_dtypes' rounding to nearest even bit for bit (NaN as NaN);
    bfloat16 -> float32 exact, every bit; a cast to the same dtype copies."""
    guarded, log = emulated
    x = guarded.wrap(_cast_patterns(np.random.default_rng(n), n)[:n])
    with np.errstate(invalid="ignore"):
        want = ref.cast(np.asarray(x), "bfloat16")
    down = _with_and_without_out(guarded, lambda a, **kw: step.cast(a, "bfloat16", **kw), x, shapes=[(n,)],
                                 dtype=BF16)
    assert _same_bf16(down, want)
    up = _with_and_without_out(guarded, lambda a, **kw: step.cast(a, "float32", **kw), down, shapes=[(n,)])
    assert _same_bits(up.view(np.uint32), down.view(np.uint16).astype(np.uint32) << 16)
    same = step.cast(down, "bfloat16")
    assert same is not down and _same_bits(same, down)
    assert {name for name, _, _ in log} == {"cast_elements<float, __nv_bfloat16>", "cast_elements<__nv_bfloat16, float>"}
    with pytest.raises(ValueError, match="dtype must be one of"):
        step.cast(x, "float16")
    with pytest.raises(ValueError, match="overlaps"):
        step.cast(x, "float32", out=x)


@pytest.mark.parametrize("shape", [(5,), (300, 70), (2, 17, 19, 33)], ids=str)
def test_bias_grad_bfloat16(emulated, shape):
    """float32 accumulation of the widened values, a float32 result."""
    guarded, log = emulated
    dy = guarded.wrap(_bf16(rand(np.random.default_rng(shape[-1]), *shape)))
    got = _with_and_without_out(guarded, step.bias_grad, dy, shapes=[(shape[-1],)])
    assert got.dtype == np.float32
    assert_close(got, ref.bias_grad(dy.astype(np.float64)), RED, f"bias_grad {shape}")
    names = [n for n, _, _ in log]
    assert names[0] == "column_sum<__nv_bfloat16>" and set(names[1:]) <= {"column_sum<__nv_bfloat16>", "column_sum<float>"}


def test_moves_of_bfloat16(emulated):
    guarded, _ = emulated
    src = guarded.wrap(_bf16(_special(np.random.default_rng(3), (37, 2, 40))))
    dst = guarded.wrap(np.full((37, 2, 70), -1.0, BF16))
    expected = np.array(dst)
    expected[..., 35:70] = src[..., 5:40]
    step.copy_channels(dst, src, 35, 5, 35)
    assert _same_bits(dst, expected)
    whole = guarded.empty(src.shape, BF16)
    step.copy(whole, src)
    assert _same_bits(whole, src)
    rows = [36, 0, -1, 5, 37]
    picked = guarded.empty((len(rows), 2, 40), BF16)
    step.gather_rows(picked, src, guarded.wrap(np.array(rows, np.int32)))
    want = np.full(picked.shape, 0xFFFF, np.uint16).view(BF16)   # all-ones bits outside the source
    for i, r in enumerate(rows):
        if 0 <= r < 37:
            want[i] = src[r]
    assert _same_bits(picked, want)
    odd = guarded.wrap(_bf16(np.arange(15, dtype=np.float32).reshape(5, 3)))   # rows of 3 bf16: 6 bytes
    picked = guarded.empty((2, 3), BF16)
    step.gather_rows(picked, odd, guarded.wrap(np.array([4, 1], np.int32)))
    assert _same_bits(picked, np.asarray(odd)[[4, 1]])


@pytest.mark.parametrize("rows, src_c, dst_c, src_start, dst_start, width", [
    ((2, 3, 5), 7, 4, 2, 1, 3), ((1,), 96, 48, 48, 0, 48), ((37, 2), 40, 70, 5, 35, 35), ((2000,), 1, 1, 0, 0, 1)])
def test_copy_channels(emulated, rows, src_c, dst_c, src_start, dst_start, width):
    guarded, _ = emulated
    src = guarded.wrap(np.arange(np.prod(rows) * src_c, dtype=np.float32).reshape(rows + (src_c,)))
    dst = guarded.wrap(np.full(rows + (dst_c,), -1.0, np.float32))
    expected = dst.copy()
    expected[..., dst_start:dst_start + width] = src[..., src_start:src_start + width]
    assert step.copy_channels(dst, src, dst_start, src_start, width) is None
    assert _same_bits(dst, expected)
    with pytest.raises(ValueError, match="out of range"):
        step.copy_channels(dst, src, dst_start, src_start, src_c + 1)
    with pytest.raises(ValueError, match="overlaps"):
        step.copy_channels(dst, dst, 0, 0, 1)


@pytest.mark.parametrize("dtype, shape, rows", [
    (np.float32, (10, 28, 28, 1), [9, 0, 3, 3, 7]),      # images: 784 words a row
    (np.int32, (10,), [2, 5, 0]),                         # sparse labels: one word a row
    (np.float32, (6, 10), [5, 4, 3, 2, 1, 0] * 7),        # one-hot, more picks than rows (42: grid-stride)
    (np.float32, (3, 33), [1, -1, 3, 2]),                 # outside the source: all-ones bits, no read past it
])
def test_gather_rows(emulated, dtype, shape, rows):
    guarded, _ = emulated
    src = guarded.wrap((np.arange(np.prod(shape)) * 0.5).astype(dtype).reshape(shape))
    picks = guarded.wrap(np.array(rows, np.int32))
    dst = guarded.wrap(np.zeros((len(rows),) + shape[1:], dtype))
    assert step.gather_rows(dst, src, picks) is None
    want = np.full(dst.shape, -1, np.int32).view(dtype)   # all-ones bits where a row is outside src
    for i, r in enumerate(rows):
        if 0 <= r < shape[0]:
            want[i] = src[r]
    assert _same_bits(dst, want)
    with pytest.raises(ValueError, match="trailing shape"):
        step.gather_rows(guarded.empty((len(rows),) + shape[1:] + (1,), dtype), src, picks)
    if len(rows) <= shape[0]:
        with pytest.raises(ValueError, match="overlaps"):
            step.gather_rows(src[:len(rows)], src, picks)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64])
def test_copy_and_increment(emulated, dtype):
    guarded, _ = emulated
    src = guarded.wrap(np.arange(1001).astype(dtype) * 3 - 7)
    dst = guarded.empty(1001, dtype)
    assert step.copy(dst, src) is None
    assert _same_bits(dst, src)
    assert step.copy(dst, dst) is None  # the same buffer: nothing to do
    buf = guarded.empty(11, dtype, fill=0)
    with pytest.raises(ValueError, match="overlaps"):
        step.copy(buf[1:], buf[:-1])
    counter = guarded.wrap(np.array([41], np.int32))
    step.increment(counter)
    step.increment(counter)
    assert counter.tolist() == [43]


@pytest.mark.parametrize("shape", [(5,), (1, 10), (7, 3), (300, 70), (2, 17, 19, 33)], ids=str)
def test_bias_grad(emulated, shape):
    guarded, log = emulated
    rng = np.random.default_rng(shape[-1])
    dy = guarded.wrap(rand(rng, *shape))
    got = _with_and_without_out(guarded, step.bias_grad, dy, shapes=[(shape[-1],)])
    assert_close(got, ref.bias_grad(*_f64(dy)), RED, f"bias_grad {shape}")
    rows = dy.size // shape[-1]
    passes = _launched(log, "column_sum")
    assert len(passes) == 2 * (2 if rows > step.SUM_CHUNK_ROWS else 1), passes  # two calls above
    if rows > step.SUM_CHUNK_ROWS:  # chunk partials, then their sum
        assert passes[0][0][1] == -(-rows // step.SUM_CHUNK_ROWS) and passes[1][0][1] == 1, passes


def test_overlapping_outputs_refused(emulated):
    guarded, log = emulated
    x = guarded.wrap(rand(np.random.default_rng(0), 4, 10))
    labels = guarded.wrap(np.arange(4, dtype=np.int32))
    totals = guarded.wrap(np.zeros(2))
    with pytest.raises(ValueError, match="overlaps"):
        step.softmax(x, out=x)
    with pytest.raises(ValueError, match="overlaps"):
        step.softmax_cross_entropy(x, labels, totals, out=x)
    with pytest.raises(ValueError, match="overlaps"):
        step.bias_grad(x, out=x[0])
    x4 = x.reshape(1, 1, 4, 10)
    with pytest.raises(ValueError, match="overlaps"):
        step.lrn_forward(x4, 5, 1e-4, 0.75, 2.0, out=(x4, guarded.empty(x4.shape)))
    assert log == [], "a refused call launched a kernel"


# ---------------------------------------------------------------- softmax_xent.cu

@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (7, 33), (37, 65), (20, 100)], ids=str)
def test_softmax(emulated, shape):
    guarded, log = emulated
    rng = np.random.default_rng(shape[0] * shape[1])
    x = rand(rng, *shape, scale=3.0)
    if shape[1] > 1:
        x[0, 0] = -np.inf  # exp(-inf - m) = 0
    x = guarded.wrap(x)
    got = _with_and_without_out(guarded, step.softmax, x, shapes=[shape])
    assert_close(got, ref.softmax(*_f64(x)), RED, f"softmax {shape}")
    (g, b), _ = _launched(log, "softmax_rows")
    assert b == (step.THREADS, 1, 1) and g[0] == min(-(-shape[0] // (step.THREADS // 32)), step.MAX_BLOCKS)


def _labels(rng, logits, mode):
    rows, K = logits.shape
    idx = np.where(rng.random(rows) < 0.5, logits.argmax(axis=1),  # about half right
                   rng.integers(0, K, rows)).astype(np.int32)
    if mode == "int32":
        return idx
    if mode == "onehot":
        return np.eye(K, dtype=np.float32)[idx]
    return rng.random((rows, K)).astype(np.float32) * 2  # soft rows, not normalised


def _xent_check(guarded, log, logits, labels, blocks):
    rows, K = logits.shape
    totals0 = np.array([1.5, 2.0])
    expected_totals = totals0.copy()
    expected = ref.softmax_cross_entropy(logits.astype(np.float64), labels, expected_totals)
    logits, labels = guarded.wrap(logits), guarded.wrap(labels)
    totals = guarded.wrap(totals0)
    out = guarded.empty((rows, K))
    assert step.softmax_cross_entropy(logits, labels, totals, out=out) is out
    what = f"xent {rows}x{K} {labels.dtype} {blocks} blocks"
    assert_close(out, expected, RED, f"dlogits, {what}")
    assert_close(totals[:1], expected_totals[:1], RED, f"loss sum, {what}")
    assert totals[1] == expected_totals[1], f"correct count {totals[1]} != {expected_totals[1]}, {what}"
    again = step.softmax_cross_entropy(logits, labels, totals)
    assert _same_bits(again, out), f"dlogits differ from run to run, {what}"
    assert totals[1] == 2 * expected_totals[1] - totals0[1]
    assert_close(totals[:1], 2 * expected_totals[:1] - totals0[:1], RED, f"loss sum twice, {what}")
    launches = _launched(log, "xent_index" if labels.ndim == 1 else "xent_onehot")
    assert [g[0] for g, _ in launches] == [blocks] * 2 and all(b == (512, 1, 1) for _, b in launches)


@pytest.mark.parametrize("several", [False, True], ids=["one-block", "blocks"])
@pytest.mark.parametrize("mode", ["int32", "onehot", "soft"])
@pytest.mark.parametrize("shape", [(1, 10), (7, 33), (37, 10), (5, 70)], ids=str)
def test_softmax_cross_entropy(emulated, monkeypatch, shape, mode, several):
    guarded, log = emulated
    rows, K = shape
    if several:  # as if N * classes were above 2^18
        monkeypatch.setattr(step, "XENT_ONE_BLOCK", 0)
    rng = np.random.default_rng(rows * K + len(mode))
    logits = rand(rng, rows, K, scale=3.0)
    logits[::2] = rng.integers(-2, 3, (len(logits[::2]), K))  # ties: the first maximum wins
    blocks = min(-(-rows // 16), step.MAX_BLOCKS) if several else 1
    _xent_check(guarded, log, logits, _labels(rng, logits, mode), blocks)


@pytest.mark.parametrize("mode", ["int32", "onehot"])
def test_softmax_cross_entropy_past_the_one_block_threshold(aligned, mode):
    guarded, log = aligned
    rows, K = 263, 1000
    assert rows * K > step.XENT_ONE_BLOCK
    rng = np.random.default_rng(5)
    logits = rand(rng, rows, K, scale=3.0)
    _xent_check(guarded, log, logits, _labels(rng, logits, mode), -(-rows // 16))


@pytest.mark.parametrize("several", [False, True], ids=["one-block", "blocks"])
def test_softmax_cross_entropy_out_of_range_labels(emulated, monkeypatch, several):
    """kernels/softmax_xent.cu: a label outside [0, K) gives a NaN loss, no correct count and
    dlogits = p * float32(1 / N) for its row (the reference refuses such labels)."""
    guarded, log = emulated
    if several:
        monkeypatch.setattr(step, "XENT_ONE_BLOCK", 0)
    rows, K = 21, 12
    rng = np.random.default_rng(3)
    logits = rand(rng, rows, K, scale=3.0)
    labels = np.where(rng.random(rows) < 0.6, logits.argmax(axis=1), rng.integers(0, K, rows)).astype(np.int32)
    bad = np.array([0, 4, 9, 20])
    labels[bad] = [-1, K, 2**31 - 1, -2**31]
    valid = np.ones(rows, bool)
    valid[bad] = False
    p = ref.softmax(logits.astype(np.float64))
    target = np.zeros_like(p)
    target[np.flatnonzero(valid), labels[valid]] = 1.0
    expected = (p - target) * np.float64(np.float32(1.0 / rows))
    count = np.count_nonzero(logits.argmax(axis=1)[valid] == labels[valid])
    logits, labels, totals = guarded.wrap(logits), guarded.wrap(labels), guarded.wrap(np.array([0.0, 3.0]))
    out = step.softmax_cross_entropy(logits, labels, totals)
    assert_close(out, expected, RED, "dlogits with out-of-range labels")
    assert np.isnan(totals[0]), f"loss sum {totals[0]} is not NaN"
    assert totals[1] == 3.0 + count, f"correct count {totals[1] - 3.0} != {count}"


# ---------------------------------------------------------------- dropout.cu

@pytest.mark.parametrize("seed,at", [(0, 0), (2**40 + 12345, 7), (2**64 - 1, 2**31 - 1), (99, -5)],
                         ids=["0-0", "2^40-7", "max-max", "99-neg"])
def test_dropout_bit_exact(emulated, seed, at):
    guarded, log = emulated
    rng = np.random.default_rng(7)
    for shape in [(1,), (7, 13), (3, 5, 7, 9), (4099,)]:
        x = (rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape)).astype(np.float32)  # never 0
        x = guarded.wrap(x)
        step_h = np.array([at], np.int32)
        counter = guarded.wrap(step_h)
        for rate in (0.0, 0.3, 0.5):
            keep = ref.dropout_keep(x.size, rate, seed, step_h).reshape(shape)
            for op in ("dropout_forward", "dropout_backward"):
                fn = getattr(step, op)
                got = _with_and_without_out(guarded, lambda *a, **kw: fn(*a, rate, seed, counter, **kw), x,
                                            shapes=[shape])
                what = f"{op} {shape} rate {rate} seed {seed} step {at}"
                assert np.array_equal(got != 0, keep), f"{what}: {np.count_nonzero((got != 0) != keep)} mask bits"
                assert _same_bits(got, getattr(ref, op)(x, rate, seed, step_h)), what
            if rate and x.size > 100:  # the next step draws another mask
                nxt = step.dropout_forward(x, rate, seed, guarded.wrap(step_h + 1))
                assert not np.array_equal(nxt != 0, keep)
        expected = ref.dropout_forward(x, 0.5, seed, step_h)
        assert step.dropout_forward(x, 0.5, seed, counter, out=x) is x and _same_bits(x, expected), "in place"
    n_groups = -(-4099 // 4)
    grids = {g[0] for g, _ in _launched(log, "dropout_apply")}
    assert min(-(-n_groups // step.THREADS), step.MAX_BLOCKS) in grids


def test_random_ops_with_an_offset(emulated):
    """offset = the global index of the first sample: a slice of a batch draws, bit for bit, what
    the reference draws for those samples of the whole batch (dropout groups straddle samples)."""
    guarded, _ = emulated
    rng = np.random.default_rng(8)
    x_h = rng.uniform(0.5, 1.5, (3, 5, 3, 3)).astype(np.float32)      # 45 elements per sample
    x = guarded.wrap(x_h)
    step_h = np.array([6], np.int32)
    counter = guarded.wrap(step_h)
    basis = 0.1 * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES)[None, :]
    for offset in (1, 2, 7):
        for op in ("dropout_forward", "dropout_backward"):
            got = getattr(step, op)(x, 0.5, 2**40 + 1, counter, offset)
            assert _same_bits(got, getattr(ref, op)(x_h, 0.5, 2**40 + 1, step_h, offset)), (op, offset)
        y = step.crop_forward(x, 3, 2, True, True, 5, counter, offset)
        assert _same_bits(y, ref.crop_forward(x_h, 3, 2, True, True, 5, step_h, offset)), offset
        dx = step.crop_backward(y, x_h.shape, True, True, 5, counter, offset)
        assert _same_bits(dx, ref.crop_backward(np.asarray(y), x_h.shape, True, True, 5, step_h, offset))
        np.testing.assert_allclose(step.pca_noise_forward(x, basis, 5, counter, offset),
                                   ref.pca_noise_forward(x_h, basis, 5, step_h, offset), rtol=2 ** -23, atol=2 ** -24)
    with pytest.raises(ValueError, match="offset must be an integer"):
        step.dropout_forward(x, 0.5, 1, counter, -2)


# ---------------------------------------------------------------- augment.cu

@pytest.mark.parametrize("shape,crop", [((5, 9, 8, 3), (6, 5)), ((3, 4, 300, 1), (2, 257)),
                                        ((2, 5, 5, 2), (5, 5))], ids=["rgb", "wide-1ch", "whole"])
@pytest.mark.parametrize("random,flip", [(False, False), (True, False), (True, True)],
                         ids=["centre", "random", "random-mirrored"])
def test_crop_bit_exact(emulated, shape, crop, random, flip):
    guarded, log = emulated
    rng = np.random.default_rng(3)
    x_h = rng.standard_normal(shape).astype(np.float32)
    x = guarded.wrap(x_h)
    N, _, _, C = shape
    for seed, at in ((0, 0), (2**40 + 9, 11), (2**64 - 1, -3)):
        step_h = np.array([at], np.int32)
        counter = guarded.wrap(step_h)
        args = (random, flip, seed, counter)
        y = _with_and_without_out(guarded, lambda a, **kw: step.crop_forward(a, *crop, *args, **kw), x,
                                  shapes=[(N, *crop, C)])
        expected = ref.crop_forward(x_h, *crop, random, flip, seed, step_h)
        assert _same_bits(y, expected), f"crop_forward {shape} -> {crop} seed {seed} step {at}"
        dx = _with_and_without_out(guarded, lambda a, **kw: step.crop_backward(a, shape, *args, **kw), y,
                                   shapes=[shape])
        assert _same_bits(dx, ref.crop_backward(expected, shape, random, flip, seed, step_h))
    assert {g for g, _ in _launched(log, "crop_forward")} == {(crop[0], N, 1)}
    assert {g for g, _ in _launched(log, "crop_backward")} == {(shape[1], N, 1)}


def test_crop_windows_vary_and_refusals(aligned):
    guarded, _ = aligned
    x = guarded.wrap(np.arange(64 * 12 * 12, dtype=np.float32).reshape(64, 12, 12, 1))
    counter = guarded.wrap(np.array([1], np.int32))
    top, left, mirrored = ref.crop_windows(64, (12, 12), (8, 8), True, True, 5, 1)
    assert len(set(zip(top, left))) > 10 and 10 < mirrored.sum() < 54   # windows differ between images
    y = step.crop_forward(x, 8, 8, True, True, 5, counter)
    assert _same_bits(y, ref.crop_forward(np.asarray(x), 8, 8, True, True, 5, np.array([1], np.int32)))
    with pytest.raises(ValueError, match="crop 13x8 is larger than the 12x12 images"):
        step.crop_forward(x, 13, 8, True, True, 5, counter)
    with pytest.raises(ValueError, match="crop height must be a positive int"):
        step.crop_forward(x, 0, 8, False, False, 5, counter)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        step.crop_forward(guarded.wrap(np.zeros((3, 4), np.float32)), 2, 2, False, False, 0, counter)
    with pytest.raises(ValueError, match="does not match x_shape"):
        step.crop_backward(y, (64, 12, 12, 3), True, True, 5, counter)
    with pytest.raises(ValueError, match="out overlaps x"):
        step.crop_forward(x, 12, 12, False, False, 5, counter, out=x)


@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (2, 1, 300, 3)], ids=str)
def test_pca_noise_matches_the_reference(emulated, shape):
    guarded, log = emulated
    x_h = np.random.default_rng(4).random(shape, dtype=np.float32)
    x = guarded.wrap(x_h)
    basis = 0.1 * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES)[None, :]
    for seed, at in ((0, 0), (2**40 + 9, 11), (2**64 - 1, -3)):
        step_h = np.array([at], np.int32)
        counter = guarded.wrap(step_h)
        y = _with_and_without_out(guarded, lambda a, **kw: step.pca_noise_forward(a, basis, seed, counter, **kw),
                                  x, shapes=[shape])
        expected = ref.pca_noise_forward(x_h, basis, seed, step_h)
        # the double cos/sin/log of the host's libm and NumPy's may differ in a last bit, which
        # float32 rounds away almost always: allow one float32 ulp
        np.testing.assert_allclose(y, expected, rtol=2 ** -23, atol=2 ** -24)
    assert step.pca_noise_forward(x, basis, 5, counter, out=x) is x        # in place
    assert {g for g, _ in _launched(log, "pca_noise_forward")} == {(shape[1], shape[0], 1)}
    with pytest.raises(ValueError, match="needs RGB images"):
        step.pca_noise_forward(guarded.wrap(np.zeros((1, 2, 2, 1), np.float32)), basis, 0, counter)


# ---------------------------------------------------------------- lrn.cu

@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (5, 0.5, 0.75, 1.0),
                                               (3, 0.3, 0.6, 1.5), (1, 0.5, 0.75, 1.0)])
@pytest.mark.parametrize("channels", [1, 3, 7, 96])
def test_lrn(emulated, channels, size, alpha, beta, k):
    guarded, _ = emulated
    rng = np.random.default_rng(channels + size)
    shape = (2, 3, 5, channels)
    x, dy = guarded.wrap(rand(rng, *shape)), guarded.wrap(rand(rng, *shape))
    y, scale = _with_and_without_out(guarded, lambda *a, **kw: step.lrn_forward(*a, size, alpha, beta, k, **kw),
                                     x, shapes=[shape, shape])
    ey, escale = ref.lrn_forward(*_f64(x), size, alpha, beta, k)
    assert_close(scale, escale, RED, "lrn_forward scale")
    assert_close(y, ey, RED, "lrn_forward y")
    y32, s32 = (guarded.wrap(a) for a in ref.lrn_forward(x, size, alpha, beta, k))
    dx = _with_and_without_out(guarded, lambda *a, **kw: step.lrn_backward(*a, size, alpha, beta, k, **kw),
                               dy, x, y32, s32, shapes=[shape])
    assert_close(dx, ref.lrn_backward(*_f64(dy, x, y32, s32), size, alpha, beta, k), RED, "lrn_backward")


# ---------------------------------------------------------------- optimizers.cu

@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)],
                         ids=["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("n", [1, 1000, 1031])
@pytest.mark.parametrize("wd", [0.0, 5e-4])
def test_sgd_update_bit_exact(emulated, n, momentum, nesterov, wd):
    guarded, _ = emulated
    rng = np.random.default_rng(n)
    p, v = rand(rng, n), (rand(rng, n, scale=0.1) if momentum else None)
    dp, dv = guarded.wrap(p), (guarded.wrap(v) if momentum else None)
    for i in range(3):
        g = rand(rng, n)
        g_before = g.copy()
        ref.sgd_update(p, g, v, 0.1, momentum, nesterov, wd)
        dg = guarded.wrap(g)
        assert step.sgd_update(dp, dg, dv, 0.1, momentum, nesterov, wd) is None
        assert _same_bits(dg, g_before) and _same_bits(g, g_before), "the gradient buffer changed"
        assert _same_bits(dp, p), f"p after step {i}"
        if momentum:
            assert _same_bits(dv, v), f"v after step {i}"


@pytest.mark.parametrize("n", [1, 1031])
@pytest.mark.parametrize("wd", [0.0, 0.004], ids=["adam", "adamw"])
def test_adam_update_bit_exact(emulated, n, wd):
    guarded, _ = emulated
    rng = np.random.default_rng(n)
    p, m, v = rand(rng, n), rand(rng, n, scale=0.01), np.abs(rand(rng, n, scale=0.01))
    at = np.array([3], np.int32)
    dp, dm, dv, dat = (guarded.wrap(a) for a in (p, m, v, at))
    for i in range(4):
        g = rand(rng, n)
        ref.adam_update(p, g, m, v, at, 0.01, 0.9, 0.999, 1e-7, wd)
        assert step.adam_update(dp, guarded.wrap(g), dm, dv, dat, 0.01, 0.9, 0.999, 1e-7, wd) is None
        assert dat[0] == at[0], "adam changed step"
        for name, dev, host in (("m", dm, m), ("v", dv, v), ("p", dp, p)):
            assert _same_bits(dev, host), f"{name} after step {i}"
        ref.increment(at)
        step.increment(dat)
        assert dat[0] == at[0]


@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.0, True), (0.9, True)],
                         ids=["plain", "momentum", "centered", "centered-momentum"])
@pytest.mark.parametrize("n", [1, 1031])
def test_rmsprop_update_bit_exact(emulated, n, momentum, centered):
    guarded, _ = emulated
    rng = np.random.default_rng(n)
    p, v = rand(rng, n), np.abs(rand(rng, n, scale=0.1))
    mom = rand(rng, n, scale=0.01) if momentum else None
    avg = rand(rng, n, scale=0.01) if centered else None
    dp, dv = guarded.wrap(p), guarded.wrap(v)
    dmom, davg = (None if a is None else guarded.wrap(a) for a in (mom, avg))
    for i in range(3):
        g = rand(rng, n)
        ref.rmsprop_update(p, g, v, mom, avg, 0.01, 0.9, momentum, 1e-7)
        assert step.rmsprop_update(dp, guarded.wrap(g), dv, dmom, davg, 0.01, 0.9, momentum, 1e-7) is None
        for name, dev, host in (("v", dv, v), ("mom", dmom, mom), ("avg", davg, avg), ("p", dp, p)):
            assert host is None or _same_bits(dev, host), f"{name} after step {i}"
    with pytest.raises(ValueError, match="mom .* exactly when momentum"):
        step.rmsprop_update(dp, dp, dv, None, None, 0.01, 0.9, 0.5, 1e-7)


@pytest.mark.parametrize("update", ["sgd", "sgd_momentum", "adam", "rmsprop"])
def test_optimizers_write_the_bfloat16_copy(emulated, update):
    """p as without p_bf16 (bit for bit the reference), and p_bf16 = p rounded to nearest even."""
    guarded, _ = emulated
    rng = np.random.default_rng(len(update))
    n = 1031
    p, g = rand(rng, n), rand(rng, n)
    state = [np.abs(rand(rng, n, scale=0.1)) for _ in range(2)] + [rand(rng, n, scale=1e-3)]  # no NaN
    host16 = np.zeros(n, BF16)
    dp, dg, dstate, dev16 = guarded.wrap(p), guarded.wrap(g), [guarded.wrap(a) for a in state], guarded.empty(n, BF16)
    at = np.array([2], np.int32)

    def run(b, p, g, state, p_bf16):
        if update == "sgd":
            return b.sgd_update(p, g, None, 0.1, 0.0, False, p_bf16=p_bf16)
        if update == "sgd_momentum":
            return b.sgd_update(p, g, state[0], 0.1, 0.9, True, 5e-4, p_bf16=p_bf16)
        if update == "adam":
            return b.adam_update(p, g, state[0], state[1], at if b is ref else guarded.wrap(at), 0.01, 0.9, 0.999,
                                 1e-7, 0.004, p_bf16=p_bf16)
        return b.rmsprop_update(p, g, state[0], state[1], state[2], 0.01, 0.9, 0.5, 1e-7, p_bf16=p_bf16)

    for i in range(2):
        run(ref, p, g, state, host16)
        assert run(step, dp, dg, dstate, dev16) is None
        assert _same_bits(dp, p) and _same_bits(dev16, host16), f"step {i}"
        assert _same_bits(dev16, p.astype(BF16))
    with pytest.raises(TypeError, match="p_bf16 must be bfloat16"):
        run(step, dp, dg, dstate, guarded.empty(n))
    with pytest.raises(ValueError, match="p_bf16 must have shape"):
        run(step, dp, dg, dstate, guarded.empty(n - 1, BF16))


# ---------------------------------------------------------------- bfloat16 instances of the rest

def _bf16_cases(guarded):
    """{op: (call(arrays, out=None), host arrays (bfloat16 but totals), output dtypes, the
    reference's call on host arrays)} for the templated kernels of softmax_xent.cu, dropout.cu,
    augment.cu and lrn.cu."""
    rng = np.random.default_rng(11)
    basis = 0.1 * np.array(ref.IMAGENET_EIGENVECTORS) * np.array(ref.IMAGENET_EIGENVALUES)[None, :]
    at_host = np.array([5], np.int32)
    at = guarded.wrap(at_host)
    idx = rng.integers(0, 33, 37).astype(np.int32)
    labels, onehot = guarded.wrap(idx), guarded.wrap(np.eye(33, dtype=np.float32)[idx])
    lrn_x = _bf16(rand(rng, 2, 3, 5, 96))
    y32, s32 = ref.lrn_forward(lrn_x.astype(np.float32), 5, 1e-2, 0.75, 2.0)
    return {
        "softmax": (lambda a, out=None: step.softmax(*a, out=out), [_bf16(rand(rng, 37, 65, scale=3.0))],
                    [np.float32], lambda h: ref.softmax(*h)),
        "xent_index": (lambda a, out=None: step.softmax_cross_entropy(a[0], labels, a[1], out=out),
                       [_bf16(rand(rng, 37, 33, scale=3.0)), np.array([1.5, 2.0])], [BF16],
                       lambda h: ref.softmax_cross_entropy(h[0], idx, h[1])),
        "xent_onehot": (lambda a, out=None: step.softmax_cross_entropy(a[0], onehot, a[1], out=out),
                        [_bf16(rand(rng, 37, 33, scale=3.0)), np.array([1.5, 2.0])], [BF16],
                        lambda h: ref.softmax_cross_entropy(h[0], np.asarray(onehot), h[1])),
        "dropout": (lambda a, out=None: step.dropout_forward(*a, 0.4, 2**40 + 3, at, 2, out=out),
                    [_bf16(_special(rng, (5, 7, 9)))], [BF16],
                    lambda h: ref.dropout_forward(*h, 0.4, 2**40 + 3, at_host, 2)),
        "crop_forward": (lambda a, out=None: step.crop_forward(*a, 5, 4, True, True, 9, at, 1, out=out),
                         [_bf16(_special(rng, (6, 8, 7, 3)))], [BF16],
                         lambda h: ref.crop_forward(*h, 5, 4, True, True, 9, at_host, 1)),
        "crop_backward": (lambda a, out=None: step.crop_backward(*a, (6, 8, 7, 3), True, True, 9, at, out=out),
                          [_bf16(_special(rng, (6, 5, 4, 3)))], [BF16],
                          lambda h: ref.crop_backward(*h, (6, 8, 7, 3), True, True, 9, at_host)),
        "pca_noise": (lambda a, out=None: step.pca_noise_forward(*a, basis, 3, at, out=out),
                      [_bf16(rng.random((3, 4, 5, 3), dtype=np.float32))], [BF16],
                      lambda h: ref.pca_noise_forward(*h, basis, 3, at_host)),
        "lrn_forward": (lambda a, out=None: step.lrn_forward(*a, 5, 1e-2, 0.75, 2.0, out=out), [lrn_x], [BF16, BF16],
                        lambda h: ref.lrn_forward(*h, 5, 1e-2, 0.75, 2.0)),
        "lrn_backward": (lambda a, out=None: step.lrn_backward(*a, 5, 1e-2, 0.75, 2.0, out=out),
                         [_bf16(rand(rng, 2, 3, 5, 96)), lrn_x, _bf16(y32), _bf16(s32)], [BF16],
                         lambda h: ref.lrn_backward(*h, 5, 1e-2, 0.75, 2.0)),
    }


BF16_OPS = ["softmax", "xent_index", "xent_onehot", "dropout", "crop_forward", "crop_backward", "pca_noise",
            "lrn_forward", "lrn_backward"]


@pytest.mark.parametrize("op", BF16_OPS)
def test_bfloat16_instance_is_the_float32_instance_rounded_once(emulated, op):
    """Each kernel's __nv_bfloat16 instance gives, bit for bit, its float instance's result on
    the exactly widened inputs rounded once to nearest even (softmax: that float32 result
    itself; xent: the same totals): the contract's rule, whatever the float32 math."""
    guarded, log = emulated
    call, host, out_dtypes, _ = _bf16_cases(guarded)[op]
    arrays16 = [guarded.wrap(a) for a in host]
    arrays32 = [guarded.wrap(a.astype(np.float32) if a.dtype == BF16 else a) for a in host]
    got, want = call(arrays16), call(arrays32)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, w, dtype in zip(got, want, out_dtypes):
        assert g.dtype == dtype
        if dtype == BF16:
            assert _same_bf16(g, np.asarray(w).astype(BF16)), op
        else:
            assert _same_bits(g, w), op
    if op.startswith("xent"):
        assert _same_bits(arrays16[1], arrays32[1]), "totals"
    outs = tuple(guarded.empty(g.shape, g.dtype) for g in got)
    again = call(arrays16, out=outs if len(outs) > 1 else outs[0])
    again = again if isinstance(again, tuple) else (again,)
    assert all(a is o and _same_bits(a, g) for a, o, g in zip(again, outs, got)), "out="
    kernels = {n for n, _, _ in log}
    assert any("<__nv_bfloat16>" in n for n in kernels) and any("<float>" in n for n in kernels), kernels


@pytest.mark.parametrize("op", BF16_OPS)
def test_bfloat16_instance_against_the_reference(aligned, op):
    """Against the reference's bfloat16 (the float32 op on widened inputs, rounded once): bit for
    bit (NaN as NaN) where the float32 math is the same (dropout, crops); elsewhere within one
    bfloat16 rounding (2^-8 relative) plus the float32 tests' tolerance (1e-5 of the norm):
    softmax, xent and LRN use the host's exp/pow and their own summation order, and a
    last-bit float32 difference can move a bfloat16 rounding by one step; the colour noise's
    double cos/sin/log may differ in a last bit too.  The xent totals within 1e-5, the count exact."""
    guarded, _ = aligned
    call, host, _, reference = _bf16_cases(guarded)[op]
    arrays = [guarded.wrap(a) for a in host]
    got = call(arrays)
    with np.errstate(invalid="ignore"):   # inf * 0 in the reference's dropout: NaN, as on the GPU
        want = reference([a.copy() for a in host]) if not op.startswith("xent") else None
    if op.startswith("xent"):
        totals = host[1].copy()
        want = reference([host[0], totals])
        assert_close(arrays[1][:1], totals[:1], RED, "loss sum")
        assert arrays[1][1] == totals[1], "correct count"
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, w in zip(got, want):
        assert g.dtype == w.dtype, op
        if op in ("dropout", "crop_forward", "crop_backward"):
            assert _same_bf16(g, w), op
            continue
        if g.dtype == np.float32:   # softmax of bfloat16 x: float32, the float32 tests' tolerance
            assert_close(g, w, RED, op)
            continue
        g64, w64 = np.asarray(g).astype(np.float64), np.asarray(w).astype(np.float64)
        err = np.abs(g64 - w64)
        assert np.all(err <= 2.0 ** -8 * np.abs(w64) + RED * np.linalg.norm(w64) / np.sqrt(w64.size)), \
            f"{op}: largest error {err.max()}"


# ---------------------------------------------------------------- the emulator: warps, atomics, builds

WARP_TEST = r"""
extern "C" __global__ void shuffles(const int* arg, int* out, int width) {
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int n = blockDim.x * blockDim.y * blockDim.z;
    const int b = arg[t];
    const int v = 1000 * (int)blockIdx.x + t;
    const unsigned full = 0xffffffffu;
    out[0 * n + t] = __shfl_xor_sync(full, v, b, width);
    out[1 * n + t] = __shfl_down_sync(full, v, (unsigned)b, width);
    out[2 * n + t] = __shfl_up_sync(full, v, (unsigned)b, width);
    out[3 * n + t] = __shfl_sync(full, v, b, width);
    out[4 * n + t] = (int)__ballot_sync(full, b & 1);
    out[5 * n + t] = __any_sync(full, b == 7);
    out[6 * n + t] = __all_sync(full, b < 31);
    const double d = __shfl_xor_sync(full, 0.5 * v + 1e12, 1, width);  // 64-bit values
    out[7 * n + t] = (int)((d - 1e12) * 2.0);
}

// A warp-synchronous sum through shared memory, ordered by __syncwarp only.
extern "C" __global__ void warp_sum(const float* x, float* out) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    s[t] = x[t];
    __syncwarp();
    for (int o = 16; o > 0; o >>= 1) {
        float mine = s[t], other = s[(t & ~31) | ((t & 31) ^ o)];
        __syncwarp();
        s[t] = mine + other;
        __syncwarp();
    }
    out[t] = s[t];
}

extern "C" __global__ void atomics(float* f, double* d, int* i, float* of, double* od, int* oi) {
    const int t = threadIdx.x + blockIdx.x * blockDim.x;
    const int n = gridDim.x * blockDim.x;
    of[t] = atomicAdd(f, 1.0f);
    od[t] = atomicAdd(d, 0.5);
    oi[t] = atomicMax(i + 0, t);
    oi[n + t] = atomicCAS(i + 1, t, t + 1);  // threads in order here: each one succeeds
}

// mode 0: lanes 0-15 shuffle, 16-31 wait at __syncthreads       (divergence)
// mode 1: lanes 0-15 mask 0x0000ffff, 16-31 the full mask          (mask mismatch)
// mode 2: every lane with mask 1                                   (caller not in its mask)
// mode 3: lanes 16-31 return, 0-15 read lane ^ 16                  (source returned)
// mode 4: two half-warp groups, lanes 0-15 read lane ^ 16          (source not in the mask)
// mode 5: width 3                                                  (bad width)
// mode 6: two half-warp groups, each within itself                 (valid)
// mode 7: lanes 16-31 return, 0-15 read lane ^ 1 with the full mask (valid: CUDA allows
//         exited lanes in the mask)
extern "C" __global__ void warp_errors(int* out, int mode) {
    const int lane = threadIdx.x & 31;
    int v = threadIdx.x;
    const unsigned lo = 0x0000ffffu, hi = 0xffff0000u;
    if (mode == 0) {
        if (lane < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
        __syncthreads();
    } else if (mode == 1) {
        v = __shfl_xor_sync(lane < 16 ? lo : 0xffffffffu, v, 1);
    } else if (mode == 2) {
        v = __shfl_sync(1u, v, 0);
    } else if (mode == 3 || mode == 7) {
        if (lane >= 16) return;
        v = __shfl_xor_sync(0xffffffffu, v, mode == 3 ? 16 : 1);
    } else if (mode == 4) {
        v = __shfl_xor_sync(lane < 16 ? lo : hi, v, lane < 16 ? 16 : 1);
    } else if (mode == 5) {
        v = __shfl_xor_sync(0xffffffffu, v, 1, 3);
    } else {
        v = __shfl_xor_sync(lane < 16 ? lo : hi, v, lane < 16 ? 2 : 4);
    }
    out[threadIdx.x] = v;
}
"""


def _shuffle_model(n_threads, b, width, block_base=0):
    """CUDA's documented shuffle rules (programming guide), lane by lane: each warp is 32
    consecutive threads; a source outside the lane's width-segment gives its own value."""
    v = block_base + np.arange(n_threads)
    out = np.zeros((8, n_threads), np.int64)
    for t in range(n_threads):
        warp0, lane = t - t % 32, t % 32
        seg0 = lane - lane % width
        xor_src = lane ^ b[t] if (lane ^ b[t]) < seg0 + width else lane
        down_src = lane + b[t] if lane + b[t] < seg0 + width else lane
        up_src = lane - b[t] if lane - b[t] >= seg0 else lane
        idx_src = seg0 + b[t] % width
        out[0, t], out[1, t], out[2, t], out[3, t] = (v[warp0 + s] for s in (xor_src, down_src, up_src, idx_src))
        lanes = range(warp0, min(warp0 + 32, n_threads))
        out[4, t] = sum(1 << (j - warp0) for j in lanes if b[j] & 1)
        out[5, t] = any(b[j] == 7 for j in lanes)
        out[6, t] = all(b[j] < 31 for j in lanes)
        pair = lane ^ 1 if (lane ^ 1) < seg0 + width else lane
        out[7, t] = v[warp0 + pair]
    return out


@pytest.mark.parametrize("block,width", [((8, 4, 2), 32), ((16, 3, 1), 16), ((32, 1, 1), 8),
                                         ((40, 1, 1), 4), ((96, 1, 1), 2), ((33, 1, 1), 1)], ids=str)
def test_warp_ops_follow_cuda_lane_rules(block, width):
    emu = cuda_emu.load_source("warp_test.cu", WARP_TEST)
    n = int(np.prod(block))
    assert n % 32 % width == 0, "a partial last warp must hold whole segments (no source beyond the block)"
    rng = np.random.default_rng(n + width)
    b = rng.integers(0, 32, n).astype(np.int32)
    out = np.zeros(8 * n, np.int32)
    emu.function("shuffles")((2,), block, (b, out, np.int32(width)))
    got = out.reshape(8, n).astype(np.int64)
    got[4] &= 0xFFFFFFFF  # the ballot, unsigned
    expected = _shuffle_model(n, b, width, block_base=1000)  # the last block's values
    assert np.array_equal(got, expected), [k for k in range(8) if not np.array_equal(got[k], expected[k])]


def test_syncwarp_and_atomics():
    emu = cuda_emu.load_source("warp_test.cu", WARP_TEST)
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    emu.function("warp_sum")((1,), (64,), (x, out))
    assert out.tolist() == [x[:32].sum()] * 32 + [x[32:].sum()] * 32
    f, d, i = np.zeros(1, np.float32), np.zeros(1), np.array([-1, 0], np.int32)
    of, od, oi = np.zeros(128, np.float32), np.zeros(128), np.zeros(256, np.int32)
    emu.function("atomics")((2,), (64,), (f, d, i, of, od, oi))
    assert f[0] == 128 and d[0] == 64.0  # the returned old values: each one once
    assert sorted(of.tolist()) == list(range(128)) and sorted((2 * od).tolist()) == list(range(128))
    assert i.tolist() == [127, 128] and sorted(oi[:128]) == list(range(-1, 127))
    assert oi[128:].tolist() == list(range(128))


@pytest.mark.parametrize("mode,match", [(0, "divergence"), (1, "same mask"), (2, "does not name the lane"),
                                        (3, "has returned"), (4, "not in the mask"), (5, "width 3")])
def test_incomplete_warp_ops_are_errors(mode, match):
    emu = cuda_emu.load_source("warp_test.cu", WARP_TEST)
    k = emu.function("warp_errors")
    out = np.full(64, -1, np.int32)
    with pytest.raises(AssertionError, match=match):
        k((1,), (64,), (out, np.int32(mode)))
    k((1,), (64,), (out, np.int32(6)))  # threads left parked by the failure start afresh
    lane = np.arange(64) % 32
    assert out.tolist() == (np.arange(64) ^ np.where(lane < 16, 2, 4)).tolist()
    k((1,), (64,), (out, np.int32(7)))
    assert (out[lane < 16] == (np.arange(64) ^ 1)[lane < 16]).all()
    with pytest.raises(AssertionError, match="beyond the block"):  # lane 16 of a 16-thread block
        k((1,), (16,), (out, np.int32(3)))


def test_every_kernel_file_builds():
    """Every kernels/*.cu except timing.cu (inline PTX) compiles under the emulator, with the
    template instances its backend module asks CuPy for."""
    from fastcnn.backend.cuda import conv, conv_direct, gemm, gemm_tc, pool
    names = {"gemm.cu": gemm.NAME_EXPRESSIONS, "conv.cu": conv.NAME_EXPRESSIONS,
             "conv_direct.cu": conv_direct.NAME_EXPRESSIONS, "pool.cu": pool.NAME_EXPRESSIONS,
             "gemm_tc.cu": gemm_tc.NAME_EXPRESSIONS, **step.NAME_EXPRESSIONS}
    files = sorted(p.name for p in _paths.KERNEL_DIR.glob("*.cu") if p.name != "timing.cu")
    assert set(STEP_FILES) <= set(files)
    cuda_emu.prebuild(*[(f, names.get(f, ())) for f in files])
    for f in files:
        emu = cuda_emu.load(f, names.get(f, ()))
        assert set(names.get(f, ())) <= set(emu.names) and emu.names, f
