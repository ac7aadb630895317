"""Launch helpers of the 'numba' backend: numba import, device arrays, checks, streams, launches.

Every other module of this package imports from here, so ``_numba_compat``
runs before numba.cuda is imported (see its docstring).  The PTX helpers at the
end build the signature types each kernel module lists beside its kernels
(``ptx_kernels()`` there) and compile them offline.
"""
from __future__ import annotations

import sys

import numpy as np

from ... import _numba_compat  # must precede numba.cuda: see its docstring (NumPy 2.5)
from ...dtypes import bfloat16
from .. import checks

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
        return np.ascontiguousarray(checks.to_host(a), dtype=dtype)
    return _cp.ascontiguousarray(_cp.asarray(a, dtype=dtype))


def to_host(a):
    return checks.to_host(a)


def synchronize() -> None:
    if not SIMULATOR and _cp is not None:
        _cp.cuda.get_current_stream().synchronize()


def _empty(shape, dtype=np.float32):
    return np.empty(shape, dtype) if SIMULATOR else _cp.empty(shape, dtype)


def _array_type():
    return np.ndarray if SIMULATOR else (_cp.ndarray if _cp is not None else None)


_ARRAY_TYPE = _array_type()
_WHERE = "a NumPy array (CUDA simulator)" if SIMULATOR else "a CuPy array on the GPU"


FLOAT32_ONLY = "the numba backend computes in float32 only; mixed_bfloat16 needs the cuda or reference backend"


def _check(argname, a, dtype=np.float32, ndim=None, shape=None):
    """Refuse, before any launch, an argument the kernels would read wrongly.

    Runs once per array per call (the LeNet-5 step makes ~40 calls), so it sticks
    to cheap attribute reads: no Device() objects, no __array_interface__ dicts.
    """
    if _ARRAY_TYPE is None or not isinstance(a, _ARRAY_TYPE):
        raise TypeError(f"{argname} must be {_WHERE}, got {type(a).__name__}; "
                        "convert it with fastcnn.backend.get('numba').asarray(...)")
    if a.dtype != dtype:
        if a.dtype == bfloat16:
            raise TypeError(f"{argname} is bfloat16: {FLOAT32_ONLY}")
        raise TypeError(f"{argname} must be {np.dtype(dtype).name}, got {a.dtype.name}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{argname} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if shape is not None and a.shape != shape:
        checks.expect_shape(argname, a.shape, shape)
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


def _plain(a) -> bool:
    """An int, a str, or a tuple/list of ints: a cache key equal only to itself (True == 1 and
    1.0 == 1, so a refused stride of True or 1.0 would otherwise hit a valid call's entry)."""
    t = type(a)
    return t is int or t is str or ((t is tuple or t is list) and all(type(e) is int for e in a))


def _memo(fn):
    """Cache a geometry function's (validated) result by its arguments, when they are plain
    ints, strs and tuples or lists of ints (others just run the function); a call that raises
    caches nothing.  Shapes and hyper-parameters repeat every step, so a step reads the cache.
    """
    cache: dict = {}

    def wrapper(*args):
        if not all(_plain(a) for a in args):
            return fn(*args)
        key = tuple(tuple(a) if type(a) is list else a for a in args)
        hit = cache.get(key)
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
# PTX signatures and the offline compile
# ---------------------------------------------------------------------------

def _ptx_types():
    """(f32, f64, i32, u8, i64, f, u64): the argument types of the kernel signatures.

    The signatures are those the wrappers launch with (1-D C-contiguous arrays,
    int64 sizes and geometry tuples, float32 scalars).
    """
    return (types.float32[::1], types.float64[::1], types.int32[::1], types.uint8[::1],
            types.int64, types.float32, types.uint64)


def _compile_ptx(kernels, cc=(9, 0)):
    """{label: PTX text} for ``kernels`` (ptx_kernels() items), compiled for compute capability ``cc``.

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
                for label, fn, sig, *opts in kernels}
    finally:
        _dispatcher.get_current_device = original
