"""The emulator's warp-level matrix instructions (tests/cuda_emu.py), one by one, through
the helpers of kernels/mma.cuh that the tensor-core kernels call, independent of any kernel.

* ``mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32``: each lane builds its fragments from
  global matrices with the PTX ISA's layouts (A a0 (g,t), a1 (g+8,t), a2 (g,t+4),
  a3 (g+8,t+4); B b0 (k=t,n=g), b1 (k=t+4,n=g); C/D (g,2t), (g,2t+1), (g+8,2t),
  (g+8,2t+1); g = lane >> 2, t = lane & 3) and writes D back by the same layout; the
  result must equal C + A @ B on the tf32 values, summed exactly and rounded once to fp32
  (the emulator's model of the tensor core), for small integers (hand-checkable), random
  values with cvt.rna on the operands, and unconverted operands (their low 13 bits unused);
  two warps of one block compute independent products.
* ``mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32``: the same, with bf16 pairs packed per
  register (A (g, 2t..2t+1), (g+8, 2t..2t+1), (g, 2t+8..2t+9), (g+8, 2t+8..2t+9); B
  (k=2t..2t+1, n=g), (k=2t+8..2t+9, n=g); lower index in the lower half), against C + A @ B
  on the bf16 values summed exactly and rounded once: small integers, random values, inf,
  NaN, a subnormal operand.
* ``cvt.rn.bf16x2.f32`` against ml_dtypes (ties to even, overflow to infinity, subnormals,
  NaN -> 0x7FFF) and the operand order (the first source in the upper half).
* ``cvt.rna.tf32.f32`` against an independent float64 rounding (ties away from zero,
  denormals, the overflow to infinity, infinities and NaN).
* ``ldmatrix`` x1/x2/x4, with and without .trans, rows scattered in shared memory (each
  lane hands in its own row address), lanes whose address is unused handing in garbage;
  its count of bank conflicts (extra wavefronts) on known row placements.
* ``cp.async`` 4/8/16 bytes with src-size (zero fill), commit_group/wait_group, in both
  emulator modes: copies made at once, and copies kept until the wait that covers their
  group (then wait_group 1 must leave the newest group out).
* Errors, as with the shuffles: a lane that returned before an mma, lanes disagreeing on
  the instruction or its shape, a warp of fewer than 32 threads, a lane at __syncthreads,
  a misaligned ldmatrix row or cp.async address, a src-size past the copy.

    pytest tests/test_emu_mma.py
"""
import ml_dtypes
import numpy as np
import pytest

import cuda_emu

from fastcnn import _paths
from fastcnn.backend.cuda import _launch

