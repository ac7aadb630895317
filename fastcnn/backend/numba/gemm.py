"""The Numba GEMM engine: one shared-memory tiled, register-blocked kernel body.

BM x BN tile, BK deep, TM x TN outputs per thread (tiles 64x64/4x4, 128x128/8x8
and 64x16/4x2 for narrow outputs ...), made per operand loader; bias + ReLU
fused in the epilogue; split-K when the output is small.  Large matmuls (config
128x128) run a dedicated generated kernel per transpose pair (_gemm_big_source).
matmul and dense_forward live here; conv.py adds the implicit-GEMM loaders.
"""
from __future__ import annotations

from ._launch import (SIMULATOR, THREADS, _blocks, _check, _device, _empty, _flat, _jit, _launch,
                      _memo, _no_bias, _out, _ptx_types, _scratch, cuda, float32, types,
                      uint64)  # uint64: the generated 128x128 kernel uses it

# ---------------------------------------------------------------------------
# GEMM engine: one tiled, register-blocked body, specialised per operand loader
# ---------------------------------------------------------------------------
# p (int64 x 16) carries the geometry: conv: N H W C R S K P Q sh sw pt pl;
# matmul: p[0] = trans_a, p[1] = trans_b.  p[13] = has_bias, p[14] = relu.
NP = 16
HAS_BIAS, RELU = 13, 14

# name: (BM, BN, BK, TM, TN)
TILE_CONFIGS = {
    "64x64": (64, 64, 8, 4, 4),      # 256 threads, 4x4 outputs each: the general case
    "128x128": (128, 128, 8, 8, 8),  # 256 threads, 8x8 outputs each: large GEMMs
    "64x16": (64, 16, 8, 4, 2),      # 128 threads: narrow outputs (LeNet's 6 or 16 channels)
    "8x32": (8, 32, 32, 2, 4),       # 32 threads, deep K tile: few rows (dense layers at a small batch)
    "32x16": (32, 16, 32, 4, 4),     # 32 threads, deep K tile: small GEMMs
    "32x8": (32, 8, 32, 4, 2),       # 32 threads, deep K tile: very narrow outputs
}
_forced_config: list = [None]


def tile_config(name):
    """Force a tile config (or None: choose by shape), for tests and benchmarks.

    Used as a context manager: ``with tile_config('64x64'): nb.matmul(...)``.
    """
    import contextlib
    if name is not None and name not in TILE_CONFIGS:
        raise ValueError(f"unknown tile config {name!r}; choose from {sorted(TILE_CONFIGS)}")

    @contextlib.contextmanager
    def ctx():
        previous = _forced_config[0]
        _forced_config[0] = name
        try:
            yield
        finally:
            _forced_config[0] = previous
    return ctx()


