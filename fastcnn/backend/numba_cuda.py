"""The 'numba' backend: every primitive as a Numba CUDA kernel written in Python.

Two roles:
  * a whole backend (``fastcnn.backend.get('numba')``): module-level functions
    for every name in ``fastcnn.backend.PRIMITIVES``, plus name/device/xp/
    asarray/to_host/synchronize/unavailable_reason;
  * a source of kernel variants: each kernel is registered in
    ``fastcnn.kernels`` as ``numba_<algorithm>`` (source='numba', never the
    default), so the 'cuda' backend can run it in place of a CUDA C variant.

Arrays.  On a real GPU the functions take and return CuPy arrays; they wrap
them for Numba with ``numba.cuda.as_cuda_array(a, sync=False)`` (no
synchronisation per launch) and launch on CuPy's current stream through
``numba.cuda.external_stream``, so the launches can be captured in a CuPy CUDA
graph; outputs come from ``cupy.empty``.  Under ``NUMBA_ENABLE_CUDASIM=1``
(no GPU) the same kernels run in Numba's CUDA simulator on NumPy arrays.
Every kernel sees its arrays flattened to 1-D float32/int32/uint8 and its
geometry as an int64 tuple, so one signature per kernel covers all shapes
(``PTX_KERNELS`` lists them for the offline sm_90 PTX/ptxas check).

Kernels:
  GEMM engine   one shared-memory tiled, register-blocked kernel body
                (BM x BN tile, BK deep, TM x TN outputs per thread; tiles
                64x64/4x4, 128x128/8x8 and 64x16/4x2 for narrow outputs), made
                per operand loader: matmul (any transposes), conv forward as an
                implicit GEMM (A gathered from NHWC input, no im2col buffer),
                conv backward-data (gather from dy, strided taps skipped),
                conv backward-weights (split over K when the output is small),
                dense; bias + ReLU fused in the epilogue.  Large matmuls
                (config 128x128) run a dedicated generated kernel per transpose
                pair: 8x8 scalar accumulators, register prefetch, unguarded
                interior tiles, vectorised shared loads (see _gemm_big_source).
  max-pool      one thread per output (forward, uint8 argmax r*pool_w+s, first
                max wins, padding never wins) / per input (backward, gather:
                deterministic, no atomics); numba_vec: 4 channels a thread
                when C % 4 == 0, 2-D grid; numba_lanes (forward): channel
                lanes x output columns x output rows, no division per output.
  the rest      elementwise grid-stride kernels; bias_grad as a two-pass column
                reduction (deterministic); softmax and softmax-xent one block
                per row with shared-memory reductions, totals by
                cuda.atomic.add; dropout with an in-kernel Philox 4x32-10
                (uint32 arithmetic done in uint64 with explicit masks); crop
                (augmentation) and the colour noise with the same Philox per
                image; LRN across
                channels; SGD, Adam (AdamW) and RMSprop over flat buffers.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from .. import _numba_compat  # must precede numba.cuda: see its docstring (NumPy 2.5)

_numba_compat.apply()

try:
    from numba import cuda, float32, float64, int32, int64, uint8, uint64, types
    import numba as _numba
    _NUMBA_ERROR = None
except Exception as _exc:  # numba (or numba-cuda) missing or broken: the backend says why
    cuda = None
    _numba = None
    _NUMBA_ERROR = f"numba-cuda cannot be imported ({type(_exc).__name__}: {_exc}); pip install 'fastcnn[cuda]'"
    float32, float64, int32, int64, uint8, uint64 = (np.float32, np.float64, np.int32,
                                                    np.int64, np.uint8, np.uint64)
    types = None

from . import reference, registry

name = "numba"
SIMULATOR = bool(_numba is not None and _numba.config.ENABLE_CUDASIM)
device = "cpu" if SIMULATOR else "cuda"

if SIMULATOR:
    xp = np
    _cp = None
else:
    try:
        import cupy as _cp
    except Exception:
        _cp = None
    xp = _cp


def _jit(fn=None, **kw):
    """cuda.jit, lazily compiled (no signature): importing this module needs no GPU."""
    if cuda is None:
        return fn if fn is not None else (lambda f: f)
    return cuda.jit(fn, **kw) if fn is not None else cuda.jit(**kw)


def _device(fn):
    return fn if cuda is None else cuda.jit(device=True)(fn)


_reason_cache: list = []


def unavailable_reason() -> str | None:
    """None when the kernels can run here (a GPU, or the CUDA simulator), else why not."""
    if _NUMBA_ERROR:
        return _NUMBA_ERROR
    if SIMULATOR:
        return None
    if not _reason_cache:
        why = None
        if _cp is None:
            why = "CuPy is not installed (the numba backend keeps its arrays as CuPy arrays on a GPU)"
        else:
            try:
                if not cuda.is_available():
                    why = ("no CUDA GPU visible to Numba (set NUMBA_ENABLE_CUDASIM=1 to run the "
                           "kernels in Numba's CPU simulator)")
                elif _cp.cuda.runtime.getDeviceCount() == 0:
                    why = "no CUDA GPU visible to CuPy"
            except Exception as exc:
                why = f"no usable CUDA driver or GPU ({type(exc).__name__}: {exc})"
        _reason_cache.append(why)
    return _reason_cache[0]


# ---------------------------------------------------------------------------
# arrays, checks, launches
# ---------------------------------------------------------------------------

def asarray(a, dtype=None):
    """A contiguous array of this backend (NumPy under the simulator, CuPy on a GPU)."""
    if SIMULATOR:
        if _cp is None and type(a).__module__.startswith("cupy"):
            a = a.get()
        return np.ascontiguousarray(np.asarray(a, dtype=dtype))
    return _cp.ascontiguousarray(_cp.asarray(a, dtype=dtype))


def to_host(a):
    if not SIMULATOR and _cp is not None and isinstance(a, _cp.ndarray):
        return _cp.asnumpy(a)
    return np.asarray(a)


def synchronize() -> None:
    if not SIMULATOR and _cp is not None:
        _cp.cuda.get_current_stream().synchronize()


def _empty(shape, dtype=np.float32):
    return np.empty(shape, dtype) if SIMULATOR else _cp.empty(shape, dtype)


def _array_type():
    return np.ndarray if SIMULATOR else (_cp.ndarray if _cp is not None else None)


_ARRAY_TYPE = _array_type()
_WHERE = "a NumPy array (CUDA simulator)" if SIMULATOR else "a CuPy array on the GPU"


def _check(argname, a, dtype=np.float32, ndim=None, shape=None):
    """Refuse, before any launch, an argument the kernels would read wrongly.

    Runs once per array per call (the LeNet-5 step makes ~40 calls), so it sticks
    to cheap attribute reads: no Device() objects, no __array_interface__ dicts.
    """
    if _ARRAY_TYPE is None or not isinstance(a, _ARRAY_TYPE):
        raise TypeError(f"{argname} must be {_WHERE}, got {type(a).__name__}; "
                        "convert it with fastcnn.backend.get('numba').asarray(...)")
    if a.dtype != dtype:
        raise TypeError(f"{argname} must be {np.dtype(dtype).name}, got {a.dtype.name}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{argname} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if shape is not None and a.shape != shape and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{argname} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{argname} must be C-contiguous (kernels ignore strides)")
    if a.size == 0:
        raise ValueError(f"{argname} is empty (shape {tuple(a.shape)})")
    if not SIMULATOR:
        current = _cp.cuda.runtime.getDevice()
        if a.data.device_id != current:
            raise ValueError(f"{argname} lives on GPU {a.data.device_id}, the current device is {current}")
    return a


def _ptr_span(a):
    start = a.__array_interface__["data"][0] if SIMULATOR else a.data.ptr
    return start, start + a.nbytes


def _out(argname, out, shape, dtype=np.float32, inputs=()):
    """The output buffer: a new one, or the caller's ``out=`` (checked; must not overlap ``inputs``).

    Every primitive that returns an array takes ``out=`` as the CUDA C variants do,
    so that a captured graph can write into buffers allocated before the capture.
    """
    if out is None:
        return _empty(shape, dtype)
    _check(argname, out, dtype=dtype, shape=shape)
    if SIMULATOR:   # the same test (memory bounds overlap), without building __array_interface__
        for name_, a in inputs:
            if a is not None and np.may_share_memory(out, a):
                raise ValueError(f"{argname} overlaps {name_}: this kernel cannot work in place")
        return out
    lo, hi = _ptr_span(out)
    for name_, a in inputs:
        if a is not None:
            alo, ahi = _ptr_span(a)
            if lo < ahi and alo < hi:
                raise ValueError(f"{argname} overlaps {name_}: this kernel cannot work in place")
    return out


def _pair_out(out, what):
    if out is None:
        return None, None
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"out must be a pair {what} or None")
    return out


def _pair(argname, v, minimum):
    try:
        a, b = (int(x) for x in v)
    except Exception:
        raise TypeError(f"{argname} must be a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{argname} must be >= {minimum}, got {v!r}")
    return a, b


def _padding(v):
    try:
        t = tuple(int(x) for x in v)
    except Exception:
        raise TypeError(f"padding must be (top, bottom, left, right) ints, got {v!r}") from None
    if len(t) != 4 or min(t) < 0:
        raise ValueError(f"padding must be four non-negative ints (top, bottom, left, right), got {v!r}")
    return t


def _shape(argname, v, n):
    try:
        t = tuple(int(x) for x in v)
    except Exception:
        raise TypeError(f"{argname} must be a tuple of {n} ints, got {v!r}") from None
    if len(t) != n or min(t) < 1:
        raise ValueError(f"{argname} must be {n} positive ints, got {v!r}")
    return t


_streams: dict = {}


def _stream():
    ptr = _cp.cuda.get_current_stream().ptr
    s = _streams.get(ptr)
    if s is None:
        s = _streams[ptr] = cuda.external_stream(ptr)
    return s


SIM_SWITCH_INTERVAL = 5e-4

# Host cost per launch on a GPU.  Numba's own path would, per array argument, build a
# DeviceNDArray from __cuda_array_interface__ (and an external_stream object for the
# stream CuPy names there), and per launch normalise the grid and build a launch
# configuration.  Both are cached here:
#   * _views: (pointer, size, dtype) -> a 1-D DeviceNDArray over that memory.  Every
#     kernel takes 1-D arrays, so one view serves any array with that triple; it holds
#     no reference to the CuPy memory (no leak), and a view of memory that was freed
#     and handed out again describes the new array exactly as a fresh one would.
#   * _configs: (kernel, grid, block, stream pointer) -> kernel[grid, block, stream].
# Both are cleared when they reach _CACHE_MAX entries.
_views: dict = {}
_configs: dict = {}
_CACHE_MAX = 4096


def _memo(fn):
    """Cache a geometry function's (validated) result by its arguments, when they hash.

    A call with unhashable arguments (lists) just runs the function; a call that
    raises caches nothing.  Shapes and hyper-parameters repeat every step, so a step
    reads the cache.
    """
    cache: dict = {}

    def wrapper(*args):
        try:
            key = tuple(tuple(a) if isinstance(a, list) else a for a in args)
            hit = cache.get(key)
        except TypeError:
            return fn(*args)
        if hit is None:
            hit = fn(*args)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[key] = hit
        return hit
    wrapper.__wrapped__ = fn
    wrapper.cache = cache
    return wrapper


def _view(a):
    key = (a.data.ptr, a.size, a.dtype.char)
    v = _views.get(key)
    if v is None:
        if len(_views) >= _CACHE_MAX:
            _views.clear()
        desc = {"shape": (a.size,), "strides": None, "typestr": a.dtype.str,
                "data": (a.data.ptr, False), "version": 3}
        v = _views[key] = cuda.from_cuda_array_interface(desc, owner=None, sync=False)
    return v


def _launch(kernel, grid, block, *args):
    """kernel[grid, block](*args): on a GPU on CuPy's current stream, with no synchronisation."""
    if SIMULATOR:
        # The simulator runs each CUDA thread as a Python thread; at Python's default
        # 5 ms GIL switch interval a __syncthreads() barrier costs ~8 ms, at 0.5 ms
        # about 4x less.  Lower it for the launch only (the caller blocks meanwhile).
        previous = sys.getswitchinterval()
        sys.setswitchinterval(min(previous, SIM_SWITCH_INTERVAL))
        try:
            kernel[grid, block](*args)
        finally:
            sys.setswitchinterval(previous)
        return
    ptr = _cp.cuda.get_current_stream().ptr
    key = (kernel, grid, block, ptr)
    configured = _configs.get(key)
    if configured is None:
        if len(_configs) >= _CACHE_MAX:
            _configs.clear()
        stream = _streams.get(ptr)
        if stream is None:
            stream = _streams[ptr] = cuda.external_stream(ptr)
        configured = _configs[key] = kernel[grid, block, stream]
    ndarray = _cp.ndarray
    configured(*[_view(a) if isinstance(a, ndarray) else a for a in args])