SOURCE = r"""
#include "common.cuh"
#include "mma.cuh"

// Warp w of the block multiplies A + 128w (16x8 row-major), B + 64w (8x8, (k, n) row-major),
// C + 128w into D + 128w; convert: operands through cvt.rna first (else their raw bits).
extern "C" __global__ void mma_test(const float* A, const float* B, const float* C, float* D, int convert) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    A += 128 * warp; B += 64 * warp; C += 128 * warp; D += 128 * warp;
    const float av[4] = {A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
    const float bv[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
    unsigned a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = convert ? fc_cvt_rna_tf32(av[i]) : __float_as_uint(av[i]);
    for (int i = 0; i < 2; ++i) b[i] = convert ? fc_cvt_rna_tf32(bv[i]) : __float_as_uint(bv[i]);
    const float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    float d[4];
    fc_mma_tf32(d, a, b, c);
    D[g * 8 + 2 * t] = d[0]; D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2]; D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// The bfloat16 form: warp w multiplies A + 256w (16x16 row-major bf16 bits), B + 128w (16x8,
// (k, n) row-major), C + 128w into D + 128w; each register packs two bf16 by the PTX layout.
extern "C" __global__ void mma_bf16_test(const unsigned short* A, const unsigned short* B, const float* C,
                                         float* D) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    A += 256 * warp; B += 128 * warp; C += 128 * warp; D += 128 * warp;
    unsigned a[4], b[2];
    for (int i = 0; i < 4; ++i) {  // rows g, g+8, g, g+8; columns 2t, 2t, 2t+8, 2t+8 (+1 in the upper half)
        const int row = g + 8 * (i & 1), col = 2 * t + 8 * (i >> 1);
        a[i] = (unsigned)A[row * 16 + col] | (unsigned)A[row * 16 + col + 1] << 16;
    }
    for (int i = 0; i < 2; ++i) {
        const int k = 2 * t + 8 * i;
        b[i] = (unsigned)B[k * 8 + g] | (unsigned)B[(k + 1) * 8 + g] << 16;
    }
    const float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    float d[4];
    fc_mma_bf16(d, a, b, c);
    D[g * 8 + 2 * t] = d[0]; D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2]; D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// y[i] = cvt.rn.bf16x2.f32 of (hi[i], lo[i]).
extern "C" __global__ void cvt_bf16x2_test(const float* hi, const float* lo, unsigned* y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = fc_cvt_rn_bf16x2(hi[i], lo[i]);
}

extern "C" __global__ void cvt_test(const float* x, float* y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = __uint_as_float(fc_cvt_rna_tf32(x[i]));
}

// 32 rows of 16 bytes at row_at[r] * 4 floats into a shared buffer of 64 such rows; lane l
// hands in row l's address (lanes past 8 * matrices: an odd address, which must be unused).
extern "C" __global__ void ldmatrix_test(const unsigned* rows, const int* row_at, unsigned* out, int mode) {
    __shared__ __align__(16) float s[64 * 4];
    const int lane = threadIdx.x;
    for (int i = lane; i < 64 * 4; i += 32) s[i] = 0.0f;
    __syncthreads();
    for (int j = 0; j < 4; ++j) reinterpret_cast<unsigned*>(s)[row_at[lane] * 4 + j] = rows[lane * 4 + j];
    __syncthreads();
    const int num = mode % 3 == 0 ? 1 : mode % 3 == 1 ? 2 : 4;
    const float* p = lane < 8 * num ? s + row_at[lane] * 4 : s + 1;
    unsigned r[4] = {0, 0, 0, 0};
    if (mode == 0) { unsigned q[1]; fc_ldmatrix_x1(q, p); r[0] = q[0]; }
    if (mode == 1) { unsigned q[2]; fc_ldmatrix_x2(q, p); r[0] = q[0]; r[1] = q[1]; }
    if (mode == 2) { fc_ldmatrix_x4(r, p); }
    if (mode == 3) { unsigned q[1]; fc_ldmatrix_x1_trans(q, p); r[0] = q[0]; }
    if (mode == 4) { unsigned q[2]; fc_ldmatrix_x2_trans(q, p); r[0] = q[0]; r[1] = q[1]; }
    if (mode == 5) { fc_ldmatrix_x4_trans(r, p); }
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// Thread t: group 0 = a 16-byte copy of src[8t..8t+3] with n16[t] bytes, group 1 = an 8-byte
// copy of src[8t+4..8t+5] with n8[t] bytes, group 2 = a 4-byte copy of src[8t+6] with n4[t];
// after each wait the thread's 7 shared floats (NaN before) go to out[(stage * T + t) * 7 ..].
extern "C" __global__ void cp_async_test(const float* src, const int* n16, const int* n8, const int* n4,
                                         float* out) {
    __shared__ __align__(16) float s[64 * 8];
    const int t = threadIdx.x, T = blockDim.x;
    float* mine = s + 8 * t;
    for (int i = 0; i < 8; ++i) mine[i] = __int_as_float(0x7fc00000);
    fc_cp_async16(mine, src + 8 * t, n16[t]);
    fc_cp_async_commit();
    fc_cp_async8(mine + 4, src + 8 * t + 4, n8[t]);
    fc_cp_async_commit();
    fc_cp_async4(mine + 6, src + 8 * t + 6, n4[t]);
    fc_cp_async_commit();
    for (int i = 0; i < 7; ++i) out[(0 * T + t) * 7 + i] = mine[i];
    fc_cp_async_wait<2>();
    for (int i = 0; i < 7; ++i) out[(1 * T + t) * 7 + i] = mine[i];
    fc_cp_async_wait<1>();
    for (int i = 0; i < 7; ++i) out[(2 * T + t) * 7 + i] = mine[i];
    fc_cp_async_wait<0>();
    for (int i = 0; i < 7; ++i) out[(3 * T + t) * 7 + i] = mine[i];
}

// Misuse, one case per `what`.
extern "C" __global__ void bad_test(const float* x, float* y, int what) {
    __shared__ __align__(16) float s[256];
    const int lane = threadIdx.x & 31;
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0}, d[4];
    if (what == 0) {                       // lane 5 has returned
        if (lane == 5) return;
        fc_mma_tf32(d, a, b, c);
    } else if (what == 1) {                // x4 on half the warp, x2 on the other half
        if (lane < 16) fc_ldmatrix_x4(a, s + 4 * lane);
        else { unsigned q[2]; fc_ldmatrix_x2(q, s + 4 * lane); }
    } else if (what == 2) {                // mma on lanes 0-30, ldmatrix on lane 31
        if (lane < 31) fc_mma_tf32(d, a, b, c);
        else fc_ldmatrix_x4(a, s);
    } else if (what == 3) {                // a block of 48 threads: warp 1 has 16 lanes
        fc_mma_tf32(d, a, b, c);
    } else if (what == 4) {                // lane 7 waits at __syncthreads
        if (lane == 7) __syncthreads();
        else fc_mma_tf32(d, a, b, c);
    } else if (what == 5) {                // lane 3's row is 4 bytes off
        fc_ldmatrix_x1_trans(reinterpret_cast<unsigned (&)[1]>(a), s + 4 * lane + (lane == 3 ? 1 : 0));
    } else if (what == 6) {                // a 16-byte copy from a source 8 bytes off
        fc_cp_async16(s + 4 * lane, x + 2, 16);
        fc_cp_async_wait<0>();
    } else if (what == 7) {                // a src-size larger than the copy
        fc_cp_async4(s + lane, x, 8);
    } else if (what == 8) {                // bf16 mma on lanes 0-15, tf32 on the others
        if (lane < 16) fc_mma_bf16(d, a, b, c);
        else fc_mma_tf32(d, a, b, c);
    } else if (what == 9) {                // bf16 mma, lane 30 has returned
        if (lane == 30) return;
        fc_mma_bf16(d, a, b, c);
    } else if (what == 10) {               // a block of 40 threads: warp 1 has 8 lanes
        fc_mma_bf16(d, a, b, c);
    }
    y[threadIdx.x] = d[0] + __uint_as_float(a[0]);
}
"""