def simulator_cost(M, N, K, cfg):
    """A rough model of the seconds the CUDA simulator takes for an M x N x K GEMM with tile ``cfg``.

    Weights from timings on a 2-core CPU at Python's default switch interval
    (~1.4 us per padded multiply-add, ~19 us per tile element loaded, ~320 us
    per thread per __syncthreads()); it overestimates by up to 2x but ranks the
    configs right on LeNet-5's shapes (measured: 32x8 runs the 392x6x400
    backward-data GEMM in 7 s, 64x16 in 18 s).  Barriers and loads dominate, so
    the simulator prefers few threads and deep K tiles.
    """
    BM, BN, BK, TM, TN = TILE_CONFIGS[cfg]
    mt, nt, kt = -(-M // BM), -(-N // BN), -(-K // BK)
    threads = (BM // TM) * (BN // TN)
    padded = mt * BM * nt * BN * kt * BK
    loads = mt * nt * kt * (BM * BK + BK * BN)
    syncs = mt * nt * kt * threads * 2
    return (padded * 1.4 + loads * 19 + syncs * 320) * 1e-6


def pick_config(M, N, K):
    """Tile config for an M x N x K GEMM (the forced one, if any).

    On a GPU: by shape (narrow N -> 64x16; few rows -> 8x32; large -> 128x128;
    else 64x64).  Under the simulator: the config the simulator runs fastest
    (``simulator_cost``), so that a whole LeNet-5 pass fits in CI; every config
    is still tested there on its own through ``tile_config``.
    """
    if _forced_config[0]:
        return _forced_config[0]
    if SIMULATOR:
        return min(TILE_CONFIGS, key=lambda c: simulator_cost(M, N, K, c))
    if N <= 16:
        return "64x16"
    if M <= 16:
        return "8x32"
    if M >= 1024 and N >= 512:
        return "128x128"
    return "64x64"


def _make_gemm(load_a, load_b, BM, BN, BK, TM, TN):
    TX = BN // TN
    TY = BM // TM
    NT = TX * TY
    A_LOADS = (BM * BK + NT - 1) // NT
    B_LOADS = (BK * BN + NT - 1) // NT
    AS_W = BM + 4                     # padded: the transposed stores hit distinct banks
    A_N = BM * BK
    B_N = BK * BN

    def gemm(A, B, C, bias, M, N, K, kchunk, p):
        As = cuda.shared.array((BK, AS_W), float32)
        Bs = cuda.shared.array((BK, BN), float32)
        acc = cuda.local.array((TM, TN), float32)
        ar = cuda.local.array(TM, float32)
        br = cuda.local.array(TN, float32)
        tid = cuda.threadIdx.x
        tx = tid % TX
        ty = tid // TX
        m0 = cuda.blockIdx.x * BM
        n0 = cuda.blockIdx.y * BN
        kbeg = cuda.blockIdx.z * kchunk
        kend = min(K, kbeg + kchunk)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = float32(0.0)
        for k0 in range(kbeg, kend, BK):
            for l in range(A_LOADS):
                e = tid + l * NT
                if e < A_N:
                    mm = e // BK
                    kk = e % BK
                    m = m0 + mm
                    k = k0 + kk
                    v = float32(0.0)
                    if m < M and k < kend:
                        v = load_a(A, m, k, M, K, p)
                    As[kk, mm] = v
            for l in range(B_LOADS):
                e = tid + l * NT
                if e < B_N:
                    kk = e // BN
                    nn = e % BN
                    k = k0 + kk
                    n = n0 + nn
                    v = float32(0.0)
                    if k < kend and n < N:
                        v = load_b(B, k, n, K, N, p)
                    Bs[kk, nn] = v
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    ar[i] = As[kk, ty + i * TY]
                for j in range(TN):
                    br[j] = Bs[kk, tx + j * TX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ar[i] * br[j]
            cuda.syncthreads()
        base = cuda.blockIdx.z * M * N      # split-K partials stack along z
        for i in range(TM):
            m = m0 + ty + i * TY
            if m < M:
                for j in range(TN):
                    n = n0 + tx + j * TX
                    if n < N:
                        v = acc[i, j]
                        if p[HAS_BIAS] != 0:
                            v += bias[n]
                        if p[RELU] != 0 and v <= float32(0.0):
                            v = float32(0.0)
                        C[base + m * N + n] = v

    return _jit(gemm)


@_jit
def _k_sum_splits(part, C, bias, MN, N, splits, p):
    """C = sum over splits of the partial GEMMs, then the bias/ReLU epilogue."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < MN:
        v = float32(0.0)
        for z in range(splits):
            v += part[z * MN + i]
        if p[HAS_BIAS] != 0:
            v += bias[i % N]
        if p[RELU] != 0 and v <= float32(0.0):
            v = float32(0.0)
        C[i] = v
        i += stride


# --- operand loaders (called only for in-range m, k, n) ---

@_device
def _mm_a(A, m, k, M, K, p):
    if p[0] != 0:
        return A[k * M + m]          # a is (K, M): op(a) = a.T
    return A[m * K + k]


@_device
def _mm_b(B, k, n, K, N, p):
    if p[1] != 0:
        return B[n * K + k]          # b is (N, K)
    return B[k * N + n]


# --- the large-problem matmul: 128x128x8 tiles, 8x8 outputs a thread, register prefetch ---
# A dedicated kernel per (trans_a, trans_b) (closure constants: the untaken branches
# are compiled out).  Both tiles sit K-major in shared memory (A transposed), rows
# padded by 4 floats; thread (ty, tx) = (tid // 16, tid % 16) owns rows
# {4ty + i, 64 + 4ty + i} and columns {4tx + j, 64 + 4tx + j} (i, j < 4), so its eight
# A values and eight B values of a K step are two runs of four consecutive floats,
# which NVVM turns into 16-byte shared loads (ld.shared.v4; Numba has no vector
# types).  The next K slice is read from global memory into registers while the
# current one is multiplied.  Global loads are unguarded in the interior (tile fully
# inside M x N and a whole K slice left) and guarded only at the edges.
# __launch_bounds__(256, 2): at most 128 registers, two blocks per SM.
BIG_BM, BIG_BN, BIG_BK = 128, 128, 8
BIG_LDS = BIG_BM + 4
BIG_THREADS = 256
BIG_LAUNCH_BOUNDS = (BIG_THREADS, 2)


# (The comparisons live in these device functions rather than in the generated
# kernel: every branch written there is a basic block for Numba's front end, whose
# passes grow faster than linearly with their number.)
@_device
def _ld_or_zero(X, idx, mn, mn_lim, k, kend):
    """X[idx] when (mn, k) lies inside the operand, else 0 (an edge tile's load)."""
    if mn < mn_lim and k < kend:
        return X[idx]
    return float32(0.0)


@_device
def _ep_store(C, bias, row, m, M, n, N, v, has_bias, relu):
    """Epilogue for one output (m, n), if inside C: + bias[n], ReLU, store at C[row + n]."""
    if m < M and n < N:
        if has_bias != 0:
            v += bias[n]
        if relu != 0 and v <= float32(0.0):
            v = float32(0.0)
        C[row + n] = v


def _gemm_big_source(TA, TB):
    """Python source of the 128x128 kernel for one (trans_a, trans_b).

    Generated rather than written with loops over local arrays: in that form NVVM
    left the epilogue (and the K loop) rolled, which indexes the 8x8 accumulator
    dynamically and puts it in local memory (seen in the PTX).  Here the 64
    accumulators, 16 operands and 8 prefetched values are named scalars, so they
    can only live in registers.  The 8-step K loop stays a Python loop: unrolling
    it in the source made Numba's front end take over a minute per kernel.
    """
    BK, LDS = BIG_BK, BIG_LDS
    L = []
    w = L.append
    w("def gemm_big(A, B, C, bias, M, N, K, kchunk, has_bias, relu):")
    align = "" if SIMULATOR else ", alignment=16"     # the simulator refuses alignment=
    w(f"    As = cuda.shared.array({BK * LDS}, float32{align})")
    w(f"    Bs = cuda.shared.array({BK * LDS}, float32{align})")
    w("    tid = cuda.threadIdx.x")
    w("    tx4 = (tid % 16) * 4")
    w("    ty4 = (tid // 16) * 4")
    w(f"    m0 = cuda.blockIdx.x * {BIG_BM}")
    w(f"    n0 = cuda.blockIdx.y * {BIG_BN}")
    w("    kbeg = cuda.blockIdx.z * kchunk")
    w("    kend = min(K, kbeg + kchunk)")
    w(f"    inside = m0 + {BIG_BM} <= M and n0 + {BIG_BN} <= N")
    # loader lanes: a K-contiguous operand is read as 8 k x 4 rows a warp (32-byte
    # runs), an M/N-contiguous one as 128 consecutive floats a warp
    w("    lk = tid % 8")
    w("    lr = tid // 8")
    w("    lc = tid % 128")
    w("    lkk = tid // 128")
    for i in range(8):
        w("    " + " = ".join(f"c{i}{j}" for j in range(8)) + " = float32(0.0)")

    def operand(reg, kcontig, lim, base, k0):
        # the thread's 4 elements: K-contiguous: row base+lr+32l, k k0+lk (X[row*K + k]);
        # MN-contiguous: column base+lc, k k0+lkk+2l (X[k*lim + col])
        out = []
        for l in range(4):
            if kcontig:
                mn, k = f"({base} + lr + {32 * l})", f"({k0} + lk)"
                idx = f"{mn} * K + {k}"
            else:
                mn, k = f"({base} + lc)", f"({k0} + lkk + {2 * l})"
                idx = f"{k} * {lim} + {mn}"
            out.append((f"{reg}{l}", idx, f"{mn}, {lim}, {k}, kend"))
        return out

    def fetch(k0, ind):
        ops = [(x, "A") for x in operand("ra", TA == 0, "M", "m0", k0)]
        ops += [(x, "B") for x in operand("rb", TB == 1, "N", "n0", k0)]
        w(f"{ind}if inside and {k0} + {BK} <= kend:")     # interior: no guards
        for (reg, idx, _), arr in ops:
            w(f"{ind}    {reg} = {arr}[{idx}]")
        w(f"{ind}else:")
        for (reg, idx, cond), arr in ops:
            w(f"{ind}    {reg} = _ld_or_zero({arr}, {idx}, {cond})")

    def store(reg, S, kcontig):
        for l in range(4):
            if kcontig:
                w(f"        {S}[lk * {LDS} + lr + {32 * l}] = {reg}{l}")
            else:
                w(f"        {S}[(lkk + {2 * l}) * {LDS} + lc] = {reg}{l}")

    fetch("kbeg", "    ")
    w("    k0 = kbeg")
    w("    while k0 < kend:")
    store("ra", "As", TA == 0)
    store("rb", "Bs", TB == 1)
    w("        cuda.syncthreads()")
    w(f"        k1 = k0 + {BK}")
    w("        if k1 < kend:")                  # fetch the next slice during this one's math
    fetch("k1", "            ")
    w(f"        for kk in range({BK}):")
    # unsigned offsets: Numba adds no negative-index wraparound to them, so NVVM
    # sees four consecutive aligned addresses and emits one ld.shared.v4 for them
    w(f"            ao = uint64(ty4 + kk * {LDS})")
    w(f"            bo = uint64(tx4 + kk * {LDS})")
    for i in range(4):
        w(f"            a{i} = As[ao + uint64({i})]")
    for i in range(4):
        w(f"            a{4 + i} = As[ao + uint64({64 + i})]")
    for j in range(4):
        w(f"            b{j} = Bs[bo + uint64({j})]")
    for j in range(4):
        w(f"            b{4 + j} = Bs[bo + uint64({64 + j})]")
    for i in range(8):
        for j in range(8):
            w(f"            c{i}{j} += a{i} * b{j}")
    w("        cuda.syncthreads()")
    w("        k0 = k1")
    w("    base = cuda.blockIdx.z * M * N")   # split-K partials stack along z
    for i in range(8):
        w(f"    m = m0 + ty4 + {i % 4 + 64 * (i // 4)}")
        w("    row = base + m * N")
        for j in range(8):
            n = f"n0 + tx4 + {j % 4 + 64 * (j // 4)}"
            w(f"    _ep_store(C, bias, row, m, M, {n}, N, c{i}{j}, has_bias, relu)")
    return "\n".join(L) + "\n"


def _make_gemm_big(TA, TB):
    namespace = {}
    code = compile(_gemm_big_source(TA, TB), f"<fastcnn.backend.numba gemm_big ta={TA} tb={TB}>", "exec")
    exec(code, globals(), namespace)   # module globals: the simulator swaps `cuda` there
    fn = namespace["gemm_big"]
    fn.__name__ = fn.__qualname__ = f"gemm_big_{TA}{TB}"
    if cuda is None:
        return fn
    if SIMULATOR:   # the simulator's cuda.jit takes no launch_bounds
        return cuda.jit(fn)
    return cuda.jit(fn, launch_bounds=BIG_LAUNCH_BOUNDS)


_BIG_KERNELS = {}
if cuda is not None:
    for _ta in (0, 1):
        for _tb in (0, 1):
            _BIG_KERNELS[_ta, _tb] = _make_gemm_big(_ta, _tb)

# kind: (A loader, B loader); conv.py adds the convolution kinds to _GEMM_KERNELS
_LOADERS = {
    "matmul": (_mm_a, _mm_b),
}
_GEMM_KERNELS = {}
if cuda is not None:
    for _kind, (_la, _lb) in _LOADERS.items():
        for _cfg, _dims in TILE_CONFIGS.items():
            _GEMM_KERNELS[_kind, _cfg] = _make_gemm(_la, _lb, *_dims)

SPLIT_TARGET_BLOCKS = 264   # about two blocks per SM on an H100/H200 (132 SMs)


@_memo
def _gemm_plan(kind, M, N, K, p, has_bias, relu, forced):
    """(kernel, grid, threads, kchunk, splits, p, plain p) of one GEMM; cached by shape."""
    cfg = pick_config(M, N, K)
    BM, BN, BK, TM, TN = TILE_CONFIGS[cfg]
    nt = (BM // TM) * (BN // TN)
    p = list(p) + [0] * (NP - len(p))
    p[HAS_BIAS] = int(has_bias)
    p[RELU] = int(relu)
    p = tuple(int(v) for v in p)
    tiles = ((M + BM - 1) // BM) * ((N + BN - 1) // BN)
    ktiles = (K + BK - 1) // BK
    splits = 1
    if tiles < SPLIT_TARGET_BLOCKS // 2 and ktiles >= 64:   # small output, long K: split K
        splits = max(1, min((SPLIT_TARGET_BLOCKS + tiles - 1) // tiles, ktiles // 32))
    kchunk = ((ktiles + splits - 1) // splits) * BK
    splits = (K + kchunk - 1) // kchunk
    grid = ((M + BM - 1) // BM, (N + BN - 1) // BN, splits)
    plain = tuple(0 if i in (HAS_BIAS, RELU) else v for i, v in enumerate(p))
    if kind == "matmul" and cfg == "128x128":
        # the dedicated large-problem kernel: trans flags compiled in, no geometry tuple
        return _BIG_KERNELS[p[0], p[1]], grid, nt, kchunk, splits, p, plain, True
    return _GEMM_KERNELS[kind, cfg], grid, nt, kchunk, splits, p, plain, False


def _gemm(kind, A, B, M, N, K, p, bias=None, relu=False, C=None):
    """Run the ``kind`` GEMM: C (M, N) = loadA (M x K) @ loadB (K x N), epilogue fused."""
    kernel, grid, nt, kchunk, splits, p, plain, big = _gemm_plan(
        kind, M, N, K, tuple(p), bias is not None, bool(relu), _forced_config[0])
    b = _no_bias() if bias is None else _flat(bias)
    C = _empty(M * N) if C is None else _flat(C)
    if splits == 1:
        if big:
            _launch(kernel, grid, nt, A, B, C, b, M, N, K, kchunk, p[HAS_BIAS], p[RELU])
        else:
            _launch(kernel, grid, nt, A, B, C, b, M, N, K, kchunk, p)
        return C
    part = _scratch(splits * M * N)
    if big:
        _launch(kernel, grid, nt, A, B, part, b, M, N, K, kchunk, 0, 0)
    else:
        _launch(kernel, grid, nt, A, B, part, b, M, N, K, kchunk, plain)
    _launch(_k_sum_splits, _blocks(M * N), THREADS, part, C, b, M * N, N, splits, p)
    return C


def matmul(a, b, trans_a=False, trans_b=False, *, out=None):
    """op(a) @ op(b) for 2-D float32 arrays (op = transpose when the flag is set)."""
    _check("a", a, ndim=2)
    _check("b", b, ndim=2)
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    K2, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != K2:
        raise ValueError(f"a and b do not chain: op(a) is {(M, K)}, op(b) is {(K2, N)}")
    out = _out("out", out, (M, N), inputs=(("a", a), ("b", b)))
    _gemm("matmul", _flat(a), _flat(b), M, N, K, (int(bool(trans_a)), int(bool(trans_b))), C=out)
    return out


def dense_forward(x, w, b=None, relu=False, *, out=None):
    """x @ w + b, ReLU fused when ``relu``; x (batch, in), w (in, out), b (out,) or None."""
    _check("x", x, ndim=2)
    _check("w", w, ndim=2)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w must have {x.shape[1]} rows (x is {tuple(x.shape)}), got {tuple(w.shape)}")
    if b is not None:
        _check("b", b, shape=(w.shape[1],))
    M, K = x.shape
    N = w.shape[1]
    out = _out("out", out, (M, N), inputs=(("x", x), ("w", w), ("b", b)))
    _gemm("matmul", _flat(x), _flat(w), M, N, K, (0, 0), bias=b, relu=relu, C=out)
    return out


def ptx_kernels():
    """[(label, python function, explicit signature[, compile options])] of this module's kernels."""
    if types is None:
        return []
    f32, f64, i32, u8, i64, f, u64 = _ptx_types()
    tup16 = types.UniTuple(types.int64, NP)
    out = []
    for (kind, cfg), k in _GEMM_KERNELS.items():
        if kind in _LOADERS:
            out.append((f"gemm_{kind}_{cfg}", k.py_func, (f32, f32, f32, f32, i64, i64, i64, i64, tup16)))
    for (ta, tb), k in _BIG_KERNELS.items():
        out.append((f"gemm_big_128x128_t{ta}{tb}", k.py_func,
                    (f32, f32, f32, f32, i64, i64, i64, i64, i64, i64),
                    {"launch_bounds": BIG_LAUNCH_BOUNDS}))
    out.append(("sum_splits", _k_sum_splits.py_func, (f32, f32, f32, i64, i64, i64, tup16)))
    return out
