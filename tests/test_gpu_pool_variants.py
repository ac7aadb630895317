"""Every max-pool variant (direct, vec4, tiled, smem, vec8 and vec8x2 (forward only), auto) against fastcnn.backend.reference.

Forward and backward are compared exactly: pooling only selects (forward) or sums the
picked dy in the reference's (r, s) order (backward), so y, argmax and dx must match
bit for bit (zeros compared by value: 0.0 == -0.0).  Outputs are NaN-poisoned first
(argmax with 255), the result must be the ``out=`` buffer, and a second run without
``out=`` must give the same bits.  The table covers C = 1, 3, 4, 6, 8, 16, 96, 256
(vec4's C % 4 fallback, tiled's 2-channel path), odd sizes, batch 1, the windows with
compiled-in tiles (2x2/2, 3x3/2, 3x3/1, 2x2/1) and others (generic kernels), explicit
paddings, symmetric and not.  Further: NaN / +-inf / +-0 / tie inputs, and views whose
addresses are only 4- or 8-byte aligned (the 16-byte kernels must not be used).

The same source also runs without a GPU: ``test_kernels_emulated_on_cpu`` runs
kernels/pool.cu on the CPU (tests/cuda_emu.py: g++, each block's threads as fibers on
one host thread, switched round-robin at every ``__syncthreads``, a barrier that every
thread of the block reaches before any goes on, with ``__shared__`` storage per kernel)
through pool.py's own planning code, on the whole table, every array in guard zones; so
the shared-memory kernel (smem) is checked too, and a missing barrier shows up as wrong
results.

    pytest tests/test_gpu_pool_variants.py
"""
import re
import types

import numpy as np
import pytest

import cuda_emu
from fastcnn import _paths, dtypes
from fastcnn.backend import reference as ref
from fastcnn.backend import registry
from fastcnn.backend.cuda import pool as cuda_pool  # registers the variants; no GPU needed

gpu = pytest.mark.gpu
V0 = (0, 0, 0, 0)
WINDOWS = [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 3), (1, 1)), ((2, 2), (1, 1))]
PADS = [V0, (1, 1, 1, 1), (1, 0, 0, 1), (0, 1, 1, 0)]
SIZES = [(1, 9, 11), (2, 7, 5), (1, 12, 13), (2, 5, 9)]

# (N, H, W, C, pool, stride, padding)
CASES = []
for i, C in enumerate((1, 3, 4, 6, 8, 16, 96, 256)):
    for j, (window, stride) in enumerate(WINDOWS):
        N, H, W = SIZES[(i + j) % len(SIZES)]
        pad = PADS[(i + 3 * j) % len(PADS)]
        if window == (3, 3):
            pad = (pad[0] * 2, pad[1], pad[2], pad[3] * 2)  # paddings up to 2 on a 3x3 window
        CASES.append((N, H, W, C, window, stride, pad))
CASES += [
    (1, 1, 1, 4, (2, 2), (2, 2), (1, 0, 0, 1)),          # one input pixel, mostly padding
    (1, 2, 2, 3, (3, 3), (1, 1), (2, 2, 2, 2)),
    (1, 3, 3, 16, (3, 3), (2, 2), (2, 2, 2, 2)),
    (1, 10, 12, 2, (2, 2), (1, 1), V0), (1, 17, 5, 3, (3, 3), (1, 1), (0, 0, 2, 1)),
    (2, 7, 9, 4, (2, 3), (1, 2), (1, 0, 0, 2)),          # generic windows (no tile instance)
    (1, 6, 5, 5, (4, 4), (3, 4), (3, 2, 1, 3)), (3, 10, 10, 12, (1, 1), (1, 1), V0),
    (1, 14, 15, 6, (3, 2), (2, 2), (1, 0, 1, 1)), (1, 9, 9, 2, (2, 2), (3, 3), V0),
    (1, 11, 10, 8, (3, 3), (3, 3), (1, 2, 0, 1)),
    (200, 28, 28, 6, (2, 2), (2, 2), V0), (200, 10, 10, 16, (2, 2), (2, 2), V0),  # LeNet
    (2, 55, 55, 96, (3, 3), (2, 2), V0), (2, 27, 27, 256, (3, 3), (2, 2), V0),     # AlexNet
    (2, 13, 13, 256, (3, 3), (2, 2), V0),
]
OPS = ("maxpool_forward", "maxpool_backward")
PARAMS = [pytest.param(op, v, i, id=f"{op}-{v}-{CASES[i]}".replace(" ", ""))
          for i in range(len(CASES)) for op in OPS for v in registry.variants(op, "cuda")]