def _flat(a):
    # On a GPU _launch views every CuPy array as 1-D itself (arguments are checked
    # C-contiguous first), so no reshaped CuPy array is made per argument.
    return a.reshape(-1) if SIMULATOR else a


_workspaces: dict = {}


def _scratch(n):
    """float32 scratch space of n elements (split-K partials, bias_grad partial sums).

    On a GPU one buffer per (device, stream) is kept and reused, so that after a
    warm-up call a captured CUDA graph allocates nothing; reuse is safe because
    launches on one stream run in order.
    """
    if SIMULATOR:
        return np.empty(n, np.float32)
    key = (_cp.cuda.Device().id, _cp.cuda.get_current_stream().ptr)
    buf = _workspaces.get(key)
    if buf is None or buf.size < n:
        buf = _workspaces[key] = _cp.empty(max(n, 2 * (0 if buf is None else buf.size)), np.float32)
    return buf[:n]


_dummy: dict = {}


def _no_bias():
    key = "sim" if SIMULATOR else _cp.cuda.Device().id
    if key not in _dummy:
        _dummy[key] = np.zeros(1, np.float32) if SIMULATOR else _cp.zeros(1, np.float32)
    return _dummy[key]


# Grid-stride kernels: 256 threads a block on a GPU.  The simulator pays ~0.3 ms to
# create each simulated thread, so there they run as at most 2 blocks of 32 threads
# (grid-stride loops make any grid correct, and the tests then cover the strides).
THREADS = 32 if SIMULATOR else 256
_MAX_BLOCKS = 2 if SIMULATOR else 65535