def _emulator():
    text = _launch._INCLUDE.sub(lambda m: (_paths.KERNEL_DIR / m.group(1)).read_text(), SOURCE)
    return cuda_emu.load_source("mma_test.cu", text)


def tf32_rna(x):
    """cvt.rna.tf32.f32 computed in float64, independently of the bit trick: the value rounded
    to 11 significant bits (10 stored), ties away from zero; denormals on tf32's grid of
    2^-136; past the largest tf32 (2^128 - 2^117 and more): infinity."""
    x = np.asarray(x, np.float32).astype(np.float64)
    out = x.copy()
    finite = np.isfinite(x) & (x != 0)
    mag = np.abs(x[finite])
    exp = np.maximum(np.floor(np.log2(mag)), -126)
    ulp = np.exp2(exp - 10)
    rounded = np.floor(mag / ulp + 0.5) * ulp
    out[finite] = np.sign(x[finite]) * np.where(rounded >= 2.0 ** 128, np.inf, rounded)
    return out.astype(np.float32)


def tf32_trunc(x):
    """The tf32 value the tensor cores read from unconverted bits: the low 13 bits dropped."""
    bits = np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


def _mma(emu, A, B, C, convert):
    D = np.full(C.shape, np.nan, np.float32)
    emu.function("mma_test")((1,), (32 * (C.size // 128),), (A, B, C, D, np.int32(convert)))
    return D


def _expected(A, B, C, round_fn):
    A2, B2, C2 = (a.reshape(-1, r, 8).astype(np.float64) for a, r in ((A, 16), (B, 8), (C, 16)))
    return (C2 + np.matmul(round_fn(A2.astype(np.float32)).astype(np.float64),
                           round_fn(B2.astype(np.float32)).astype(np.float64))).astype(np.float32).reshape(C.shape)


def test_mma_small_integers_by_hand():
    emu = _emulator()
    A = (np.arange(128) % 13 - 6).astype(np.float32)           # A[i][k] = (8i + k) % 13 - 6
    B = (np.arange(64) // 8 - np.arange(64) % 8).astype(np.float32)  # B[k][n] = k - n
    C = np.full(128, 0.5, np.float32)
    D = _mma(emu, A, B, C, convert=1).reshape(16, 8)
    Ai, Bi = A.reshape(16, 8).astype(np.int64), B.reshape(8, 8).astype(np.int64)
    assert np.array_equal(D, (Ai @ Bi).astype(np.float32) + 0.5)
    assert D[0, 0] == sum(((k % 13) - 6) * k for k in range(8)) + 0.5


@pytest.mark.parametrize("convert", [1, 0], ids=["cvt.rna", "raw-bits"])
def test_mma_random_fragments_two_warps(convert):
    emu = _emulator()
    rng = np.random.default_rng(7 + convert)
    A, B, C = (rng.standard_normal(n).astype(np.float32) for n in (256, 128, 256))
    D = _mma(emu, A, B, C, convert)
    expected = _expected(A, B, C, tf32_rna if convert else tf32_trunc)
    assert np.array_equal(D, expected)
    # the rounding matters: the unrounded fp32 product differs
    full = (C.reshape(2, 16, 8) + A.reshape(2, 16, 8).astype(np.float64) @ B.reshape(2, 8, 8)).reshape(-1)
    assert not np.array_equal(D, full.astype(np.float32))


def test_mma_special_values():
    emu = _emulator()
    A = np.ones(128, np.float32)
    B = np.ones(64, np.float32)
    C = np.zeros(128, np.float32)
    A[0], B[8 * 3 + 1], C[8 * 2 + 5] = np.inf, np.nan, 1e30
    D = _mma(emu, A, B, C, convert=1).reshape(16, 8)
    assert np.isinf(D[0, 0]) and np.isnan(D[0, 1]) and np.isnan(D[1, 1])  # row 0: inf * 1; column 1: NaN
    assert D[2, 5] == np.float32(1e30) and D[3, 2] == 8.0


def test_cvt_rna_tf32():
    emu = _emulator()
    one = 1.0
    special = [0.0, -0.0, one, one + 2 ** -11, -(one + 2 ** -11), one + 2 ** -11 - 2 ** -23,
               one + 3 * 2 ** -11, 2 ** -140, 2 ** -136 + 2 ** -137, 3 * 2 ** -137, 1.5 * 2 ** -126,
               float(np.finfo(np.float32).max), -float(np.finfo(np.float32).max), 2 ** 127 * (2 - 2 ** -11),
               np.inf, -np.inf, 1e-45, 65504.0, 0.1, -7.7e-39]
    rng = np.random.default_rng(3)
    x = np.concatenate([np.array(special, np.float32),
                        (rng.standard_normal(500) * 10.0 ** rng.integers(-40, 38, 500)).astype(np.float32),
                        rng.integers(0, 2 ** 32, 300, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = x[~np.isnan(x)]
    x = np.concatenate([x, np.array([np.nan, -np.nan], np.float32)])
    y = np.full_like(x, 7.0)
    emu.function("cvt_test")((1,), (64,), (x, y, np.int32(x.size)))
    finite_expected = tf32_rna(x)
    nan = np.isnan(x)
    assert np.isnan(y[nan]).all()
    assert np.array_equal(y[~nan].view(np.uint32), finite_expected[~nan].view(np.uint32))
    assert (y[~nan].view(np.uint32) & 0x1FFF == 0).all()
    assert y[3] == one + 2 ** -10 and y[4] == -(one + 2 ** -10) and y[5] == one and y[6] == one + 2 ** -9
    assert np.isinf(y[11]) and y[13] == 2.0 ** 128 * 0 + np.inf


def _mma_bf16(emu, A, B, C):
    """D of mma_bf16_test for bf16 A (warps x 16 x 16), B (warps x 16 x 8), float32 C."""
    D = np.full(C.shape, np.nan, np.float32)
    emu.function("mma_bf16_test")((1,), (32 * (C.size // 128),),
                                  (A.view(np.uint16).reshape(-1), B.view(np.uint16).reshape(-1), C.reshape(-1), D))
    return D.reshape(C.shape)


def _expected_bf16(A, B, C):
    """C + A @ B on the bf16 values: every product exact in float64, the sum rounded once."""
    return (C.astype(np.float64) + np.matmul(A.astype(np.float64), B.astype(np.float64))).astype(np.float32)


def test_mma_bf16_small_integers_by_hand():
    emu = _emulator()
    A = ((np.arange(256) % 13) - 6).astype(ml_dtypes.bfloat16).reshape(1, 16, 16)  # A[i][k] = (16i + k) % 13 - 6
    B = (np.arange(128) // 8 - np.arange(128) % 8).astype(ml_dtypes.bfloat16).reshape(1, 16, 8)  # B[k][n] = k - n
    C = np.full((1, 16, 8), 0.5, np.float32)
    D = _mma_bf16(emu, A, B, C)[0]
    Ai, Bi = A[0].astype(np.int64), B[0].astype(np.int64)
    assert np.array_equal(D, (Ai @ Bi).astype(np.float32) + 0.5)
    assert D[0, 0] == sum(((k % 13) - 6) * k for k in range(16)) + 0.5
    # column 8 + k of A (the upper registers a2, a3) and row 8 + k of B (b1) take part
    assert D[1, 3] == sum((((16 + k) % 13) - 6) * (k - 3) for k in range(16)) + 0.5


def test_mma_bf16_random_fragments_two_warps():
    emu = _emulator()
    rng = np.random.default_rng(17)
    A = rng.standard_normal((2, 16, 16)).astype(ml_dtypes.bfloat16)
    B = rng.standard_normal((2, 16, 8)).astype(ml_dtypes.bfloat16)
    C = rng.standard_normal((2, 16, 8)).astype(np.float32)
    D = _mma_bf16(emu, A, B, C)
    assert np.array_equal(D, _expected_bf16(A, B, C))
    # each element matters: swapping A's halves (the pair order in a register) changes D
    swapped = A.reshape(2, 16, 8, 2)[..., ::-1].reshape(2, 16, 16)
    assert not np.array_equal(D, _expected_bf16(swapped, B, C))


def test_mma_bf16_special_values():
    emu = _emulator()
    A = np.ones((1, 16, 16), ml_dtypes.bfloat16)
    B = np.ones((1, 16, 8), ml_dtypes.bfloat16)
    C = np.zeros((1, 16, 8), np.float32)
    A[0, 0, 9], B[0, 14, 1], C[0, 2, 5] = np.inf, np.nan, 1e30
    A[0, 4, :] = 0
    A[0, 4, 3] = 2.0 ** -133                                   # a subnormal bf16 operand, kept
    D = _mma_bf16(emu, A, B, C)[0]
    assert np.isinf(D[0, 0]) and np.isnan(D[0, 1]) and np.isnan(D[1, 1])
    assert D[2, 5] == np.float32(1e30) and D[3, 2] == 16.0
    assert D[4, 0] == np.float32(2.0 ** -133)


def test_cvt_rn_bf16x2():
    """Each source rounded as ml_dtypes rounds (nearest, ties to even, overflow to inf,
    subnormals kept); any NaN gives 0x7FFF; the FIRST source lands in the upper half."""
    emu = _emulator()
    one = 1.0
    special = [0.0, -0.0, one, one + 2 ** -8, one + 3 * 2 ** -8, -(one + 2 ** -8), one + 2 ** -8 + 2 ** -20,
               one + 2 ** -8 - 2 ** -20, 2 ** -130, 2 ** -133 + 2 ** -134, 3 * 2 ** -134, 1.5 * 2 ** -126,
               float(np.finfo(np.float32).max), 2 ** 127 * (2 - 2 ** -8), 2 ** 127 * (2 - 2 ** -8) * (1 - 2 ** -24),
               np.inf, -np.inf, 1e-45, 65504.0, 0.1, -7.7e-39]
    rng = np.random.default_rng(5)
    x = np.concatenate([np.array(special, np.float32),
                        (rng.standard_normal(500) * 10.0 ** rng.integers(-40, 38, 500)).astype(np.float32),
                        rng.integers(0, 2 ** 32, 300, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = np.concatenate([x[~np.isnan(x)], np.array([np.nan, -np.nan], np.float32),
                        np.array([0x7F800001, 0xFFC12345], np.uint32).view(np.float32)])
    lo = np.roll(x, 1)
    y = np.full(x.size, 0xDEADBEEF, np.uint32)
    emu.function("cvt_bf16x2_test")((1,), (64,), (x, lo, y, np.int32(x.size)))
    for src, half in ((x, y >> 16), (lo, y & 0xFFFF)):
        nan = np.isnan(src)
        assert (half[nan] == 0x7FFF).all()
        expected = src[~nan].astype(ml_dtypes.bfloat16).view(np.uint16)
        assert np.array_equal(half[~nan].astype(np.uint16), expected)
    upper = (y >> 16).astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
    assert upper[3] == one and upper[4] == one + 2 ** -6 and upper[5] == -one       # ties to even
    assert upper[6] == one + 2 ** -7 and upper[7] == one                            # above / below the tie
    assert upper[8] == np.float32(2 ** -130)                                        # a subnormal kept
    assert upper[9] == np.float32(2 ** -132) and upper[10] == np.float32(2 ** -132)  # subnormal ties to even
    assert np.isinf(upper[12]) and np.isinf(upper[13]) and upper[14] == np.float32(2 ** 127 * (2 - 2 ** -7))


@pytest.mark.parametrize("mode", range(6), ids=["x1", "x2", "x4", "x1.trans", "x2.trans", "x4.trans"])
def test_ldmatrix(mode):
    emu = _emulator()
    rng = np.random.default_rng(mode)
    rows = rng.integers(0, 2 ** 32, (32, 4), dtype=np.uint64).astype(np.uint32)
    row_at = rng.permutation(64)[:32].astype(np.int32)          # row l of the 4 matrices at slot row_at[l]
    out = np.full((32, 4), 0xDEADBEEF, np.uint32)
    emu.function("ldmatrix_test")((1,), (32,), (rows, row_at, out, np.int32(mode)))
    num, trans = (1, 2, 4)[mode % 3], mode >= 3
    halves = rows.view(np.uint16).reshape(4, 8, 8)              # matrix i, row j, 16-bit element e
    for lane in range(32):
        for i in range(num):
            if trans:
                lo, hi = halves[i, 2 * (lane % 4), lane // 4], halves[i, 2 * (lane % 4) + 1, lane // 4]
            else:
                lo, hi = halves[i, lane // 4, 2 * (lane % 4)], halves[i, lane // 4, 2 * (lane % 4) + 1]
            assert out[lane, i] == int(lo) | int(hi) << 16, (lane, i)
        assert (out[lane, num:] == 0).all()
    if not trans:  # on 32-bit data: lane l gets word l % 4 of row l / 4 (the tf32 A fragment)
        assert all(out[l, i] == rows[8 * i + l // 4, l % 4] for l in range(32) for i in range(num))


@pytest.mark.parametrize("mode", ["now", "at_wait"])
def test_cp_async_groups_and_zero_fill(mode):
    emu = _emulator()
    T = 64
    rng = np.random.default_rng(11)
    src = rng.standard_normal(8 * T).astype(np.float32)
    n16 = rng.choice([0, 4, 8, 12, 16], T).astype(np.int32)
    n8 = rng.choice([0, 4, 8], T).astype(np.int32)
    n4 = rng.choice([0, 4], T).astype(np.int32)
    n16[:3], n8[:3], n4[:3] = (16, 12, 0), (8, 0, 4), (4, 0, 4)
    out = np.zeros((4, T, 7), np.float32)
    emu.function("cp_async_test", cp_async=mode)((1,), (T,), (src, n16, n8, n4, out))
    landed = np.zeros((T, 7), np.float32)
    for t in range(T):
        chunk = src[8 * t:8 * t + 7].copy()
        landed[t, :4] = np.where(np.arange(4) < n16[t] // 4, chunk[:4], 0)
        landed[t, 4:6] = np.where(np.arange(2) < n8[t] // 4, chunk[4:6], 0)
        landed[t, 6] = chunk[6] if n4[t] else 0
    for stage in range(4):
        groups = 3 if mode == "now" else stage     # groups landed when the snapshot is taken
        upto = (0, 4, 6, 7)[groups]
        assert np.array_equal(out[stage, :, :upto], landed[:, :upto]), (mode, stage)
        assert np.isnan(out[stage, :, upto:]).all(), (mode, stage)


@pytest.mark.parametrize("what,block,match", [
    (0, 32, "lane 5 has returned"),
    (1, 32, "ldmatrix.x4, lane 16 ldmatrix.x2 .*same instruction"),
    (2, 32, "mma.sync.m16n8k8.tf32, lane 31 ldmatrix.x4"),
    (3, 48, "warp 1 has 16 threads: mma.sync.m16n8k8.tf32 needs all 32 lanes"),
    (4, 32, "lane 7 waits at __syncthreads"),
    (5, 32, "lane 3 hands ldmatrix.x1.trans the row address .* not 16-byte aligned"),
    (6, 32, "cp.async of 16 bytes .* must be 16-byte aligned"),
    (7, 32, "cp.async.ca of 4 bytes with src-size 8"),
    (8, 32, "lane 0 executes mma.sync.m16n8k16.bf16, lane 16 mma.sync.m16n8k8.tf32"),
    (9, 32, "lane 30 has returned"),
    (10, 40, "warp 1 has 8 threads: mma.sync.m16n8k16.bf16 needs all 32 lanes"),
])
def test_misuse_is_an_error(what, block, match):
    emu = _emulator()
    x, y = np.ones(256, np.float32), np.zeros(256, np.float32)
    with pytest.raises(AssertionError, match=match):
        emu.function("bad_test")((1,), (block,), (x, y, np.int32(what)))
    emu.function("mma_test")((1,), (32,), (x, x, x, y, np.int32(1)))  # the emulator goes on afterwards
    assert (y[:128] == 9.0).all()


def test_ldmatrix_counts_bank_conflicts():
    """8 rows in 8 different 4-bank groups: one wavefront a matrix; 8 rows 128 bytes apart
    (one group): 8 wavefronts, 7 extra a matrix; the same row 8 times: a broadcast."""
    emu = _emulator()
    rows = np.arange(128, dtype=np.uint32).reshape(32, 4)
    out = np.zeros((32, 4), np.uint32)
    lanes = np.arange(32)
    for row_at, extra in ((lanes, 0), ((8 * lanes) % 64 + lanes // 8, 4 * 7)):
        before = emu.ldmatrix_conflicts()
        emu.function("ldmatrix_test")((1,), (32,), (rows, row_at.astype(np.int32), out, np.int32(2)))
        assert emu.ldmatrix_conflicts() - before == extra, row_at