SPECIAL = [i for i, c in enumerate(CASES) if c[0] * c[1] * c[2] * c[3] <= 20000]


BF16 = dtypes.bfloat16


def _inputs(case, seed, mode="rand", dtype=np.float32):
    """x, dy (float32 or bfloat16) and the reference's y, argmax, dx for one case."""
    rng = np.random.default_rng(seed)
    N, H, W, C, pool, stride, padding = case
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    x.reshape(-1)[1:x.size:7] = x.reshape(-1)[0:x.size - 1:7]  # ties: the first maximum must win
    if mode == "special":   # NaN (y NaN, argmax ph*pw-1), +-inf, +-0
        m = rng.random(x.shape)
        x[m < 0.05] = np.nan
        x[(m >= 0.05) & (m < 0.15)] = -np.inf
        x[(m >= 0.15) & (m < 0.2)] = np.inf
        x[(m >= 0.2) & (m < 0.3)] = 0.0
        x[(m >= 0.3) & (m < 0.35)] = -0.0
    elif mode == "ties":    # few distinct values: many ties, many windows picking one pixel
        x = rng.integers(-2, 2, x.shape).astype(np.float32)
    x = x.astype(dtype)
    y, am = ref.maxpool_forward(x, pool, stride, padding)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    if mode == "ties":      # sums of 0.1-multiples: rounding shows any change of order
        dy = rng.integers(-3, 4, y.shape).astype(np.float32) * np.float32(0.1)
    dy = dy.astype(dtype)
    dx = ref.maxpool_backward(dy, am, x.shape, pool, stride, padding)
    return x, dy, y, am, dx