def _blocks(n, threads=THREADS, cap=65535):
    return max(1, min(cap, _MAX_BLOCKS, (n + threads - 1) // threads))


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


@_device
def _conv_fwd_a(X, m, k, M, K, p):
    # m = (n, oh, ow) over N*P*Q; k = (r, s, c) over R*S*C; X is NHWC
    H = p[1]
    W = p[2]
    C = p[3]
    S = p[5]
    P = p[7]
    Q = p[8]
    n = m // (P * Q)
    rem = m - n * (P * Q)
    oh = rem // Q
    ow = rem - oh * Q
    r = k // (S * C)
    rem = k - r * (S * C)
    s = rem // C
    c = rem - s * C
    h = oh * p[9] - p[11] + r
    w = ow * p[10] - p[12] + s
    if h >= 0 and h < H and w >= 0 and w < W:
        return X[((n * H + h) * W + w) * C + c]
    return float32(0.0)


@_device
def _conv_dgrad_a(DY, m, k, M, K, p):
    # m = (n, h, w) over N*H*W; k = (r, s, kout) over R*S*K; only taps that land on an output
    H = p[1]
    W = p[2]
    S = p[5]
    KO = p[6]
    P = p[7]
    Q = p[8]
    sh = p[9]
    sw = p[10]
    n = m // (H * W)
    rem = m - n * (H * W)
    h = rem // W
    w = rem - h * W
    r = k // (S * KO)
    rem = k - r * (S * KO)
    s = rem // KO
    ko = rem - s * KO
    th = h + p[11] - r
    tw = w + p[12] - s
    if th < 0 or tw < 0:
        return float32(0.0)
    oh = th // sh
    ow = tw // sw
    if oh * sh != th or ow * sw != tw or oh >= P or ow >= Q:
        return float32(0.0)
    return DY[((n * P + oh) * Q + ow) * KO + ko]


@_device
def _conv_dgrad_b(Wt, k, n, K, N, p):
    # k = (r, s, kout), n = c: the weights transposed per tap, HWIO (R, S, C, K)
    S = p[5]
    C = p[3]
    KO = p[6]
    r = k // (S * KO)
    rem = k - r * (S * KO)
    s = rem // KO
    ko = rem - s * KO
    return Wt[((r * S + s) * C + n) * KO + ko]


@_device
def _conv_wgrad_a(X, m, k, M, K, p):
    # m = (r, s, c) over R*S*C; k = (n, oh, ow) over N*P*Q: the forward's patch, transposed
    return _conv_fwd_a(X, k, m, K, M, p)


@_device
def _rowmajor_b(B, k, n, K, N, p):
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
    code = compile(_gemm_big_source(TA, TB), f"<numba_cuda gemm_big ta={TA} tb={TB}>", "exec")
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

_LOADERS = {
    "matmul": (_mm_a, _mm_b),
    "conv_fwd": (_conv_fwd_a, _rowmajor_b),     # weights HWIO = an (R*S*C) x K matrix
    "conv_dgrad": (_conv_dgrad_a, _conv_dgrad_b),
    "conv_wgrad": (_conv_wgrad_a, _rowmajor_b),  # dy = an (N*P*Q) x K matrix
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


@_memo
def _conv_geometry(x_shape, w_shape, stride, padding):
    N, H, W, C = x_shape
    R, S, C2, K = w_shape
    if C2 != C:
        raise ValueError(f"w has {C2} input channels but x has {C} (w is HWIO {tuple(w_shape)})")
    sh, sw = _pair("stride", stride, 1)
    pt, pb, pl, pr = _padding(padding)
    P = (H + pt + pb - R) // sh + 1
    Q = (W + pl + pr - S) // sw + 1
    if H + pt + pb < R or W + pl + pr < S or P < 1 or Q < 1:
        raise ValueError(f"the {R}x{S} kernel does not fit the padded {H}x{W} input "
                         f"(padding {padding})")
    return (N, H, W, C, R, S, K, P, Q, sh, sw, pt, pl)


def conv2d_forward(x, w, b=None, stride=(1, 1), padding=(0, 0, 0, 0), relu=False, *, out=None):
    """NHWC x, HWIO w -> y (N, P, Q, K); implicit GEMM M=N*P*Q, N=K, K=R*S*C."""
    _check("x", x, ndim=4)
    _check("w", w, ndim=4)
    g = _conv_geometry(x.shape, w.shape, stride, padding)
    N, H, W, C, R, S, K, P, Q = g[:9]
    if b is not None:
        _check("b", b, shape=(K,))
    out = _out("out", out, (N, P, Q, K), inputs=(("x", x), ("w", w), ("b", b)))
    _gemm("conv_fwd", _flat(x), _flat(w), N * P * Q, K, R * S * C, g, bias=b, relu=relu, C=out)
    return out


def conv2d_backward_data(dy, w, x_shape, stride=(1, 1), padding=(0, 0, 0, 0), *, out=None):
    """dx (N, H, W, C) = implicit GEMM M=N*H*W, N=C, K=R*S*K over the taps that hit an output."""
    _check("dy", dy, ndim=4)
    _check("w", w, ndim=4)
    x_shape = _shape("x_shape", x_shape, 4)
    g = _conv_geometry(x_shape, w.shape, stride, padding)
    N, H, W, C, R, S, K, P, Q = g[:9]
    if tuple(dy.shape) != (N, P, Q, K):
        raise ValueError(f"dy must have shape {(N, P, Q, K)} for x_shape {x_shape}, got {tuple(dy.shape)}")
    out = _out("out", out, (N, H, W, C), inputs=(("dy", dy), ("w", w)))
    _gemm("conv_dgrad", _flat(dy), _flat(w), N * H * W, C, R * S * K, g, C=out)
    return out


def conv2d_backward_weights(x, dy, w_shape, stride=(1, 1), padding=(0, 0, 0, 0), *, out=None):
    """dw (R, S, C, K) = implicit GEMM M=R*S*C, N=K, K=N*P*Q (split along K when small)."""
    _check("x", x, ndim=4)
    _check("dy", dy, ndim=4)
    w_shape = _shape("w_shape", w_shape, 4)
    g = _conv_geometry(x.shape, w_shape, stride, padding)
    N, H, W, C, R, S, K, P, Q = g[:9]
    if tuple(dy.shape) != (N, P, Q, K):
        raise ValueError(f"dy must have shape {(N, P, Q, K)}, got {tuple(dy.shape)}")
    out = _out("out", out, (R, S, C, K), inputs=(("x", x), ("dy", dy)))
    _gemm("conv_wgrad", _flat(x), _flat(dy), R * S * C, K, N * P * Q, g, C=out)
    return out


# ---------------------------------------------------------------------------
# max-pool
# ---------------------------------------------------------------------------
# q = (N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl)

def _make_window_max(PH=0, PW=0):
    """The window-max device function.  PH, PW > 0 compile the window in (constant trip
    counts: LLVM unrolls the loops, so the loads of a window can be issued together); 0
    takes ph, pw from the arguments."""
    @_device
    def window_max(X, base, h0, w0, H, W, C, ph, pw):
        """(max, r*pw + s of its first position) of one channel's window, whose top-left is
        (h0, w0); base = n*H*W*C + c.  First max wins, padding never competes; a window
        holding NaN gives (NaN, ph*pw - 1), the reference's rule."""
        if PH > 0:
            ph = PH
            pw = PW
        best = float32(0.0)
        arg = -1
        for r in range(ph):
            h = h0 + r
            if h >= 0 and h < H:
                for s in range(pw):
                    w = w0 + s
                    if w >= 0 and w < W:
                        v = X[base + (h * W + w) * C]
                        if arg < 0 or v > best or v != v:
                            best = v
                            arg = r * pw + s
        if best != best:
            arg = ph * pw - 1
        return best, arg
    return window_max


_window_max = _make_window_max()


@_jit
def _k_maxpool_fwd(X, Y, AM, total, q):
    N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < total:
        c = i % C
        t = i // C
        ow = t % Q
        t = t // Q
        oh = t % P
        n = t // P
        best, arg = _window_max(X, n * H * W * C + c, oh * sh - pt, ow * sw - pl,
                                H, W, C, ph, pw)
        Y[i] = best
        AM[i] = uint8(arg)
        i += stride


@_jit
def _k_maxpool_bwd(DY, AM, DX, total, q):
    N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < total:
        c = i % C
        t = i // C
        w = t % W
        t = t // W
        h = t % H
        n = t // H
        hp = h + pt
        wp = w + pl
        # outputs whose windows cover (h, w): oh*sh <= hp < oh*sh + ph
        oh_lo = 0
        if hp >= ph:
            oh_lo = (hp - ph) // sh + 1
        oh_hi = min(hp // sh, P - 1)
        ow_lo = 0
        if wp >= pw:
            ow_lo = (wp - pw) // sw + 1
        ow_hi = min(wp // sw, Q - 1)
        acc = float32(0.0)
        for oh in range(oh_lo, oh_hi + 1):
            for ow in range(ow_lo, ow_hi + 1):
                o = ((n * P + oh) * Q + ow) * C + c
                if AM[o] == (hp - oh * sh) * pw + (wp - ow * sw):
                    acc += DY[o]
        DX[i] = acc
        i += stride


# numba_vec: 4 consecutive channels a thread (C % 4 == 0), as kernels/pool.cu's vec4.
# Numba has no float4, so the four loads are scalar (a warp still reads one contiguous
# 512-byte run per tap).  2-D grid: y walks output rows (n, oh), x the (ow, channel
# group) pairs of a row, so a thread does one integer division (by C/4) instead of
# the direct kernel's three; both loops are grid-stride, so any grid is correct.

@_jit
def _k_maxpool_fwd_vec(X, Y, AM, q):
    N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
    CV = C // 4
    rows = N * P
    rowlen = Q * CV
    row = cuda.blockIdx.y
    while row < rows:
        n = row // P
        h0 = (row - n * P) * sh - pt
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        while j < rowlen:
            ow = j // CV
            c = (j - ow * CV) * 4
            w0 = ow * sw - pl
            b0 = b1 = b2 = b3 = float32(0.0)
            a0 = a1 = a2 = a3 = 0
            first = True
            for r in range(ph):
                h = h0 + r
                if h >= 0 and h < H:
                    for s in range(pw):
                        w = w0 + s
                        if w >= 0 and w < W:
                            src = ((n * H + h) * W + w) * C + c
                            v0 = X[src]
                            v1 = X[src + 1]
                            v2 = X[src + 2]
                            v3 = X[src + 3]
                            at = r * pw + s
                            if first or v0 > b0 or v0 != v0:    # first max wins; padding never competes
                                b0 = v0
                                a0 = at
                            if first or v1 > b1 or v1 != v1:
                                b1 = v1
                                a1 = at
                            if first or v2 > b2 or v2 != v2:
                                b2 = v2
                                a2 = at
                            if first or v3 > b3 or v3 != v3:
                                b3 = v3
                                a3 = at
                            first = False
            last = ph * pw - 1    # NaN in the window: argmax the last position (the reference's rule)
            if b0 != b0:
                a0 = last
            if b1 != b1:
                a1 = last
            if b2 != b2:
                a2 = last
            if b3 != b3:
                a3 = last
            o = (row * Q + ow) * C + c
            Y[o] = b0
            Y[o + 1] = b1
            Y[o + 2] = b2
            Y[o + 3] = b3
            AM[o] = uint8(a0)
            AM[o + 1] = uint8(a1)
            AM[o + 2] = uint8(a2)
            AM[o + 3] = uint8(a3)
            j += cuda.blockDim.x * cuda.gridDim.x
        row += cuda.gridDim.y


@_jit
def _k_maxpool_bwd_vec(DY, AM, DX, q):
    N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
    CV = C // 4
    rows = N * H
    rowlen = W * CV
    row = cuda.blockIdx.y
    while row < rows:
        n = row // H
        hp = row - n * H + pt
        oh_lo = 0
        if hp >= ph:
            oh_lo = (hp - ph) // sh + 1
        oh_hi = min(hp // sh, P - 1)
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        while j < rowlen:
            w = j // CV
            c = (j - w * CV) * 4
            wp = w + pl
            ow_lo = 0
            if wp >= pw:
                ow_lo = (wp - pw) // sw + 1
            ow_hi = min(wp // sw, Q - 1)
            d0 = d1 = d2 = d3 = float32(0.0)
            oh = oh_hi
            while oh >= oh_lo:            # window row r = hp - oh*sh ascending
                ow = ow_hi
                while ow >= ow_lo:        # window column ascending
                    want = (hp - oh * sh) * pw + (wp - ow * sw)
                    o = ((n * P + oh) * Q + ow) * C + c
                    if AM[o] == want:
                        d0 += DY[o]
                    if AM[o + 1] == want:
                        d1 += DY[o + 1]
                    if AM[o + 2] == want:
                        d2 += DY[o + 2]
                    if AM[o + 3] == want:
                        d3 += DY[o + 3]
                    ow -= 1
                oh -= 1
            o = (row * W + w) * C + c
            DX[o] = d0
            DX[o + 1] = d1
            DX[o + 2] = d2
            DX[o + 3] = d3
            j += cuda.blockDim.x * cuda.gridDim.x
        row += cuda.gridDim.y


# numba_lanes: a warp reads 32 consecutive channels of one pixel per tap (128 coalesced
# bytes), as a vector kernel does, but with scalar loads, which Numba can emit.  3-D grid:
# x over channels, y over output columns, z over output rows (n, oh): no integer division
# but one per row (Numba's index arithmetic is 64-bit, where a division costs ~70
# instructions; numba_direct does six per output).  Every axis is grid-stride.

def _make_lanes_kernel(PH=0, PW=0):
    """The lanes kernel; PH, PW > 0: for that window only, compiled in (_make_window_max)."""
    window_max = _make_window_max(PH, PW)

    @_jit
    def maxpool_fwd_lanes(X, Y, AM, q):
        N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl = q
        rows = N * P
        row = cuda.blockIdx.z
        while row < rows:
            n = row // P
            h0 = (row - n * P) * sh - pt
            ow = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
            while ow < Q:
                w0 = ow * sw - pl
                o = (row * Q + ow) * C
                c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
                while c < C:
                    best, arg = window_max(X, n * H * W * C + c, h0, w0, H, W, C, ph, pw)
                    Y[o + c] = best
                    AM[o + c] = uint8(arg)
                    c += cuda.blockDim.x * cuda.gridDim.x
                ow += cuda.blockDim.y * cuda.gridDim.y
            row += cuda.gridDim.z
    return maxpool_fwd_lanes


_k_maxpool_fwd_lanes = _make_lanes_kernel()
# Windows with a compiled-in lanes kernel (AlexNet's 3x3, LeNet's 2x2); others: the generic one.
LANES_WINDOWS = ((2, 2), (3, 3))
_K_MAXPOOL_FWD_LANES_FIXED = {w: _make_lanes_kernel(*w) for w in LANES_WINDOWS}


def _grid_lanes(C, Q, rows):
    """(grid, block) of the lanes kernel: up to 32 channel lanes x output columns."""
    lanes = 32 if C >= 32 else 1 << (C - 1).bit_length()    # a power of two >= C
    cols = THREADS // lanes
    grid = (min(_MAX_BLOCKS, -(-C // lanes)), min(_MAX_BLOCKS, -(-Q // cols)), min(_MAX_BLOCKS, rows))
    return grid, (lanes, cols)


def _grid2(rowlen, rows):
    """(grid, block) of the 2-D grid-stride pool kernels: x over a row, y over rows."""
    gx = max(1, min(_MAX_BLOCKS, (rowlen + THREADS - 1) // THREADS))
    gy = max(1, min(_MAX_BLOCKS, rows))
    return (gx, gy), THREADS


@_memo
def _pool_geometry(x_shape, pool, stride, padding):
    N, H, W, C = x_shape
    ph, pw = _pair("pool", pool, 1)
    if ph * pw > 255:
        raise ValueError(f"pool window {pool} has {ph * pw} taps; argmax is uint8, so at most 255")
    sh, sw = _pair("stride", stride, 1)
    pt, pb, pl, pr = _padding(padding)
    if pt >= ph or pb >= ph or pl >= pw or pr >= pw:
        raise ValueError(f"padding {padding} must be smaller than the pool window {pool}")
    P = (H + pt + pb - ph) // sh + 1
    Q = (W + pl + pr - pw) // sw + 1
    if H + pt + pb < ph or W + pl + pr < pw or P < 1 or Q < 1:
        raise ValueError(f"pool window {pool} does not fit the padded {H}x{W} input")
    return (N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl)


def _maxpool_forward(x, pool, stride, padding, out, vec, lanes=False):
    _check("x", x, ndim=4)
    q = _pool_geometry(x.shape, pool, stride, padding)
    N, P, Q, C = q[0], q[4], q[5], q[3]
    y_out, am_out = _pair_out(out, "(y, argmax)")
    y = _out("out[0] (y)", y_out, (N, P, Q, C), inputs=(("x", x),))
    am = _out("out[1] (argmax)", am_out, (N, P, Q, C), np.uint8, inputs=(("x", x),))
    if lanes:
        grid, block = _grid_lanes(C, Q, N * P)
        kernel = _K_MAXPOOL_FWD_LANES_FIXED.get((q[6], q[7]), _k_maxpool_fwd_lanes)
        _launch(kernel, grid, block, _flat(x), _flat(y), _flat(am), q)
    elif vec and C % 4 == 0:
        grid, block = _grid2(Q * (C // 4), N * P)
        _launch(_k_maxpool_fwd_vec, grid, block, _flat(x), _flat(y), _flat(am), q)
    else:
        total = N * P * Q * C
        _launch(_k_maxpool_fwd, _blocks(total), THREADS, _flat(x), _flat(y), _flat(am), total, q)
    return y, am


def _maxpool_backward(dy, argmax, x_shape, pool, stride, padding, out, vec):
    _check("dy", dy, ndim=4)
    x_shape = _shape("x_shape", x_shape, 4)
    q = _pool_geometry(x_shape, pool, stride, padding)
    out_shape = (q[0], q[4], q[5], q[3])
    if tuple(dy.shape) != out_shape:
        raise ValueError(f"dy must have shape {out_shape} for x_shape {x_shape}, got {tuple(dy.shape)}")
    _check("argmax", argmax, dtype=np.uint8, shape=out_shape)
    dx = _out("out", out, x_shape, inputs=(("dy", dy), ("argmax", argmax)))
    N, H, W, C = x_shape
    if vec and C % 4 == 0:
        grid, block = _grid2(W * (C // 4), N * H)
        _launch(_k_maxpool_bwd_vec, grid, block, _flat(dy), _flat(argmax), _flat(dx), q)
    else:
        total = N * H * W * C
        _launch(_k_maxpool_bwd, _blocks(total), THREADS, _flat(dy), _flat(argmax), _flat(dx), total, q)
    return dx


def maxpool_forward(x, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """-> (y (N, P, Q, C), argmax uint8 (N, P, Q, C) = r*pool_w + s within the window)."""
    return _maxpool_forward(x, pool, stride, padding, out, False)


def maxpool_backward(dy, argmax, x_shape, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """dx: each input element gathers dy from the windows whose argmax points at it."""
    return _maxpool_backward(dy, argmax, x_shape, pool, stride, padding, out, False)


def maxpool_forward_vec(x, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """maxpool_forward, 4 channels a thread when C % 4 == 0 (else the direct kernel)."""
    return _maxpool_forward(x, pool, stride, padding, out, True)


def maxpool_forward_lanes(x, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """maxpool_forward, a 3-D grid of channel lanes x output columns x output rows."""
    return _maxpool_forward(x, pool, stride, padding, out, False, lanes=True)


def maxpool_backward_vec(dy, argmax, x_shape, pool=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), *, out=None):
    """maxpool_backward, 4 channels a thread when C % 4 == 0 (else the direct kernel)."""
    return _maxpool_backward(dy, argmax, x_shape, pool, stride, padding, out, True)


# ---------------------------------------------------------------------------
# elementwise, bias, softmax, loss
# ---------------------------------------------------------------------------

@_jit
def _k_relu_fwd(X, Y, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        v = X[i]
        Y[i] = float32(0.0) if v <= float32(0.0) else v    # as numpy.maximum(x, 0): NaN stays, -0.0 -> 0.0
        i += stride


@_jit
def _k_relu_bwd(DY, Y, DX, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        DX[i] = DY[i] * (float32(1.0) if Y[i] > float32(0.0) else float32(0.0))    # the reference's dy * (y > 0)
        i += stride


@_jit
def _k_add(A, B, C, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        C[i] = A[i] + B[i]
        i += stride


@_jit
def _k_copy(D, S, n):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        D[i] = S[i]
        i += stride


@_jit
def _k_increment(step):
    if cuda.grid(1) == 0:
        step[0] += 1


def relu_forward(x, *, out=None):
    _check("x", x)
    y = _out("out", out, x.shape)
    _launch(_k_relu_fwd, _blocks(x.size), THREADS, _flat(x), _flat(y), x.size)
    return y


def relu_backward(dy, y, *, out=None):
    _check("dy", dy)
    _check("y", y, shape=dy.shape)
    dx = _out("out", out, dy.shape)
    _launch(_k_relu_bwd, _blocks(dy.size), THREADS, _flat(dy), _flat(y), _flat(dx), dy.size)
    return dx


def add(a, b, *, out=None):
    _check("a", a)
    _check("b", b, shape=a.shape)
    c = _out("out", out, a.shape)
    _launch(_k_add, _blocks(a.size), THREADS, _flat(a), _flat(b), _flat(c), a.size)
    return c


def copy(dst, src):
    """dst[...] = src (in place); same shape and dtype (any dtype: e.g. int32 label buffers)."""
    _check("dst", dst, dtype=getattr(dst, "dtype", np.float32))
    _check("src", src, dtype=dst.dtype, shape=dst.shape)
    _launch(_k_copy, _blocks(dst.size), THREADS, _flat(dst), _flat(src), dst.size)


@_jit
def _k_copy_channels(D, S, rows, width, dst_C, dst_start, src_C, src_start):
    """Block (32, y): lanes walk a row's channels, rows grid-stride over y."""
    r = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    while r < rows:
        c = cuda.threadIdx.x
        while c < width:
            D[r * dst_C + dst_start + c] = S[r * src_C + src_start + c]
            c += cuda.blockDim.x
        r += cuda.blockDim.y * cuda.gridDim.y


def copy_channels(dst, src, dst_start, src_start, width):
    """dst[..., dst_start:dst_start+width] = src[..., src_start:src_start+width] (in place, float32)."""
    _check("dst", dst)
    _check("src", src)
    reference.channel_range(dst.shape, src.shape, dst_start, src_start, width)
    rows = dst.size // dst.shape[-1]
    rows_per_block = THREADS // 32
    grid = (1, max(1, min(_MAX_BLOCKS, -(-rows // rows_per_block))))
    _launch(_k_copy_channels, grid, (32, rows_per_block), _flat(dst), _flat(src), rows, int(width),
            dst.shape[-1], int(dst_start), src.shape[-1], int(src_start))


@_jit
def _k_gather_rows(D, S, rows, n, row_len, src_rows):
    """Block (32, y): lanes walk a row's words, the picked rows grid-stride over y."""
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    while i < n:
        r = rows[i]
        c = cuda.threadIdx.x
        while c < row_len:
            if r >= 0 and r < src_rows:
                D[i * row_len + c] = S[r * row_len + c]
            else:   # never read past the source: the row becomes all-ones bits (NaN / -1)
                D[i * row_len + c] = -1
            c += cuda.blockDim.x
        i += cuda.blockDim.y * cuda.gridDim.y


def gather_rows(dst, src, rows):
    """dst[i] = src[rows[i]] (in place; float32 or int32 rows, rows int32)."""
    _check("dst", dst, dtype=getattr(dst, "dtype", np.float32))
    _check("src", src, dtype=dst.dtype)
    _check("rows", rows, dtype=np.int32, ndim=1)
    reference.gather_shapes(dst, src, rows)
    n = dst.shape[0]
    rows_per_block = THREADS // 32
    grid = (1, max(1, min(_MAX_BLOCKS, -(-n // rows_per_block))))
    words = dst.view(np.int32) if dst.dtype == np.float32 else dst   # bit-exact moves, NaN payloads too
    source = src.view(np.int32) if src.dtype == np.float32 else src
    _launch(_k_gather_rows, grid, (32, rows_per_block), _flat(words), _flat(source), _flat(rows), n,
            dst.size // n, src.shape[0])


def increment(step):
    """step[0] += 1 on the device (int32 array of shape (1,))."""
    _check("step", step, dtype=np.int32, shape=(1,))
    _launch(_k_increment, 1, 1, step)


BIAS_TX, BIAS_TY = 32, 8


@_jit
def _k_bias_partial(DY, part, rows, K, rows_per_split):
    """part[z, col] = sum of DY[r, col] over this split's rows (block: 32 columns x 8 row lanes)."""
    sm = cuda.shared.array((BIAS_TY, BIAS_TX), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    col = cuda.blockIdx.x * BIAS_TX + tx
    z = cuda.blockIdx.y
    r0 = z * rows_per_split
    r1 = min(rows, r0 + rows_per_split)
    acc = float32(0.0)
    if col < K:
        r = r0 + ty
        while r < r1:
            acc += DY[r * K + col]
            r += BIAS_TY
    sm[ty, tx] = acc
    cuda.syncthreads()
    if ty == 0 and col < K:
        v = float32(0.0)
        for t in range(BIAS_TY):
            v += sm[t, tx]
        part[z * K + col] = v


@_jit
def _k_bias_final(part, out, K, splits):
    col = cuda.grid(1)
    while col < K:
        v = float32(0.0)
        for z in range(splits):
            v += part[z * K + col]
        out[col] = v
        col += cuda.gridsize(1)


def bias_grad(dy, *, out=None):
    """Sum of dy over every axis but the last (two passes, no atomics: deterministic)."""
    _check("dy", dy)
    K = dy.shape[-1]
    rows = dy.size // K
    splits = max(1, min(256, rows // 256))
    rows_per_split = (rows + splits - 1) // splits
    splits = (rows + rows_per_split - 1) // rows_per_split
    out = _out("out", out, (K,), inputs=(("dy", dy),))
    part = _scratch(splits * K)
    _launch(_k_bias_partial, ((K + BIAS_TX - 1) // BIAS_TX, splits), (BIAS_TX, BIAS_TY),
            _flat(dy), part, rows, K, rows_per_split)
    _launch(_k_bias_final, _blocks(K), THREADS, part, out, K, splits)
    return out


ROW_THREADS = 64   # softmax kernels: one block of 64 threads per row


@_device
def _block_max_arg(sv, si, tid):
    """Tree reduction over ROW_THREADS (value, index) pairs: max value, lowest index on ties."""
    half = ROW_THREADS // 2
    while half > 0:
        if tid < half:
            v2 = sv[tid + half]
            i2 = si[tid + half]
            if v2 > sv[tid] or (v2 == sv[tid] and i2 < si[tid]):
                sv[tid] = v2
                si[tid] = i2
        cuda.syncthreads()
        half //= 2


@_device
def _block_sum(sv, tid):
    half = ROW_THREADS // 2
    while half > 0:
        if tid < half:
            sv[tid] += sv[tid + half]
        cuda.syncthreads()
        half //= 2


@_device
def _row_max(X, base, ncls, sv, si, tid):
    """(max, first argmax) of X[base : base + ncls], computed by the whole block."""
    best = -math.inf
    arg = ncls
    j = tid
    while j < ncls:
        v = X[base + j]
        if v > best or arg == ncls:
            best = v
            arg = j
        j += ROW_THREADS
    sv[tid] = best
    si[tid] = arg
    cuda.syncthreads()
    _block_max_arg(sv, si, tid)
    best = sv[0]
    arg = si[0]
    cuda.syncthreads()
    return best, arg


@_device
def _row_expsum(X, base, ncls, mx, sv, tid):
    acc = float32(0.0)
    j = tid
    while j < ncls:
        acc += math.exp(X[base + j] - mx)
        j += ROW_THREADS
    sv[tid] = acc
    cuda.syncthreads()
    _block_sum(sv, tid)
    total = sv[0]
    cuda.syncthreads()
    return total


@_jit
def _k_softmax(X, Y, ncls):
    sv = cuda.shared.array(ROW_THREADS, float32)
    si = cuda.shared.array(ROW_THREADS, int32)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    base = row * ncls
    mx, _ = _row_max(X, base, ncls, sv, si, tid)
    total = _row_expsum(X, base, ncls, mx, sv, tid)
    inv = float32(1.0) / total
    j = tid
    while j < ncls:
        Y[base + j] = math.exp(X[base + j] - mx) * inv
        j += ROW_THREADS


@_jit
def _k_xent_int(X, labels, D, totals, ncls, inv_n):
    """Rows of logits X with int class labels: D = (softmax - onehot)/N; totals += (loss, correct)."""
    sv = cuda.shared.array(ROW_THREADS, float32)
    si = cuda.shared.array(ROW_THREADS, int32)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    base = row * ncls
    label = labels[row]
    mx, arg = _row_max(X, base, ncls, sv, si, tid)
    total = _row_expsum(X, base, ncls, mx, sv, tid)
    inv = float32(1.0) / total
    j = tid
    while j < ncls:
        sm = math.exp(X[base + j] - mx) * inv
        if j == label:
            sm -= float32(1.0)
        D[base + j] = sm * inv_n
        j += ROW_THREADS
    if tid == 0:
        loss = math.log(float64(total)) - (float64(X[base + label]) - float64(mx))
        cuda.atomic.add(totals, 0, loss)
        if arg == label:
            cuda.atomic.add(totals, 1, float64(1.0))


@_jit
def _k_xent_onehot(X, Yt, D, totals, ncls, inv_n):
    """Rows of logits X with float (one-hot or soft) targets Yt.

    Row loss = logsumexp(z) - sum(y * z) = log(sum exp s) - sum(y * s) + max(z) * (1 - sum y)
    with s = z - max(z), as the reference computes it.
    """
    sv = cuda.shared.array(ROW_THREADS, float32)
    sy = cuda.shared.array(ROW_THREADS, float32)
    si = cuda.shared.array(ROW_THREADS, int32)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    base = row * ncls
    _, label = _row_max(Yt, base, ncls, sv, si, tid)
    mx, arg = _row_max(X, base, ncls, sv, si, tid)
    total = _row_expsum(X, base, ncls, mx, sv, tid)
    inv = float32(1.0) / total
    ys = float32(0.0)     # this thread's share of sum(y * s)
    ysum = float32(0.0)   # and of sum(y)
    j = tid
    while j < ncls:
        x = X[base + j]
        y = Yt[base + j]
        D[base + j] = (math.exp(x - mx) * inv - y) * inv_n
        ys += y * (x - mx)
        ysum += y
        j += ROW_THREADS
    sv[tid] = ys
    sy[tid] = ysum
    cuda.syncthreads()
    _block_sum(sv, tid)
    _block_sum(sy, tid)
    if tid == 0:
        loss = (math.log(float64(total)) - float64(sv[0])
                + float64(mx) * (1.0 - float64(sy[0])))
        cuda.atomic.add(totals, 0, loss)
        if arg == label:
            cuda.atomic.add(totals, 1, float64(1.0))


def softmax(x, *, out=None):
    """Row softmax of a 2-D array (one block per row)."""
    _check("x", x, ndim=2)
    y = _out("out", out, x.shape, inputs=(("x", x),))
    _launch(_k_softmax, x.shape[0], ROW_THREADS, _flat(x), _flat(y), x.shape[1])
    return y


def softmax_cross_entropy(logits, labels, totals, *, out=None):
    """-> dlogits = (softmax - onehot)/N; totals (float64 (2,)) += [sum of losses, correct]."""
    _check("logits", logits, ndim=2)
    _check("totals", totals, dtype=np.float64, shape=(2,))
    n, ncls = logits.shape
    if not isinstance(labels, np.ndarray if SIMULATOR else _cp.ndarray):
        _check("labels", labels)   # raises the TypeError naming labels
    d = _out("out", out, logits.shape, inputs=(("logits", logits), ("labels", labels)))
    inv_n = np.float32(1.0 / n)
    if labels.ndim == 1:
        _check("labels", labels, dtype=np.int32, shape=(n,))
        if SIMULATOR and (labels.min() < 0 or labels.max() >= ncls):
            raise ValueError(f"labels must lie in [0, {ncls}), got [{labels.min()}, {labels.max()}]")
        _launch(_k_xent_int, n, ROW_THREADS, _flat(logits), labels, _flat(d), totals, ncls, inv_n)
    else:
        _check("labels", labels, dtype=np.float32, shape=(n, ncls))
        _launch(_k_xent_onehot, n, ROW_THREADS, _flat(logits), _flat(labels), _flat(d), totals,
                ncls, inv_n)
    return d


# ---------------------------------------------------------------------------
# dropout: Philox 4x32-10, keyed by (seed, step, element index); no state in memory
# ---------------------------------------------------------------------------
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)


@_device
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox 4x32-10 of counter (c0..c3) and key (k0, k1); all uint64 holding 32-bit values."""
    for _ in range(10):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        hi0 = p0 >> SHIFT32
        lo0 = p0 & MASK32
        hi1 = p1 >> SHIFT32
        lo1 = p1 & MASK32
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


@_jit
def _k_dropout(X, Y, n, threshold, scale, k0, k1, step, start):
    """Y = X * keep * scale; one Philox call per 4 consecutive global elements (counter =
    (start + i) // 4, start the global index of X[0])."""
    g = cuda.grid(1)
    stride = cuda.gridsize(1)
    c2 = uint64(step[0]) & MASK32
    z = uint64(0)
    first = start // 4
    while g * 4 < start % 4 + n:
        gg = uint64(first + g)
        w0, w1, w2, w3 = _philox(gg & MASK32, gg >> SHIFT32, c2, z, k0, k1)
        i = (first + g) * 4 - start
        if 0 <= i < n:
            Y[i] = X[i] * scale if w0 >= threshold else float32(0.0)
        if 0 <= i + 1 < n:
            Y[i + 1] = X[i + 1] * scale if w1 >= threshold else float32(0.0)
        if 0 <= i + 2 < n:
            Y[i + 2] = X[i + 2] * scale if w2 >= threshold else float32(0.0)
        if 0 <= i + 3 < n:
            Y[i + 3] = X[i + 3] * scale if w3 >= threshold else float32(0.0)
        g += stride


def _dropout(argname, x, rate, seed, step, offset, out=None):
    _check(argname, x)
    start = reference.check_offset(offset) * (x.size // x.shape[0] if x.ndim and x.shape[0] else 0)
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    _check("step", step, dtype=np.int32, shape=(1,))
    seed = int(seed)
    threshold = np.uint64(min(math.floor(rate * 2.0 ** 32), 2 ** 32 - 1))
    scale = np.float32(1.0 / (1.0 - rate))
    k0 = np.uint64(seed & 0xFFFFFFFF)
    k1 = np.uint64((seed >> 32) & 0xFFFFFFFF)
    y = _out("out", out, x.shape)
    n = x.size
    _launch(_k_dropout, _blocks((start % 4 + n + 3) // 4), THREADS, _flat(x), _flat(y), n, threshold,
            scale, k0, k1, step, np.int64(start))
    return y


def dropout_forward(x, rate, seed, step, offset=0, *, out=None):
    """x * keep / (1 - rate), keep from Philox 4x32-10 (see fastcnn.backend.reference.dropout_forward)."""
    return _dropout("x", x, rate, seed, step, offset, out)


def dropout_backward(dy, rate, seed, step, offset=0, *, out=None):
    """dy * keep / (1 - rate): the same mask as the forward of the same (seed, step, offset)."""
    return _dropout("dy", dy, rate, seed, step, offset, out)


# ---------------------------------------------------------------------------
# crop: centre or random windows (Philox 4x32-10 per image), mirrored at random
# ---------------------------------------------------------------------------
CROP_STREAM = np.uint64(reference.CROP_STREAM)
HALF32 = np.uint64(2 ** 31)


@_device
def _crop_window(n, H, W, height, width, random, flip, k0, k1, step, first):
    """(top, left, mirrored) of image n (global index first + n): reference.crop_windows."""
    if random == 0:
        return (H - height) // 2, (W - width) // 2, False
    w0, w1, w2, _ = _philox(uint64(first + n), uint64(0), uint64(step[0]) & MASK32, CROP_STREAM, k0, k1)
    top = int64(w0 % uint64(H - height + 1))
    left = int64(w1 % uint64(W - width + 1))
    return top, left, flip != 0 and w2 >= HALF32


@_device
def _unravel_nhwc(e, H, W, C):
    """(n, h, w, c) of flat index e in an (N, H, W, C) array."""
    return e // (C * W * H), (e // (C * W)) % H, (e // C) % W, e % C


@_jit
def _k_crop_fwd(X, Y, g, random, flip, k0, k1, step, first):
    """Y (N, height, width, C) from X (N, H, W, C); g = (N, H, W, C, height, width); thread per element."""
    N, H, W, C, height, width = g
    e = cuda.grid(1)
    while e < N * height * width * C:
        n, i, j, c = _unravel_nhwc(e, height, width, C)
        top, left, mirrored = _crop_window(n, H, W, height, width, random, flip, k0, k1, step, first)
        Y[e] = X[((n * H + top + i) * W + left + (width - 1 - j if mirrored else j)) * C + c]
        e += cuda.gridsize(1)


@_jit
def _k_crop_bwd(DY, DX, g, random, flip, k0, k1, step, first):
    """DX (N, H, W, C): DY inside each image's window, zeros elsewhere; thread per DX element."""
    N, H, W, C, height, width = g
    e = cuda.grid(1)
    while e < N * H * W * C:
        n, h, w, c = _unravel_nhwc(e, H, W, C)
        top, left, mirrored = _crop_window(n, H, W, height, width, random, flip, k0, k1, step, first)
        i = h - top
        j = w - left
        v = float32(0.0)
        if 0 <= i < height and 0 <= j < width:
            jj = width - 1 - j if mirrored else j
            v = DY[((n * height + i) * width + jj) * C + c]
        DX[e] = v
        e += cuda.gridsize(1)


def _philox_key(seed):
    """(k0, k1): a seed in [0, 2**64) as Philox's two key words (uint64 holding 32 bits)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return np.uint64(int(seed) & 0xFFFFFFFF), np.uint64(int(seed) >> 32)


PCA_STREAM = np.uint64(reference.PCA_STREAM)
SCALE32 = 2.0 ** -32
TWO_PI = 2.0 * math.pi


@_device
def _standard_normals(w0, w1, w2, w3):
    """reference._standard_normals: three N(0, 1) draws from four words (Box-Muller, float64)."""
    r01 = math.sqrt(-2.0 * math.log((float64(w0) + 1.0) * SCALE32))
    r2 = math.sqrt(-2.0 * math.log((float64(w2) + 1.0) * SCALE32))
    t1 = TWO_PI * float64(w1) * SCALE32
    t3 = TWO_PI * float64(w3) * SCALE32
    return r01 * math.cos(t1), r01 * math.sin(t1), r2 * math.cos(t3)


@_jit
def _k_pca_noise(X, Y, g, b, k0, k1, step, first):
    """Y = X + image n's RGB offset (reference.pca_noise_offsets); g = (N, H, W); b the 3x3 basis
    row-major; thread per element."""
    N, H, W = g
    e = cuda.grid(1)
    while e < N * H * W * 3:
        n = e // (H * W * 3)
        c = e % 3
        w0, w1, w2, w3 = _philox(uint64(first + n), uint64(0), uint64(step[0]) & MASK32, PCA_STREAM, k0, k1)
        z0, z1, z2 = _standard_normals(w0, w1, w2, w3)
        Y[e] = X[e] + float32((b[3 * c] * z0 + b[3 * c + 1] * z1) + b[3 * c + 2] * z2)
        e += cuda.gridsize(1)


def pca_noise_forward(x, basis, seed, step, offset=0, *, out=None):
    """x + each image's RGB offset along the principal components (reference.pca_noise_offsets)."""
    _check("x", x, ndim=4)
    if x.shape[3] != 3:
        raise ValueError(f"colour noise needs RGB images (N, H, W, 3), got shape {tuple(x.shape)}")
    basis = np.asarray(basis, np.float64)
    if basis.shape != (3, 3):
        raise ValueError(f"basis must be 3x3 (RGB x components), got shape {basis.shape}")
    k0, k1 = _philox_key(seed)
    _check("step", step, dtype=np.int32, shape=(1,))
    y = _out("out", out, x.shape)
    N, H, W, _ = x.shape
    _launch(_k_pca_noise, _blocks(x.size), THREADS, _flat(x), _flat(y),
            tuple(np.int64(v) for v in (N, H, W)), tuple(np.float64(v) for v in basis.reshape(-1)), k0, k1, step,
            np.int64(reference.check_offset(offset)))
    return y


def _crop(kernel, name, a, images, crop_hw, out_shape, random, flip, seed, step, offset, out):
    N, H, W, C = images
    height, width = crop_hw
    reference.check_crop_size((H, W), (height, width))
    k0, k1 = _philox_key(seed)
    _check("step", step, dtype=np.int32, shape=(1,))
    y = _out("out", out, out_shape, inputs=((name, a),))
    geometry = tuple(np.int64(v) for v in (N, H, W, C, height, width))
    _launch(kernel, _blocks(y.size), THREADS, _flat(a), _flat(y), geometry, np.int64(bool(random)),
            np.int64(bool(flip)), k0, k1, step, np.int64(reference.check_offset(offset)))
    return y


def crop_forward(x, height, width, random, flip, seed, step, offset=0, *, out=None):
    """Each image's window (reference.crop_windows), mirrored where drawn so."""
    _check("x", x, ndim=4)
    N, _, _, C = x.shape
    return _crop(_k_crop_fwd, "x", x, x.shape, (height, width), (N, height, width, C),
                 random, flip, seed, step, offset, out)


def crop_backward(dy, x_shape, random, flip, seed, step, offset=0, *, out=None):
    """dy put back into each image's window of a zero (N, H, W, C) gradient."""
    _check("dy", dy, ndim=4)
    x_shape = reference._shape4(x_shape, "x_shape")
    if (dy.shape[0], dy.shape[3]) != (x_shape[0], x_shape[3]):
        raise ValueError(f"dy {tuple(dy.shape)} does not match x_shape {x_shape} (batch and channels)")
    return _crop(_k_crop_bwd, "dy", dy, x_shape, dy.shape[1:3], x_shape, random, flip, seed, step, offset, out)


# ---------------------------------------------------------------------------
# local response normalisation across channels
# ---------------------------------------------------------------------------
# window of channel c: [c - size//2, c + size//2] (size odd), clipped to [0, C)

@_jit
def _k_lrn_fwd(X, Y, SC, total, C, size, alpha, beta, k):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    half = size // 2
    while i < total:
        c = i % C
        base = i - c
        lo = max(0, c - half)
        hi = min(C - 1, c - half + size - 1)
        acc = float32(0.0)
        for j in range(lo, hi + 1):
            v = X[base + j]
            acc += v * v
        s = k + alpha * acc
        SC[i] = s
        Y[i] = X[i] * math.pow(s, -beta)
        i += stride


@_jit
def _k_lrn_bwd(DY, X, Y, SC, DX, total, C, size, coef, beta):
    # dx_c = dy_c * s_c^-beta + coef * x_c * sum_{j : c in window(j)} dy_j y_j / s_j,
    # coef = -2 alpha beta
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    half = size // 2
    while i < total:
        c = i % C
        base = i - c
        lo = max(0, c + half - size + 1)
        hi = min(C - 1, c + half)
        acc = float32(0.0)
        for j in range(lo, hi + 1):
            acc += DY[base + j] * Y[base + j] / SC[base + j]
        DX[i] = acc * X[i] * coef + DY[i] * math.pow(SC[i], -beta)
        i += stride


def _lrn_args(size, alpha, beta, k):
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"LRN size must be a positive odd int (a window centred on each channel), got {size}")
    return size, np.float32(alpha), np.float32(beta), np.float32(k)


def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0, *, out=None):
    """-> (y, scale): scale = k + alpha * sum of x^2 over ``size`` channels; y = x * scale**-beta."""
    _check("x", x)
    size, alpha, beta, k = _lrn_args(size, alpha, beta, k)
    y_out, s_out = _pair_out(out, "(y, scale)")
    y = _out("out[0] (y)", y_out, x.shape, inputs=(("x", x),))
    sc = _out("out[1] (scale)", s_out, x.shape, inputs=(("x", x), ("out[0] (y)", y)))
    _launch(_k_lrn_fwd, _blocks(x.size), THREADS, _flat(x), _flat(y), _flat(sc), x.size,
            x.shape[-1], size, alpha, beta, k)
    return y, sc


def lrn_backward(dy, x, y, scale, size=5, alpha=1e-4, beta=0.75, k=2.0, *, out=None):
    _check("dy", dy)
    for argname, a in (("x", x), ("y", y), ("scale", scale)):
        _check(argname, a, shape=dy.shape)
    size, alpha, beta, k = _lrn_args(size, alpha, beta, k)
    dx = _out("out", out, dy.shape, inputs=(("dy", dy), ("x", x), ("y", y), ("scale", scale)))
    _launch(_k_lrn_bwd, _blocks(dy.size), THREADS, _flat(dy), _flat(x), _flat(y), _flat(scale),
            _flat(dx), dy.size, dy.shape[-1], size, np.float32(-2.0 * float(alpha) * float(beta)), beta)
    return dx


# ---------------------------------------------------------------------------
# optimisers over flat buffers
# ---------------------------------------------------------------------------

@_jit
def _k_sgd(P, G, V, n, lr, momentum, mode, wd):
    # mode 0: plain; 1: momentum; 2: Nesterov momentum (Keras's rules); wd: weight decay
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        g = G[i]
        if wd != 0:
            g = g + wd * P[i]
        if mode == 0:
            P[i] -= lr * g
        else:
            v = momentum * V[i] - lr * g
            V[i] = v
            if mode == 1:
                P[i] += v
            else:
                P[i] += momentum * v - lr * g
        i += stride


@_jit
def _k_adam(P, G, M, V, n, step, lr, beta1, beta2, eps, wd, lr_f):
    # lr, beta1, beta2 arrive as float64 so that lr_t and 1 - beta are rounded once, as the reference does;
    # wd != 0: AdamW's decoupled decay p -= (p * wd) * lr first (wd, lr_f float32)
    t = float64(step[0] + 1)
    lr_t = float32(lr * math.sqrt(1.0 - math.pow(beta2, t)) / (1.0 - math.pow(beta1, t)))
    b1 = float32(beta1)
    b2 = float32(beta2)
    c1 = float32(1.0 - beta1)
    c2 = float32(1.0 - beta2)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        if wd != 0:
            P[i] -= P[i] * wd * lr_f
        g = G[i]
        m = b1 * M[i] + c1 * g
        v = b2 * V[i] + c2 * g * g
        M[i] = m
        V[i] = v
        P[i] -= lr_t * m / (math.sqrt(v) + eps)
        i += stride


@_jit
def _k_rmsprop(P, G, V, MOM, A, n, lr, rho, one_minus_rho, momentum, eps, use_momentum, centered):
    # Keras's RMSprop; MOM and A are read only with their flag set (else any array)
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        g = G[i]
        v = rho * V[i] + one_minus_rho * (g * g)
        V[i] = v
        if centered:
            a = rho * A[i] + one_minus_rho * g
            A[i] = a
            d = v - a * a + eps
        else:
            d = v + eps
        inc = lr * g / math.sqrt(d)
        if use_momentum:
            m = momentum * MOM[i] + inc
            MOM[i] = m
            P[i] -= m
        else:
            P[i] -= inc
        i += stride


def sgd_update(p, g, v, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """In place: v = momentum*v - lr*g; p += v (Nesterov: p += momentum*v - lr*g); v None if momentum == 0;
    g + weight_decay * p in place of g when weight_decay != 0."""
    _check("p", p, ndim=1)
    _check("g", g, shape=p.shape)
    momentum = float(momentum)
    if momentum == 0.0:
        mode = 0
        v = _no_bias()
    else:
        if v is None:
            raise ValueError("v (the velocity buffer) is required when momentum != 0")
        _check("v", v, shape=p.shape)
        mode = 2 if nesterov else 1
    _launch(_k_sgd, _blocks(p.size, cap=4096), THREADS, p, g, v, p.size, np.float32(lr),
            np.float32(momentum), mode, np.float32(weight_decay))


def adam_update(p, g, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=0.0):
    """In place, Keras's Adam with t = step[0] + 1 (step itself is not changed); weight_decay != 0:
    AdamW's p -= p * weight_decay * lr first."""
    _check("p", p, ndim=1)
    for argname, a in (("g", g), ("m", m), ("v", v)):
        _check(argname, a, shape=p.shape)
    _check("step", step, dtype=np.int32, shape=(1,))
    _launch(_k_adam, _blocks(p.size, cap=4096), THREADS, p, g, m, v, p.size, step,
            float(lr), float(beta1), float(beta2), np.float32(eps), np.float32(weight_decay), np.float32(lr))


def rmsprop_update(p, g, v, mom, avg, lr=1e-3, rho=0.9, momentum=0.0, eps=1e-7):
    """In place, Keras's RMSprop; mom None when momentum == 0, avg None unless centered."""
    _check("p", p, ndim=1)
    for argname, a in (("g", g), ("v", v), ("mom", mom), ("avg", avg)):
        if a is not None:
            _check(argname, a, shape=p.shape)
    if (mom is None) != (float(momentum) == 0.0):
        raise ValueError(f"mom (the momentum buffer) is required exactly when momentum != 0 (got {momentum})")
    _launch(_k_rmsprop, _blocks(p.size, cap=4096), THREADS, p, g, v, _no_bias() if mom is None else mom,
            _no_bias() if avg is None else avg, p.size, np.float32(lr), np.float32(rho), np.float32(1.0 - float(rho)),
            np.float32(momentum), np.float32(eps), int(mom is not None), int(avg is not None))


# ---------------------------------------------------------------------------
# variants for the GPU backend, and the PTX signatures of every kernel
# ---------------------------------------------------------------------------

VARIANTS = {
    # op: (variant name, note)
    "matmul": ("numba_tiled", "Numba: shared-memory tiles, 4x4/8x8 register blocking (large: generated 128x128 kernel), split-K when the output is small"),
    "dense_forward": ("numba_tiled", "Numba: the tiled GEMM with bias + ReLU in the epilogue"),
    "conv2d_forward": ("numba_implicit_gemm", "Numba: implicit GEMM, A gathered from NHWC input into shared memory"),
    "conv2d_backward_data": ("numba_implicit_gemm", "Numba: implicit GEMM over the taps that land on an output"),
    "conv2d_backward_weights": ("numba_implicit_gemm", "Numba: implicit GEMM, split along N*P*Q (deterministic partial sums)"),
    "maxpool_forward": ("numba_direct", "Numba: one thread per output, uint8 argmax"),
    "maxpool_backward": ("numba_gather", "Numba: one thread per input gathers from the covering windows (no atomics)"),
    "bias_grad": ("numba_two_pass", "Numba: column partial sums then a final sum (deterministic)"),
    "relu_forward": ("numba", "Numba: grid-stride elementwise"),
    "relu_backward": ("numba", "Numba: grid-stride elementwise"),
    "softmax": ("numba_block_row", "Numba: one block per row, shared-memory reductions"),
    "softmax_cross_entropy": ("numba_block_row", "Numba: one block per row; totals by float64 atomics"),
    "dropout_forward": ("numba_philox", "Numba: Philox 4x32-10 in-kernel, one call per 4 elements"),
    "dropout_backward": ("numba_philox", "Numba: same mask as the forward"),
    "crop_forward": ("numba", "Numba: thread per output element, window from Philox 4x32-10 per element"),
    "crop_backward": ("numba", "Numba: thread per dx element: dy inside the window, else 0"),
    "pca_noise_forward": ("numba", "Numba: thread per element, the image's offset from Philox + Box-Muller"),
    "lrn_forward": ("numba_direct", "Numba: one thread per element, loop over the channel window"),
    "lrn_backward": ("numba_direct", "Numba: one thread per element, loop over the windows that cover it"),
    "sgd_update": ("numba", "Numba: one launch over a flat buffer"),
    "adam_update": ("numba", "Numba: one launch over a flat buffer (AdamW's decay fused)"),
    "rmsprop_update": ("numba", "Numba: one launch over a flat buffer"),
    "increment": ("numba", "Numba: one thread"),
    "add": ("numba", "Numba: grid-stride elementwise"),
    "copy": ("numba", "Numba: grid-stride elementwise"),
    "copy_channels": ("numba", "Numba: lanes over a row's channels, rows grid-stride"),
    "gather_rows": ("numba", "Numba: lanes over a row's words, picked rows grid-stride"),
}


# further variants of an op: (op, variant name, function, note)
EXTRA_VARIANTS = [
    ("maxpool_forward", "numba_vec", "maxpool_forward_vec",
     "Numba: 4 consecutive channels a thread (C % 4 == 0, else numba_direct's kernel), 2-D grid"),
    ("maxpool_forward", "numba_lanes", "maxpool_forward_lanes",
     "Numba: a warp reads 32 consecutive channels per tap; 3-D grid, no division per output"),
    ("maxpool_backward", "numba_vec", "maxpool_backward_vec",
     "Numba: gather, 4 channels a thread (C % 4 == 0, else numba_gather's kernel), 2-D grid"),
]


def _register() -> None:
    if cuda is None:
        return   # no numba: no numba variants (the registry copes with their absence)
    # The CUDA C variants register first when they can, so that this module never
    # becomes a default by being imported before fastcnn.backend.cuda.
    try:
        import importlib
        importlib.import_module("fastcnn.backend.cuda")
    except Exception:
        pass
    module = globals()
    for op, (variant, note) in VARIANTS.items():
        registry.register(op, variant, module[op], source="numba", note=note)
    for op, variant, function, note in EXTRA_VARIANTS:
        registry.register(op, variant, module[function], source="numba", note=note)


_register()


def ptx_kernels():
    """[(label, python function, explicit signature[, compile options])] of every kernel.

    For compile_ptx; the optional fourth item holds the kernel's cuda.jit options
    that change its code (launch_bounds).

    The signatures are those the wrappers above launch with (1-D C-contiguous
    arrays, int64 sizes and geometry tuples, float32 scalars).
    """
    if types is None:
        return []
    f32 = types.float32[::1]
    f64 = types.float64[::1]
    i32 = types.int32[::1]
    u8 = types.uint8[::1]
    i64 = types.int64
    f = types.float32
    u64 = types.uint64
    tup6 = types.UniTuple(types.int64, 6)
    tup12 = types.UniTuple(types.int64, 12)
    tup16 = types.UniTuple(types.int64, NP)
    out = []
    for (kind, cfg), k in _GEMM_KERNELS.items():
        out.append((f"gemm_{kind}_{cfg}", k.py_func, (f32, f32, f32, f32, i64, i64, i64, i64, tup16)))
    for (ta, tb), k in _BIG_KERNELS.items():
        out.append((f"gemm_big_128x128_t{ta}{tb}", k.py_func,
                    (f32, f32, f32, f32, i64, i64, i64, i64, i64, i64),
                    {"launch_bounds": BIG_LAUNCH_BOUNDS}))
    out += [
        ("sum_splits", _k_sum_splits.py_func, (f32, f32, f32, i64, i64, i64, tup16)),
        ("maxpool_fwd", _k_maxpool_fwd.py_func, (f32, f32, u8, i64, tup12)),
        ("maxpool_bwd", _k_maxpool_bwd.py_func, (f32, u8, f32, i64, tup12)),
        ("maxpool_fwd_vec", _k_maxpool_fwd_vec.py_func, (f32, f32, u8, tup12)),
        ("maxpool_fwd_lanes", _k_maxpool_fwd_lanes.py_func, (f32, f32, u8, tup12)),
    ] + [
        (f"maxpool_fwd_lanes_{ph}x{pw}", k.py_func, (f32, f32, u8, tup12))
        for (ph, pw), k in _K_MAXPOOL_FWD_LANES_FIXED.items()
    ] + [
        ("maxpool_bwd_vec", _k_maxpool_bwd_vec.py_func, (f32, u8, f32, tup12)),
        ("relu_fwd", _k_relu_fwd.py_func, (f32, f32, i64)),
        ("relu_bwd", _k_relu_bwd.py_func, (f32, f32, f32, i64)),
        ("add", _k_add.py_func, (f32, f32, f32, i64)),
        ("copy", _k_copy.py_func, (f32, f32, i64)),
        ("copy_channels", _k_copy_channels.py_func, (f32, f32, i64, i64, i64, i64, i64, i64)),
        ("gather_rows", _k_gather_rows.py_func, (i32, i32, i32, i64, i64, i64)),
        ("increment", _k_increment.py_func, (i32,)),
        ("bias_partial", _k_bias_partial.py_func, (f32, f32, i64, i64, i64)),
        ("bias_final", _k_bias_final.py_func, (f32, f32, i64, i64)),
        ("softmax", _k_softmax.py_func, (f32, f32, i64)),
        ("xent_int", _k_xent_int.py_func, (f32, i32, f32, f64, i64, f)),
        ("xent_onehot", _k_xent_onehot.py_func, (f32, f32, f32, f64, i64, f)),
        ("dropout", _k_dropout.py_func, (f32, f32, i64, u64, f, u64, u64, i32, i64)),
        ("crop_fwd", _k_crop_fwd.py_func, (f32, f32, tup6, i64, i64, u64, u64, i32, i64)),
        ("crop_bwd", _k_crop_bwd.py_func, (f32, f32, tup6, i64, i64, u64, u64, i32, i64)),
        ("pca_noise", _k_pca_noise.py_func, (f32, f32, types.UniTuple(types.int64, 3),
                                             types.UniTuple(types.float64, 9), u64, u64, i32, i64)),
        ("lrn_fwd", _k_lrn_fwd.py_func, (f32, f32, f32, i64, i64, i64, f, f, f)),
        ("lrn_bwd", _k_lrn_bwd.py_func, (f32, f32, f32, f32, f32, i64, i64, i64, f, f)),
        ("sgd", _k_sgd.py_func, (f32, f32, f32, i64, f, f, i64, f)),
        ("adam", _k_adam.py_func, (f32, f32, f32, f32, i64, i32, types.float64, types.float64,
                                   types.float64, f, f, f)),
        ("rmsprop", _k_rmsprop.py_func, (f32, f32, f32, f32, f32, i64, f, f, f, f, f, i64, i64)),
    ]
    return out


def compile_ptx_all(cc=(9, 0)):
    """{label: PTX text} for every kernel, compiled for compute capability ``cc``.

    Needs numba-cuda's NVVM, not a GPU; it does not work under the simulator.
    """
    if SIMULATOR:
        raise RuntimeError("compile_ptx_all needs NUMBA_ENABLE_CUDASIM unset (the simulator has no compiler)")
    if cuda is None:
        raise RuntimeError(_NUMBA_ERROR)
    # compile_ptx itself needs no GPU, but a kernel that calls a device function
    # (cuda.jit(device=True)) makes numba-cuda 0.30 compile that function for
    # get_current_device().compute_capability, which needs a driver.  Without a
    # GPU, answer that question with ``cc`` for the duration of this call.
    from numba.cuda import dispatcher as _dispatcher
    original = _dispatcher.get_current_device
    if not cuda.is_available():
        class _Offline:
            compute_capability = tuple(cc)
        _dispatcher.get_current_device = lambda: _Offline
    try:
        return {label: cuda.compile_ptx(fn, sig, cc=cc, **(opts[0] if opts else {}))[0]
                for label, fn, sig, *opts in ptx_kernels()}
    finally:
        _dispatcher.get_current_device = original
