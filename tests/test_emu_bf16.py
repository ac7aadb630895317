"""The emulator's bfloat16 (tests/cuda_emu.py's shim, what kernels/bf16.cuh leaves to it) is the
GPU's: bit for bit against cuda_bf16.h itself compiled for the host (its host code is the rule
the GPU's cvt.rn.bf16.f32 follows; skipped where the CUDA headers are absent) and against
ml_dtypes (every non-NaN pattern; a NaN becomes the canonical 0x7FFF where ml_dtypes keeps
the payload).  Patterns: every one of the 2^16 bfloat16 values widened, and float32 patterns
hand-picked (ties to even both ways, just past a tie, the largest float32 and the
overflow boundary, infinities, NaNs of both signs, subnormals, signed zeros) plus random
ones, with random low halves and with exact ties.

    pytest tests/test_emu_bf16.py
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest

import cuda_emu
from fastcnn import _paths, dtypes
from fastcnn.backend.cuda import _launch

SOURCE = r"""
#include "common.cuh"
#include "bf16.cuh"
extern "C" __global__ void narrow(const float* x, __nv_bfloat16* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}
extern "C" __global__ void widen(const __nv_bfloat16* x, float* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}
// pairs, and the templates' helpers: y2 = bf16 pairs of x, z = their widening, w = fc_from_float<float>
extern "C" __global__ void pairs(const float* x, __nv_bfloat162* y2, float* z, float* w, long long pairs) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < pairs; i += (long long)gridDim.x * blockDim.x) {
        y2[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
        const float2 f = __bfloat1622float2(y2[i]);
        z[2 * i] = f.x;
        z[2 * i + 1] = fc_to_float(fc_from_float<__nv_bfloat16>(x[2 * i + 1])) - f.y;  // 0: the same rounding
        w[2 * i] = fc_from_float<float>(x[2 * i]);
        w[2 * i + 1] = __bfloat162float(__ushort_as_bfloat16(__bfloat16_as_ushort(y2[i].y)));
    }
}
"""

HOST_REFERENCE = r"""
#include <cuda_bf16.h>
extern "C" void narrow(const float* x, unsigned short* y, long long n) {
    for (long long i = 0; i < n; ++i) y[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}
"""


def _emulator():
    """SOURCE with kernels/common.cuh and bf16.cuh pasted in, as _launch.kernel_source pastes them."""
    source = _launch._INCLUDE.sub(lambda m: (_paths.KERNEL_DIR / m.group(1)).read_text(), SOURCE)
    return cuda_emu.load_source("bf16_test.cu", source)


def _patterns():
    """float32 bit patterns: hand-picked, then random (any, with a tie below, near the tie)."""
    picked = [0x3F808000, 0x3F818000, 0xBF808000, 0x3F808001, 0x3F807FFF,   # ties even/odd, -, past, below
              0x7F7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0xFF7F8000,               # max float32, below/at overflow tie
              0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,   # infinities, NaNs (quiet, signalling)
              0x7FBFFFFF, 0xFFFFFFFF, 0x00000001, 0x00008000, 0x00018000,   # NaN, NaN, subnormals, subnormal ties
              0x007FFFFF, 0x807F8000, 0x00000000, 0x80000000, 0x00800000]   # largest subnormal, -, zeros, min normal
    rng = np.random.default_rng(16)
    random = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    ties = (random & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    near = ties ^ rng.integers(0, 4, random.size, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([np.array(picked, np.uint32), random, ties, near])


def _ml_dtypes_bits(bits):
    """ml_dtypes' rounding, with a NaN as the GPU gives it (0x7FFF)."""
    x = bits.view(np.float32)
    with np.errstate(invalid="ignore"):   # NaN patterns
        out = x.astype(dtypes.bfloat16).view(np.uint16).copy()
    out[np.isnan(x)] = 0x7FFF
    return out


def test_narrowing_rounds_to_nearest_even_like_ml_dtypes():
    emu = _emulator()
    bits = _patterns()
    y = np.zeros(bits.size, dtypes.bfloat16)
    emu.function("narrow")((64,), (256,), (bits.view(np.float32), y, np.int64(bits.size)))
    got, want = y.view(np.uint16), _ml_dtypes_bits(bits)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(hex(bits[i]), hex(got[i]), hex(want[i])) for i in bad[:10]]
    # the cases by name: a tie to even goes down from an even value and up from an odd one
    assert got[:5].tolist() == [0x3F80, 0x3F82, 0xBF80, 0x3F81, 0x3F80]
    assert got[5:9].tolist() == [0x7F80, 0x7F7F, 0x7F80, 0xFF80]             # overflow to inf at the tie
    assert got[11:16].tolist() == [0x7FFF] * 5                               # any NaN: canonical
    assert got[16:19].tolist() == [0x0000, 0x0000, 0x0002]                   # subnormal ties to even