def same_bits(got, want) -> bool:
    """Equal bit patterns, NaN matching NaN and 0.0 matching -0.0."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if got.dtype == BF16:   # widened exactly: the same values (the GPU's NaN bits are 0x7FFF)
        got, want = got.astype(np.float32), want.astype(np.float32)
    if got.dtype.kind != "f":
        return bool(np.array_equal(got, want))
    nan = np.isnan(got)
    if not np.array_equal(nan, np.isnan(want)):
        return False
    g = np.where(nan | (got == 0), 0, got).astype(np.float32)
    w = np.where(nan | (want == 0), 0, want).astype(np.float32)
    return bool(np.array_equal(g.view(np.uint32), w.view(np.uint32)))


def _describe(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    bad = ~((got == want) | (np.isnan(got.astype(np.float64)) & np.isnan(want.astype(np.float64))))
    idx = np.argwhere(bad)[:3]
    return f"{int(bad.sum())} of {got.size} differ, first at {idx.tolist()}: got {got[bad][:3]}, want {want[bad][:3]}"


def check_variant(xp, op, variant, case, seed, mode="rand", offset=0, fns=None, dtype=np.float32):
    """Run one op of one variant on one case with xp arrays (CuPy, or NumPy for the CPU
    emulation) and compare with the reference.  ``offset`` > 0 makes every array a view
    starting ``offset`` elements into a larger buffer (misaligned for vector accesses)."""
    x, dy, y, am, dx = _inputs(case, seed, mode, dtype)
    fn = fns[op] if fns else registry.get(op, variant).fn

    def place(host):
        buf = xp.empty(host.size + offset, dtype=host.dtype)
        a = buf[offset:].reshape(host.shape)
        a[...] = xp.asarray(host)
        return a

    def poisoned(shape, dtype):
        a = place(np.full(shape, 255 if dtype == np.uint8 else np.nan, dtype=dtype))
        return a
    host = (lambda a: a) if xp is np else xp.asnumpy
    N, H, W, C, pool, stride, padding = case
    if op == "maxpool_forward":
        args, expected = (place(x), pool, stride, padding), (y, am)
        outs = (poisoned(y.shape, dtype), poisoned(am.shape, np.uint8))
    else:
        args, expected = (place(dy), place(am), x.shape, pool, stride, padding), (dx,)
        outs = (poisoned(x.shape, dtype),)
    got = fn(*args, out=outs if len(outs) > 1 else outs[0])
    got = got if isinstance(got, tuple) else (got,)
    for name, g, o, e in zip(("y", "argmax") if len(outs) > 1 else ("dx",), got, outs, expected):
        assert g is o, f"{op}/{variant}: the result is not the out= buffer"
        h = host(g)
        assert same_bits(h, e), f"{op}/{variant} {case} {mode} offset {offset}: {name}: {_describe(h, e)}"
    again = fn(*args)
    again = again if isinstance(again, tuple) else (again,)
    for a, g in zip(again, got):
        assert same_bits(host(a), host(g)), f"{op}/{variant} {case}: differs from run to run"


def _cp():
    import cupy
    return cupy


def _ops(variant):
    """The ops (forward, backward) that ``variant`` has: smem is forward only."""
    return [op for op in OPS if variant in registry.variants(op, "cuda")]


@gpu
@pytest.mark.parametrize("op,variant,index", PARAMS)
def test_variant_matches_reference(op, variant, index):
    check_variant(_cp(), op, variant, CASES[index], seed=index)


@gpu
@pytest.mark.parametrize("mode", ["special", "ties"])
@pytest.mark.parametrize("variant", registry.variants("maxpool_forward", "cuda"))
def test_special_values_and_ties(variant, mode):
    for i in SPECIAL:
        for op in _ops(variant):
            check_variant(_cp(), op, variant, CASES[i], seed=1000 + i, mode=mode)


@gpu
@pytest.mark.parametrize("variant", registry.variants("maxpool_forward", "cuda", dtype="bfloat16"))
def test_bfloat16_variants(variant):
    """bfloat16: the maximum (exact) and the float32 sum of the picked dy rounded once, as the
    reference gives them; aligned and 2-byte-misaligned views."""
    for i in SPECIAL[::2]:
        for op in _ops(variant):
            for mode, offset in (("rand", 0), ("special", 0), ("ties", 1)):
                check_variant(_cp(), op, variant, CASES[i], seed=3000 + i, mode=mode, offset=offset, dtype=BF16)


@gpu
@pytest.mark.parametrize("offset", [1, 2])
@pytest.mark.parametrize("variant", registry.variants("maxpool_forward", "cuda"))
def test_misaligned_views(variant, offset):
    """Arrays starting 4 or 8 bytes past a 16-byte boundary: a narrower kernel, same result."""
    for i in SPECIAL[::3]:
        for op in _ops(variant):
            check_variant(_cp(), op, variant, CASES[i], seed=2000 + i, offset=offset)


# ---------------------------------------------------------------- CPU only (no GPU needed)

def test_instantiations_match_the_plan():
    """kernels/pool.cu's FASTCNN_INSTANTIATE block (what the compile test checks) lists
    exactly the generic lanes and tile shapes that pool.py launches."""
    text = (_paths.KERNEL_DIR / "pool.cu").read_text()
    block = text[text.index("#ifdef FASTCNN_INSTANTIATE"):]
    typed = set(re.findall(r"^POOL_TYPED\((\w+)\)", block, re.MULTILINE))
    assert typed == set(cuda_pool.CTYPES.values())
    generic = {int(v) for v in re.findall(r"^    POOL_GENERIC\(T, (\d+)\)", block, re.MULTILINE)}
    tiles = {tuple(int(v) for v in m.split(","))
             for m in re.findall(r"^    POOL_TILES\(T, ([\d, ]+)\)", block, re.MULTILINE)}
    vec8 = {tuple(int(v) for v in m.split(","))
            for m in re.findall(r"^    POOL_VEC8\(T, ([\d, ]+)\)", block, re.MULTILINE)}
    assert vec8 == set(cuda_pool.VEC8)
    body = text[text.index("#define POOL_VEC8"):text.index("#define POOL_SMEM")]
    assert {tuple(int(v) for v in m) for m in re.findall(r"SW, (\d), (\d)>", body)} == set(cuda_pool.VEC8_OUTPUTS.values())
    smem = {tuple(int(v) for v in m.split(","))
            for m in re.findall(r"^POOL_SMEM\(([\d, ]+)\)", block, re.MULTILINE)}
    assert generic == set(cuda_pool.GENERIC_LANES)
    assert tiles == {k + v for k, v in cuda_pool.TILES.items()}
    assert smem == {k + v for k, v in cuda_pool.SMEM.items()}
    for name in cuda_pool.NAME_EXPRESSIONS:
        assert re.fullmatch(r"maxpool_(fwd|bwd)(_tile|_smem)?<((float|__nv_bfloat16), )?[\d, ]+>", name), name


def test_plan_picks_kernels(monkeypatch):
    """Which kernel each variant launches for a shape (C % 4, C % 2, tile instance or not)."""
    monkeypatch.setattr(cuda_pool, "_kernel", lambda name: name)
    monkeypatch.setattr(cuda_pool, "grid_blocks", lambda n, threads=256: n)

    def names(variant, forward, C, pool=(3, 3), stride=(2, 2), padding=V0):
        return {lanes: k for lanes, (k, _, _) in
                cuda_pool._plan(variant, forward, (2, 9, 9, C), pool, stride, padding)[2].items()}
    assert names("direct", True, 96) == {1: "maxpool_fwd<float, 1>"}
    assert names("vec4", False, 96) == {4: "maxpool_bwd<float, 4>", 1: "maxpool_bwd<float, 1>"}
    assert names("vec4", True, 6) == {1: "maxpool_fwd<float, 1>"}
    assert names("tiled", True, 6) == {2: "maxpool_fwd_tile<float, 2, 3, 3, 2, 2, 2, 2>",
                                       1: "maxpool_fwd_tile<float, 1, 3, 3, 2, 2, 2, 2>"}
    assert names("tiled", False, 8, (2, 2), (2, 2)) == {4: "maxpool_bwd_tile<float, 4, 2, 2, 2, 2, 1, 2>",
                                                        2: "maxpool_bwd_tile<float, 2, 2, 2, 2, 2, 1, 2>",
                                                        1: "maxpool_bwd_tile<float, 1, 2, 2, 2, 2, 1, 2>"}
    assert names("tiled", True, 3, (2, 3), (1, 2)) == {1: "maxpool_fwd<float, 1>"}
    assert names("tiled", False, 12, (4, 4), (3, 3)) == {4: "maxpool_bwd<float, 4>", 2: "maxpool_bwd<float, 2>",
                                                         1: "maxpool_bwd<float, 1>"}
    assert names("smem", True, 96) == {4: "maxpool_fwd_smem<3, 3, 2, 2, 4, 8>",
                                       2: "maxpool_fwd_tile<float, 2, 3, 3, 2, 2, 2, 2>",
                                       1: "maxpool_fwd_tile<float, 1, 3, 3, 2, 2, 2, 2>"}
    assert names("smem", True, 12, (4, 4), (3, 3)) == {4: "maxpool_fwd<float, 4>", 2: "maxpool_fwd<float, 2>",
                                                       1: "maxpool_fwd<float, 1>"}
    # 128x55x55x96 3x3/2: 7 x 4 tiles of 4x8 outputs x 3 slabs of 32 channels, 256 threads
    (_, blocks, threads), = [v for k, v in cuda_pool._plan("smem", True, (128, 55, 55, 96), 3, 2, V0)[2].items()
                             if k == 4]
    assert (blocks, threads) == (128 * 7 * 4 * 3 * 256, 256)  # grid_blocks patched: blocks = items
    assert names("vec8", True, 96) == {8: "maxpool_fwd_tile<float, 8, 3, 3, 2, 2, 1, 1>", 4: "maxpool_fwd<float, 4>",
                                       1: "maxpool_fwd<float, 1>"}
    assert names("vec8", True, 12) == {4: "maxpool_fwd<float, 4>", 1: "maxpool_fwd<float, 1>"}
    assert names("vec8", True, 16, (2, 3), (1, 2)) == {4: "maxpool_fwd<float, 4>", 1: "maxpool_fwd<float, 1>"}
    assert names("vec8x2", True, 96) == {8: "maxpool_fwd_tile<float, 8, 3, 3, 2, 2, 1, 2>", 4: "maxpool_fwd<float, 4>",
                                         1: "maxpool_fwd<float, 1>"}
    for variant in ("direct", "vec4", "tiled", "smem", "vec8", "vec8x2"):
        for forward in (True, False):
            for C in (1, 2, 3, 4, 6, 96):
                for lanes, (name, items, threads) in cuda_pool._plan(variant, forward, (2, 9, 9, C), 3, 2,
                                                                     V0)[2].items():
                    assert name in cuda_pool.NAME_EXPRESSIONS and C % lanes == 0 and items > 0
                    assert threads == 256


def test_kernels_emulated_on_cpu(monkeypatch):
    """pool.py's planning + kernels/pool.cu's kernels (run on the CPU by tests/cuda_emu.py) on
    NumPy arrays in guard zones, exact.

    Grids are capped at 5 blocks so that the grid-stride loops run many times."""
    guarded, launched = cuda_emu.Guarded(), []
    cuda_emu.patch_backend(monkeypatch, guarded, grid_cap=5, log=launched)
    monkeypatch.setattr(cuda_pool, "_device", lambda: -1)
    monkeypatch.setattr(cuda_pool, "_ptr", lambda a: a.ctypes.data)
    monkeypatch.setattr(cuda_pool, "_PLANS", {})
    xp = types.SimpleNamespace(empty=guarded.empty, asarray=np.asarray, asnumpy=np.asarray)  # NumPy, guarded
    for variant in ("direct", "vec4", "tiled", "smem", "vec8", "vec8x2"):
        fns = {"maxpool_forward": cuda_pool._forward(variant), "maxpool_backward": cuda_pool._backward(variant)}
        for i, case in enumerate(CASES):
            big = case[0] * case[1] * case[2] * case[3] > 100000
            runs = [("rand", 0), ("special", 0), ("ties", 0), ("special", 1), ("ties", 2)]
            if big:  # smem (new, shared memory): NaN and tie inputs on the big shapes too
                runs = runs[:3] if variant in ("smem", "vec8", "vec8x2") else runs[:1]
            for mode, offset in runs:
                for op in _ops(variant):
                    check_variant(xp, op, variant, case, seed=i, mode=mode, offset=offset, fns=fns)
                    assert guarded.intact(), f"{op}/{variant} {case} {mode}: a kernel wrote outside its array"
                    guarded.reset()
    launched = {name for name, _, _ in launched}
    assert {n for n in launched if "tile" in n} >= {
        "maxpool_fwd_tile<float, 4, 3, 3, 2, 2, 2, 2>", "maxpool_bwd_tile<float, 2, 2, 2, 2, 2, 1, 2>",
        "maxpool_fwd_tile<float, 1, 3, 3, 1, 1, 1, 2>", "maxpool_bwd_tile<float, 4, 2, 2, 1, 1, 1, 2>"}
    assert {n for n in launched if n.startswith("maxpool_fwd_tile<float, 8,")} == {
        cuda_pool._fwd_tile_name("float", 8, *k, *outputs) for k in cuda_pool.VEC8 for outputs in cuda_pool.VEC8_OUTPUTS.values()}
    assert {n for n in launched if "smem" in n} == {cuda_pool._fwd_smem_name(*k, *v) for k, v in cuda_pool.SMEM.items()}


def test_bfloat16_plans_and_refusals(monkeypatch):
    """bfloat16 calls plan the __nv_bfloat16 instances with the same lanes; smem takes float32 only."""
    monkeypatch.setattr(cuda_pool, "_kernel", lambda name: name)
    monkeypatch.setattr(cuda_pool, "grid_blocks", lambda n, threads=256: n)
    plan = cuda_pool._plan("vec8", True, (2, 9, 9, 96), 3, 2, V0, "bfloat16")[2]
    assert {k: v[0] for k, v in plan.items()} == {8: "maxpool_fwd_tile<__nv_bfloat16, 8, 3, 3, 2, 2, 1, 1>",
                                                  4: "maxpool_fwd<__nv_bfloat16, 4>", 1: "maxpool_fwd<__nv_bfloat16, 1>"}
    plan = cuda_pool._plan("tiled", False, (2, 9, 9, 6), 3, 2, V0, "bfloat16")[2]
    assert {k: v[0] for k, v in plan.items()} == {2: "maxpool_bwd_tile<__nv_bfloat16, 2, 3, 3, 2, 2, 1, 2>",
                                                  1: "maxpool_bwd_tile<__nv_bfloat16, 1, 3, 3, 2, 2, 1, 2>"}
    for variant in cuda_pool.DTYPES:
        if "bfloat16" in cuda_pool.DTYPES[variant]:
            for forward in (True, False):
                for C in (1, 2, 3, 4, 6, 96):
                    for _, (name, _, _) in cuda_pool._plan(variant, forward, (2, 9, 9, C), 3, 2, V0,
                                                           "bfloat16")[2].items():
                        assert name in cuda_pool.NAME_EXPRESSIONS and "__nv_bfloat16" in name
    assert registry.variants("maxpool_forward", "cuda", dtype="bfloat16") == ["direct", "vec4", "tiled", "vec8",
                                                                             "vec8x2"]
    guarded = cuda_emu.Guarded()
    cuda_emu.patch_backend(monkeypatch, guarded)
    with pytest.raises(TypeError, match="x must be float32, got bfloat16"):
        cuda_pool._forward("smem")(guarded.empty((1, 4, 4, 4), BF16), 2, 2, V0)


def test_bfloat16_kernels_emulated_on_cpu(monkeypatch):
    """The __nv_bfloat16 instances of the variants that take bfloat16, on the whole table: y and
    argmax exact (a maximum is an input), dx the float32 sum of the picked dy rounded once, as
    the reference computes it; views 2 bytes off (offset 1: the narrow kernels)."""
    guarded, launched = cuda_emu.Guarded(), []
    cuda_emu.patch_backend(monkeypatch, guarded, grid_cap=5, log=launched)
    monkeypatch.setattr(cuda_pool, "_device", lambda: -1)
    monkeypatch.setattr(cuda_pool, "_ptr", lambda a: a.ctypes.data)
    monkeypatch.setattr(cuda_pool, "_PLANS", {})
    xp = types.SimpleNamespace(empty=guarded.empty, asarray=np.asarray, asnumpy=np.asarray)
    for variant in registry.variants("maxpool_forward", "cuda", dtype="bfloat16"):
        fns = {"maxpool_forward": cuda_pool._forward(variant), "maxpool_backward": cuda_pool._backward(variant)}
        for i, case in enumerate(CASES):
            big = case[0] * case[1] * case[2] * case[3] > 100000
            runs = [("rand", 0), ("ties", 0)] if big else [("rand", 0), ("special", 0), ("ties", 0), ("special", 1)]
            for mode, offset in runs:
                for op in _ops(variant):
                    check_variant(xp, op, variant, case, seed=i, mode=mode, offset=offset, fns=fns, dtype=BF16)
                    assert guarded.intact(), f"{op}/{variant} {case} {mode}: a kernel wrote outside its array"
                    guarded.reset()
    launched = {name for name, _, _ in launched}
    assert all("__nv_bfloat16" in n for n in launched)
    assert {n for n in launched if n.startswith("maxpool_fwd_tile<__nv_bfloat16, 8,")} == {
        cuda_pool._fwd_tile_name("__nv_bfloat16", 8, *k, *outputs)
        for k in cuda_pool.VEC8 for outputs in cuda_pool.VEC8_OUTPUTS.values()}
    assert {"maxpool_bwd_tile<__nv_bfloat16, 4, 3, 3, 2, 2, 1, 2>", "maxpool_fwd<__nv_bfloat16, 1>",
            "maxpool_bwd<__nv_bfloat16, 2>"} <= launched