def test_widening_is_exact_for_every_bfloat16():
    emu = _emulator()
    every = np.arange(2**16, dtype=np.uint16).view(dtypes.bfloat16)
    y = np.zeros(every.size, np.float32)
    emu.function("widen")((16,), (256,), (every, y, np.int64(every.size)))
    assert np.array_equal(y.view(np.uint32), every.view(np.uint16).astype(np.uint32) << 16)


def test_pairs_and_template_helpers():
    emu = _emulator()
    x = _patterns()[:20_000].view(np.float32)
    n = x.size // 2
    y2 = np.zeros(2 * n, dtypes.bfloat16)
    z, w = np.full(2 * n, -1.0, np.float32), np.full(2 * n, -1.0, np.float32)
    assert emu.signature("pairs")[1] == "*any"            # a struct pointer: any array
    emu.function("pairs")((8,), (128,), (x, y2, z, w, np.int64(n)))
    assert np.array_equal(y2.view(np.uint16), _ml_dtypes_bits(x.view(np.uint32)))
    widened = y2.view(np.uint16).astype(np.uint32) << 16
    assert np.array_equal(z[0::2].view(np.uint32), widened[0::2])
    finite = np.isfinite(y2[1::2].astype(np.float32))
    assert np.all(z[1::2][finite] == 0)
    assert np.array_equal(w[0::2].view(np.uint32), x[0::2].view(np.uint32))
    assert np.array_equal(w[1::2].view(np.uint32), widened[1::2])
    assert emu.signature("narrow") == ["*float32", "*bfloat16", "int64"]
    with pytest.raises(AssertionError, match="array of float32"):
        emu.function("widen")((1,), (32,), (np.zeros(4, np.float32), np.zeros(4, np.float32), np.int64(4)))


def _cuda_include():
    nvcc = shutil.which("nvcc")
    for root in filter(None, (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                              nvcc and os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda")):
        if os.path.exists(os.path.join(root, "include", "cuda_bf16.h")):
            return os.path.join(root, "include")
    return None


def test_the_shim_is_cuda_bf16_h(tmp_path):
    """cuda_bf16.h compiled for the host gives the emulator's bits on every pattern."""
    include, cxx = _cuda_include(), shutil.which("g++")
    if include is None or cxx is None:
        pytest.skip("needs g++ and the CUDA toolkit's cuda_bf16.h")
    src = tmp_path / "host_bf16.cpp"
    src.write_text(HOST_REFERENCE)
    lib = tmp_path / "host_bf16.so"
    proc = subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{include}", str(src), "-o", str(lib)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    host = ctypes.CDLL(str(lib))
    bits = _patterns()
    want = np.zeros(bits.size, np.uint16)
    host.narrow(bits.ctypes.data_as(ctypes.c_void_p), want.ctypes.data_as(ctypes.c_void_p), ctypes.c_longlong(bits.size))
    y = np.zeros(bits.size, dtypes.bfloat16)
    _emulator().function("narrow")((64,), (256,), (bits.view(np.float32), y, np.int64(bits.size)))
    assert np.array_equal(y.view(np.uint16), want)
