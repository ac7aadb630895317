"""Run the CUDA C sources of kernels/*.cu on the CPU, for tests without a GPU.

``load("gemm.cu", ["gemm_tiled<0, 1>", ...])`` compiles the file (expanded by
``_launch.kernel_source``) as host C++ with g++ under a small shim that defines the
CUDA names the sources use, and returns an :class:`Emulator` whose
``function(name)`` is a stand-in for CuPy's ``RawKernel``: ``kernel(grid, block,
args)`` with NumPy arrays (or None, a null pointer) for pointer parameters and NumPy
scalars of the parameter's C type (np.int32 for int, np.int64 for long long,
np.float32 for float) for the others.  Every ``extern "C" __global__`` kernel of the
file is there, plus the template instances named (``gemm_tiled<0, 1>``,
``conv_direct_fprop<8>``); parameter types come from the compiler (template deduction
on the kernel's address), and every call is checked against them (count, dtype of
each array, exact scalar type, C-contiguity), against the grid and block limits and
the kernel's ``__launch_bounds__``.

Execution: blocks run one after another (x fastest, then y, z); the threads of a
block are fibers on the calling host thread (own stacks, started through ucontext,
switched with _setjmp/_longjmp: ~40 ns a switch, where std::thread and std::barrier
cost microseconds and hang on a barrier some thread skips), resumed in thread order,
each running until its next ``__syncthreads()``, its next warp operation or its end,
so a barrier is kept exactly: every thread of the block arrives before any leaves.
A missing barrier usually shows as a wrong result (thread t runs its whole segment
before thread t+1 starts), and a barrier that not every thread reaches (a return or
a branch around it) is an error, not a hang.  ``__shared__`` is a ``static``: one
copy, shared by the block's threads and left over from the previous block (blocks
never overlap).  1-D, 2-D and 3-D grids and blocks; no dynamic shared memory
(``extern __shared__``).  ``__CUDA_ARCH__`` is defined (900), so ``#ifdef`` branches
take the device side.

Warps: a warp is 32 consecutive threads of the block (threadIdx linearised x fastest;
the last warp may be partial).  ``__shfl_sync``, ``__shfl_up_sync``,
``__shfl_down_sync``, ``__shfl_xor_sync`` (any arithmetic type up to 8 bytes, every
width 1..32: PTX shfl.sync's lane rules, a source outside the lane's segment gives its
own value), ``__ballot_sync``, ``__any_sync``, ``__all_sync`` and ``__syncwarp`` are
exchanges like a barrier restricted to the warp: each lane parks with its operand, and
once every live lane its mask names has arrived at a warp op with the same mask, the
results are handed out and the lanes go on.  A warp op that cannot complete is an
error, not a hang and not an invented value: a live lane the mask names waiting
elsewhere (at ``__syncthreads``, at another warp op, or with another mask:
divergence), a caller missing from its own mask, a width that is not a power of 2, a
shuffle reading a lane that does not take part (not in the mask, returned, or beyond
the block).  As CUDA documents ("all non-exited threads named in mask"), lanes that
have returned may be named in a mask; reading one is the error.  Atomics
(``atomicAdd`` on int, unsigned, unsigned long long, float and double; Sub, Exch, Max,
Min, And, Or, Xor, Inc, Dec, CAS) are plain read-modify-writes returning the old value
(fibers on one host thread never overlap).

Matrix instructions: kernels/mma.cuh holds each inline-PTX instruction the tensor-core
kernels use in one helper, and swaps it for a C++ one when ``FASTCNN_EMULATOR`` is defined
(the shim defines it).  ``mma.sync.m16n8k8`` TF32, ``mma.sync.m16n8k16`` BF16 and ``ldmatrix``
(x1/x2/x4, .trans) are
warp ops like the shuffles but ``.sync.aligned``: all 32 lanes of the warp must arrive at
the same instruction with the same shape, else the launch fails (a lane that returned or
waits elsewhere, a partial warp, ldmatrix.x4 against .x2, a row address not 16-byte
aligned).  mma uses the PTX ISA's fragment layouts, reads the tf32 bits of its operands
(the low 13 dropped) or the bfloat16 halves of its registers, sums the 8 (tf32) or 16
(bf16) exact products and C in double and rounds once to fp32 (a GPU's tensor core may
round differently within fp32 accumulation's error).  ``cvt.rna.tf32.f32`` rounds to
nearest, ties away from zero; ``cvt.rn.bf16x2.f32 d, hi, lo`` rounds each to bfloat16,
nearest, ties to even (a NaN gives 0x7FFF), the first source in the upper half.  ``cp.async`` (4/8/16 bytes,
src-size zero fill, alignment checked) either copies at once or, with
``function(..., cp_async="at_wait")``, keeps each copy until the
``cp.async.wait_group`` that covers its group: a kernel must be right both ways.
``Emulator.ldmatrix_conflicts()`` counts the shared-memory wavefronts ldmatrix needed
beyond one per 8x8 matrix (rows of one matrix in the same group of 4 banks).

bfloat16: ``__nv_bfloat16`` / ``__nv_bfloat162`` and the conversions kernels/bf16.cuh
declares for the GPU (``__float2bfloat16_rn``, ``__bfloat162float``, the pair forms, the
bits), with cuda_bf16.hpp's rules (tests/test_emu_bf16.py checks them bit for bit against
cuda_bf16.h compiled for the host and against ml_dtypes); a ``__nv_bfloat16*`` parameter
takes a NumPy array of ``fastcnn.dtypes.bfloat16``.

Limits: no ``__activemask``, ``__match_*_sync``, ``__reduce_*_sync``, cooperative
groups, fp16 or bfloat16 arithmetic operators, inline PTX other than mma.cuh's (timing.cu's ``%globaltimer``: that
source does not compile here); no data races detected (threads never run at the same time; atomics
land in thread order, blocks in grid order, so an order-dependent result such as a
multi-block float atomicAdd sum is one of the GPU's possible results, always the
same one); divergent lanes reaching the same warp op from different call sites
exchange as on Volta and later (not flagged); a thread spinning on a value another
thread writes hangs (threads switch only at barriers and warp ops); float arithmetic
is the host's without contraction (``fmaf`` is fused, as on the GPU; ``a*b + c`` is
rounded twice where nvcc would contract it), and the host's libm (``expf``, ``logf``,
``powf``...: correctly rounded or nearly, where CUDA's are within 1-2 ulp), stale
shared memory is not poisoned between blocks.  Out-of-bounds accesses are caught by
:class:`Guarded`'s sentinel zones around the arrays, not by the emulator.

The library is built once per source text (cached by its hash in a temporary
directory, so a second test session reuses it); without g++ or <ucontext.h> the
calling test is skipped, and a source g++ cannot compile fails it.
``patch_backend`` points fastcnn.backend.cuda at the emulator (kernel lookup, array
checks, output buffers, ``cupy.empty``) for a test; :class:`Guarded` hands out
:class:`DeviceArray` views, whose ``.data`` has CuPy's ``.ptr`` and
``.copy_from_device_async`` (a memmove)."""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types

import numpy as np
import pytest

from fastcnn import dtypes
from fastcnn.backend.cuda import _launch


def _host_fma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return platform.machine() in ("x86_64", "AMD64") and " fma " in f.read(1 << 16).replace("\n", " ")
    except OSError:
        return False


# C++17 as NVRTC is given (_launch.COMPILE_OPTIONS); no contraction of a*b+c, no aliasing
# assumptions (the sources reinterpret float arrays as float4); -O2 and -mfma (fmaf one
# instruction, not a libm call) run the tiled kernels ~7x faster than -O1 without it.
CXX_FLAGS = ("-std=c++17", "-O2", "-fno-strict-aliasing", "-ffp-contract=off", "-shared", "-fPIC",
             "-U_FORTIFY_SOURCE", "-Wno-unknown-pragmas") + (("-mfma",) if _host_fma() else ())
MAX_THREADS = 1024
_ONE_LAUNCH = threading.Lock()  # the scheduler is process-wide state

SHIM = r"""
#undef _FORTIFY_SOURCE  // its longjmp check refuses a jump to another stack
#include <math.h>
#include <cmath>
#include <csetjmp>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <sys/mman.h>
#include <setjmp.h>
#include <ucontext.h>
#include <unistd.h>

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define warpSize 32

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };
#define FC_EMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N { T x, y; }; \
    static inline N make_##N(T a, T b) { return {a, b}; }
#define FC_EMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    static inline N make_##N(T a, T b, T c, T d) { return {a, b, c, d}; }
FC_EMU_VEC2(float, float2, 8)   FC_EMU_VEC4(float, float4, 16)
FC_EMU_VEC2(double, double2, 16)
FC_EMU_VEC2(int, int2, 8)       FC_EMU_VEC4(int, int4, 16)
FC_EMU_VEC2(unsigned, uint2, 8) FC_EMU_VEC4(unsigned, uint4, 16)
FC_EMU_VEC2(unsigned char, uchar2, 2) FC_EMU_VEC4(unsigned char, uchar4, 4)

static uint3 threadIdx, blockIdx;  // set by the scheduler before it resumes a thread
static dim3 blockDim, gridDim;
void __syncthreads();

template <class A, class B> static inline typename std::common_type<A, B>::type min(A a, B b) { return b < a ? b : a; }
template <class A, class B> static inline typename std::common_type<A, B>::type max(A a, B b) { return a < b ? b : a; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

template <class T> static inline T __ldg(const T* p) { return *p; }
template <class To, class From> static inline To fc_emu_bits(From v) { To t; std::memcpy(&t, &v, sizeof t); return t; }
static inline float __int_as_float(int v) { return fc_emu_bits<float>(v); }
static inline int __float_as_int(float v) { return fc_emu_bits<int>(v); }
static inline float __uint_as_float(unsigned v) { return fc_emu_bits<float>(v); }
static inline unsigned __float_as_uint(float v) { return fc_emu_bits<unsigned>(v); }
static inline double __longlong_as_double(long long v) { return fc_emu_bits<double>(v); }
static inline long long __double_as_longlong(double v) { return fc_emu_bits<long long>(v); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
static inline int __clz(int v) { return v ? __builtin_clz((unsigned)v) : 32; }
static inline int __clzll(long long v) { return v ? __builtin_clzll((unsigned long long)v) : 64; }
static inline int __ffs(int v) { return __builtin_ffs(v); }
static inline int __ffsll(long long v) { return __builtin_ffsll(v); }
static inline unsigned __brev(unsigned v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
    v = ((v >> 8) & 0x00FF00FFu) | ((v & 0x00FF00FFu) << 8);
    return (v >> 16) | (v << 16);
}
static inline float __saturatef(float v) { return v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f; }  // NaN -> 0
static inline float __fsqrt_rn(float v) { return sqrtf(v); }
static inline float __frcp_rn(float v) { return 1.0f / v; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

// Threads never run at the same time: an atomic is a plain read-modify-write (it returns the
// old value, as on the GPU), a fence nothing.  Overloads for CUDA's types, not templates, so
// that a value of another arithmetic type converts as nvcc converts it.
static inline void __threadfence() {}
static inline void __threadfence_block() {}
static inline void __threadfence_system() {}
#define FC_EMU_ATOMIC(NAME, T, UPDATE) \
    static inline T NAME(T* p, T v) { T old = *p; *p = (UPDATE); return old; }
#define FC_EMU_ATOMIC_INT(NAME, UPDATE) FC_EMU_ATOMIC(NAME, int, UPDATE) \
    FC_EMU_ATOMIC(NAME, unsigned, UPDATE) FC_EMU_ATOMIC(NAME, unsigned long long, UPDATE)
FC_EMU_ATOMIC_INT(atomicAdd, old + v) FC_EMU_ATOMIC(atomicAdd, float, old + v) FC_EMU_ATOMIC(atomicAdd, double, old + v)
FC_EMU_ATOMIC(atomicSub, int, old - v) FC_EMU_ATOMIC(atomicSub, unsigned, old - v)
FC_EMU_ATOMIC_INT(atomicExch, v) FC_EMU_ATOMIC(atomicExch, float, v)
FC_EMU_ATOMIC_INT(atomicMax, old < v ? v : old) FC_EMU_ATOMIC(atomicMax, long long, old < v ? v : old)
FC_EMU_ATOMIC_INT(atomicMin, v < old ? v : old) FC_EMU_ATOMIC(atomicMin, long long, v < old ? v : old)
FC_EMU_ATOMIC_INT(atomicAnd, old & v) FC_EMU_ATOMIC_INT(atomicOr, old | v) FC_EMU_ATOMIC_INT(atomicXor, old ^ v)
FC_EMU_ATOMIC(atomicInc, unsigned, old >= v ? 0u : old + 1u)
FC_EMU_ATOMIC(atomicDec, unsigned, (old == 0u || old > v) ? v : old - 1u)
#define FC_EMU_CAS(T) static inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
FC_EMU_CAS(int) FC_EMU_CAS(unsigned) FC_EMU_CAS(unsigned long long) FC_EMU_CAS(unsigned short)

// Warp-level operations: the calling thread parks (like at a barrier, but for its warp: the
// 32 consecutive threads of the block, threadIdx linearised x fastest); once every lane the
// mask names has arrived, the scheduler does the exchange and lets them go on.  value: the
// lane's operand's bits; src: the lane it reads (a shuffle), or -1.
enum { FC_EMU_SHFL = 1, FC_EMU_BALLOT, FC_EMU_ANY, FC_EMU_ALL, FC_EMU_SYNCWARP };
unsigned long long fc_emu_warp(int kind, unsigned mask, unsigned long long value, int src, int width);
static inline int fc_emu_lane() {
    return (int)((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u);
}
// The source lane of PTX shfl.sync (ISA: b's low 5 bits, c = clamp | segment mask << 8); an
// out-of-range source reads the lane's own value.  mode: 0 up, 1 down, 2 bfly, 3 idx.
static inline int fc_emu_shfl_src(int mode, unsigned b, int width) {
    const int lane = fc_emu_lane();
    const int bval = (int)(b & 31u), seg = (32 - width) & 31, cval = mode == 0 ? 0 : 31;
    const int max_lane = (lane & seg) | (cval & ~seg), min_lane = lane & seg;
    int j;
    bool ok;
    switch (mode) {
        case 0: j = lane - bval; ok = j >= max_lane; break;
        case 1: j = lane + bval; ok = j <= max_lane; break;
        case 2: j = lane ^ bval; ok = j <= max_lane; break;
        default: j = min_lane | (bval & ~seg); ok = j <= max_lane; break;
    }
    return ok ? j : lane;
}
template <class T> static inline unsigned long long fc_emu_pack(T v) {
    static_assert(std::is_arithmetic<T>::value && sizeof(T) <= 8, "warp shuffles of this type are not emulated");
    unsigned long long r = 0;
    std::memcpy(&r, &v, sizeof v);
    return r;
}
template <class T> static inline T fc_emu_unpack(unsigned long long r) { T v; std::memcpy(&v, &r, sizeof v); return v; }
#define FC_EMU_SHUFFLE(NAME, MODE, B)                                                               \
    template <class T> static inline T NAME(unsigned mask, T var, B b, int width = warpSize) {         \
        return fc_emu_unpack<T>(fc_emu_warp(FC_EMU_SHFL, mask, fc_emu_pack(var),                     \
                                            fc_emu_shfl_src(MODE, (unsigned)b, width), width));      \
    }
FC_EMU_SHUFFLE(__shfl_up_sync, 0, unsigned) FC_EMU_SHUFFLE(__shfl_down_sync, 1, unsigned)
FC_EMU_SHUFFLE(__shfl_xor_sync, 2, int) FC_EMU_SHUFFLE(__shfl_sync, 3, int)
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)fc_emu_warp(FC_EMU_BALLOT, mask, pred != 0, -1, 32);
}
static inline int __any_sync(unsigned mask, int pred) { return (int)fc_emu_warp(FC_EMU_ANY, mask, pred != 0, -1, 32); }
static inline int __all_sync(unsigned mask, int pred) { return (int)fc_emu_warp(FC_EMU_ALL, mask, pred != 0, -1, 32); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { fc_emu_warp(FC_EMU_SYNCWARP, mask, 0, -1, 32); }

// bfloat16 (kernels/bf16.cuh declares these for the GPU, and leaves them to the emulator):
// cuda_bf16.h's types, plain structs without implicit conversions, and its conversions with
// the rules of cuda_bf16.hpp's host code, which the GPU's cvt.rn.bf16.f32 follows: round to
// nearest, ties to even, overflow to inf, subnormals kept, any NaN -> 0x7FFF.
struct __attribute__((aligned(2))) __nv_bfloat16 { unsigned short __x; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { __nv_bfloat16 r; r.__x = bits; return r; }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    const unsigned u = fc_emu_bits<unsigned>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __ushort_as_bfloat16(0x7fffu);
    const unsigned rest = u << 16;  // the dropped half: above, at or below the tie
    unsigned short x = (unsigned short)(u >> 16);
    if (rest > 0x80000000u || (rest == 0x80000000u && (x & 1u))) ++x;
    return __ushort_as_bfloat16(x);
}
static inline float __bfloat162float(__nv_bfloat16 v) { return fc_emu_bits<float>((unsigned)v.__x << 16); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    __nv_bfloat162 r;
    r.x = __float2bfloat16_rn(a);
    r.y = __float2bfloat16_rn(b);
    return r;
}
static inline float2 __bfloat1622float2(__nv_bfloat162 v) {
    return make_float2(__bfloat162float(v.x), __bfloat162float(v.y));
}

// Warp-level matrix instructions: kernels/mma.cuh swaps each of its inline-PTX helpers for
// these when FASTCNN_EMULATOR is defined.  mma.sync and ldmatrix are warp ops like the
// shuffles, but .sync.aligned: every one of the 32 lanes must execute the same one.
#define FASTCNN_EMULATOR 1
enum { FC_EMU_MMA_TF32 = 16, FC_EMU_LDMATRIX, FC_EMU_MMA_BF16 };
void fc_emu_matrix(int kind, int variant, const void* in, void* out);
// cvt.rna.tf32.f32: 10 mantissa bits, round to nearest, ties away from zero (on the magnitude);
// infinities stay, a NaN stays a NaN, a finite value past the largest tf32 rounds to infinity.
static inline unsigned fc_emu_cvt_rna_tf32(float x) {
    const unsigned u = fc_emu_bits<unsigned>(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? ((u | 0x00400000u) & ~0x1fffu) : u;
    return (u + 0x1000u) & ~0x1fffu;
}
// cvt.rn.bf16x2.f32 d, hi, lo: each rounded to bfloat16 (nearest, ties to even; overflow to
// infinity, subnormals kept, a NaN gives the canonical NaN 0x7FFF), hi in the upper half of d.
static inline unsigned fc_emu_cvt_rn_bf16(float x) {
    const unsigned u = fc_emu_bits<unsigned>(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
static inline unsigned fc_emu_cvt_rn_bf16x2(float hi, float lo) {
    return fc_emu_cvt_rn_bf16(hi) << 16 | fc_emu_cvt_rn_bf16(lo);
}
struct fc_emu_mma_in { unsigned a[4], b[2]; float c[4]; };
static inline void fc_emu_mma(int kind, float* d, const unsigned* a, const unsigned* b, const float* c) {
    fc_emu_mma_in in;
    std::memcpy(in.a, a, sizeof in.a);
    std::memcpy(in.b, b, sizeof in.b);
    std::memcpy(in.c, c, sizeof in.c);
    float out[4];
    fc_emu_matrix(kind, 0, &in, out);
    std::memcpy(d, out, sizeof out);
}
static inline void fc_emu_mma_m16n8k8_tf32(float* d, const unsigned* a, const unsigned* b, const float* c) {
    fc_emu_mma(FC_EMU_MMA_TF32, d, a, b, c);
}
static inline void fc_emu_mma_m16n8k16_bf16(float* d, const unsigned* a, const unsigned* b, const float* c) {
    fc_emu_mma(FC_EMU_MMA_BF16, d, a, b, c);
}
static inline void fc_emu_ldmatrix(unsigned* r, int num, bool trans, const void* row) {
    unsigned out[4];
    fc_emu_matrix(FC_EMU_LDMATRIX, num * 2 + (trans ? 1 : 0), row, out);
    std::memcpy(r, out, sizeof(unsigned) * num);
}
void fc_emu_cp_async(void* dst, const void* src, int size, int n, bool cg);
void fc_emu_cp_async_commit();
void fc_emu_cp_async_wait(int n);

// The device side of `#ifdef __CUDA_ARCH__` branches is what the GPU runs (sm_90: an H200).
#define __CUDA_ARCH__ 900
"""

ENGINE = r"""
namespace fc_emu {
// One block at a time; its threads are fibers on this host thread.  A fiber starts once
// through its ucontext (setcontext), then loops over blocks; every switch after that is
// an _setjmp/_longjmp pair (no system call, unlike swapcontext).
enum { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP_OP = 2 };
struct CpAsync { unsigned char* dst; unsigned char data[16]; int size; unsigned group; };
struct Fiber {
    ucontext_t start;
    jmp_buf at;
    bool live, done;   // live: `at` resumes it; done: its block's work has returned
    long syncs;        // __syncthreads passed in this block
    int park;          // RUNNABLE, AT_BARRIER or AT_WARP_OP
    int kind, src;     // the warp op it waits at (FC_EMU_*), the lane it reads (-1: none)
    unsigned mask;
    unsigned long long value, result;
    int variant;        // a matrix op's shape (ldmatrix: 2 * matrices + trans)
    const void* in;     // a matrix op's operands (the lane's fragments, or its row address)
    void* out;          // where its results go
    std::vector<CpAsync> copies;  // cp.async copies not landed yet (mode "at_wait")
    unsigned committed;           // cp.async.commit_group executed in this block
};
static bool cp_async_at_wait = false;  // false: a cp.async copies at once; true: at its wait_group
// Shared-memory wavefronts ldmatrix needs beyond one per 8x8 matrix (bank conflicts): a
// matrix's 8 rows of 16 bytes go in one wavefront when no two different rows fall in the
// same group of 4 banks, (address / 16) % 8.
static long long ldmatrix_conflicts = 0;
static const size_t STACK = 256 * 1024;
static std::vector<Fiber*> fibers;  // pointers: a ucontext_t must not move
static jmp_buf scheduler;
static unsigned current;
static void (*job)(void*);
static void* job_arg;
static char error[2048];  // why the launch failed ("" while it has not)

static void fail(const char* fmt, ...) {
    if (error[0]) return;
    int k = snprintf(error, sizeof error, "block (%u, %u, %u): ", blockIdx.x, blockIdx.y, blockIdx.z);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error + k, sizeof error - k, fmt, ap);
    va_end(ap);
}

static const char* kind_name(int kind) {
    switch (kind) {
        case FC_EMU_SHFL: return "a __shfl*_sync";
        case FC_EMU_BALLOT: return "__ballot_sync";
        case FC_EMU_ANY: return "__any_sync";
        case FC_EMU_ALL: return "__all_sync";
        case FC_EMU_SYNCWARP: return "__syncwarp";
        default: return "a matrix instruction";
    }
}

static const char* matrix_name(int kind, int variant) {
    static const char* const ldm[] = {"?", "?", "ldmatrix.x1", "ldmatrix.x1.trans", "ldmatrix.x2",
                                      "ldmatrix.x2.trans", "?", "?", "ldmatrix.x4", "ldmatrix.x4.trans"};
    if (kind == FC_EMU_MMA_TF32) return "mma.sync.m16n8k8.tf32";
    if (kind == FC_EMU_MMA_BF16) return "mma.sync.m16n8k16.bf16";
    if (kind == FC_EMU_LDMATRIX && variant >= 0 && variant < 10) return ldm[variant];
    return kind_name(kind);
}

static bool is_matrix(int kind) { return kind == FC_EMU_MMA_TF32 || kind == FC_EMU_MMA_BF16 || kind == FC_EMU_LDMATRIX; }

// The tensor cores read tf32: an operand's bits below its 10 mantissa bits are not used
// (the kernels round with cvt.rna first; a NaN stays a NaN).
static double tf32_operand(unsigned u) {
    if ((u & 0x7f800000u) != 0x7f800000u || !(u & 0x007fffffu)) u &= ~0x1fffu;
    return (double)fc_emu_bits<float>(u);
}

// A bfloat16 operand: the upper 16 bits of a float (exact in double).
static double bf16_operand(unsigned half) { return (double)fc_emu_bits<float>((half & 0xffffu) << 16); }

// D (16 x 8) = A (16 x K) @ B (K x 8) + C on the warp's fragments, the products exact, summed in
// double, rounded once to fp32.  K = 8: tf32 (m16n8k8); K = 16: bfloat16 (m16n8k16), whose
// A registers hold (g, 2t..2t+1), (g+8, 2t..2t+1), (g, 2t+8..2t+9), (g+8, 2t+8..2t+9) and B's
// (k = 2t..2t+1, n = g), (k = 2t+8..2t+9, n = g), the lower column or k in the lower half.
static void run_mma(unsigned base, int kind) {
    const int K = kind == FC_EMU_MMA_BF16 ? 16 : 8;
    double A[16][16], B[16][8], C[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const fc_emu_mma_in* in = static_cast<const fc_emu_mma_in*>(fibers[base + l]->in);
        const unsigned g = l >> 2, t = l & 3;
        if (K == 8) {
            A[g][t] = tf32_operand(in->a[0]);
            A[g + 8][t] = tf32_operand(in->a[1]);
            A[g][t + 4] = tf32_operand(in->a[2]);
            A[g + 8][t + 4] = tf32_operand(in->a[3]);
            B[t][g] = tf32_operand(in->b[0]);
            B[t + 4][g] = tf32_operand(in->b[1]);
        } else {
            for (unsigned h = 0; h < 2; ++h) {  // h: the half of each register
                A[g][2 * t + h] = bf16_operand(in->a[0] >> (16 * h));
                A[g + 8][2 * t + h] = bf16_operand(in->a[1] >> (16 * h));
                A[g][2 * t + 8 + h] = bf16_operand(in->a[2] >> (16 * h));
                A[g + 8][2 * t + 8 + h] = bf16_operand(in->a[3] >> (16 * h));
                B[2 * t + h][g] = bf16_operand(in->b[0] >> (16 * h));
                B[2 * t + 8 + h][g] = bf16_operand(in->b[1] >> (16 * h));
            }
        }
        C[g][2 * t] = in->c[0];
        C[g][2 * t + 1] = in->c[1];
        C[g + 8][2 * t] = in->c[2];
        C[g + 8][2 * t + 1] = in->c[3];
    }
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned g = l >> 2, t = l & 3;
        float* d = static_cast<float*>(fibers[base + l]->out);
        const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int r = 0; r < 4; ++r) {
            double s = C[rows[r]][cols[r]];
            for (int k = 0; k < K; ++k) s += A[rows[r]][k] * B[k][cols[r]];
            d[r] = (float)s;
        }
    }
}

// One warp's matrix instruction, every lane present and agreeing (checked by the caller).
static void run_matrix(unsigned base, int kind, int variant) {
    if (kind == FC_EMU_MMA_TF32 || kind == FC_EMU_MMA_BF16) {
        run_mma(base, kind);
        return;
    }
    // ldmatrix: matrix i's row j comes from lane 8i + j's address (8 x 16 bits).
    const int num = variant / 2;
    const bool trans = variant & 1;
    unsigned short rows[4][8][8];
    for (int i = 0; i < num; ++i) {
        int distinct[8] = {0}, worst = 1;  // per bank group: the distinct rows seen
        const void* seen[8][8];
        for (int j = 0; j < 8; ++j) {
            const void* at = fibers[base + 8 * i + j]->in;
            std::memcpy(rows[i][j], at, 16);
            const int group = (int)(((unsigned long long)at >> 4) & 7);
            bool again = false;
            for (int q = 0; q < distinct[group]; ++q) again = again || seen[group][q] == at;
            if (!again) seen[group][distinct[group]++] = at;
            worst = distinct[group] > worst ? distinct[group] : worst;
        }
        ldmatrix_conflicts += worst - 1;
    }
    for (unsigned l = 0; l < 32; ++l) {
        unsigned* r = static_cast<unsigned*>(fibers[base + l]->out);
        for (int i = 0; i < num; ++i) {
            const unsigned lo = trans ? rows[i][2 * (l % 4)][l / 4] : rows[i][l / 4][2 * (l % 4)];
            const unsigned hi = trans ? rows[i][2 * (l % 4) + 1][l / 4] : rows[i][l / 4][2 * (l % 4) + 1];
            r[i] = lo | hi << 16;
        }
    }
}

// A warp at a matrix instruction: every one of its 32 lanes must be there, at the same one.
// Returns the lanes let go (32), or -1 with the error set.
static int resolve_matrix(unsigned base, unsigned lanes, unsigned first) {
    const unsigned warp = base / 32;
    const Fiber* f = fibers[base + first];
    const char* name = matrix_name(f->kind, f->variant);
    if (lanes < 32) {
        fail("warp %u has %u threads: %s needs all 32 lanes of a warp", warp, lanes, name);
        return -1;
    }
    for (unsigned j = 0; j < 32; ++j) {
        const Fiber* g = fibers[base + j];
        if (g->done || g->park != AT_WARP_OP) {
            fail("warp %u: lane %u executes %s, but lane %u %s (.sync.aligned: every lane of the warp "
                 "must execute it)", warp, first, name, j, g->done ? "has returned" : "waits at __syncthreads");
            return -1;
        }
        if (g->kind != f->kind || g->variant != f->variant) {
            fail("warp %u: lane %u executes %s, lane %u %s (the lanes of a warp must execute the same "
                 "instruction with the same fragment shapes)", warp, first, name, j,
                 matrix_name(g->kind, g->variant));
            return -1;
        }
    }
    if (f->kind == FC_EMU_LDMATRIX)
        for (int j = 0; j < 8 * (f->variant / 2); ++j)
            if ((unsigned long long)fibers[base + j]->in & 15ull) {
                fail("warp %u: lane %d hands %s the row address %p, not 16-byte aligned", warp, j, name,
                     fibers[base + j]->in);
                return -1;
            }
    run_matrix(base, f->kind, f->variant);
    for (unsigned j = 0; j < 32; ++j) fibers[base + j]->park = RUNNABLE;
    return 32;
}

static void entry() {
    for (;;) {  // one block per turn; never index fibers by a reference kept across a switch
        job(job_arg);
        fibers[current]->done = true;
        if (!_setjmp(fibers[current]->at)) _longjmp(scheduler, 1);
    }
}

static bool grow(unsigned n) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    while (fibers.size() < n) {  // each stack with a guard page below it: an overflow faults
        void* mem = mmap(nullptr, STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) return false;
        mprotect(mem, page, PROT_NONE);
        Fiber* f = new Fiber();
        getcontext(&f->start);
        f->start.uc_stack.ss_sp = (char*)mem + page;
        f->start.uc_stack.ss_size = STACK;
        f->start.uc_link = nullptr;
        makecontext(&f->start, entry, 0);
        fibers.push_back(f);
    }
    return true;
}

// Thread t runs until its next __syncthreads, warp op, or its end.
static void resume(unsigned t, const unsigned* b) {
    Fiber* f = fibers[t];
    current = t;
    threadIdx = {t % b[0], t / b[0] % b[1], t / (b[0] * b[1])};
    if (!_setjmp(scheduler)) {
        if (f->live) _longjmp(f->at, 1);  // parked, or done with its last block
        f->live = true;                    // it saves `at` before it comes back
        setcontext(&f->start);
    }
}

static const char* where(const Fiber* g) {
    return g->done ? "has returned" : g->park == AT_BARRIER ? "waits at __syncthreads" : "waits at another warp op";
}

// Every thread is parked or done: complete the warp ops whose lanes have all arrived.
// Returns the number of threads let go, or -1 (error set) when a warp op cannot complete:
// a live lane its mask names is elsewhere (at __syncthreads, at another op or with another
// mask: divergence), the caller is not in its own mask, or a shuffle reads a lane that does
// not take part (returned, not in the mask, or beyond the block).  Lanes that have returned
// may be named in a mask (CUDA: "all non-exited threads named in mask").
static int resolve_warps(unsigned n) {
    int released = 0;
    for (unsigned base = 0; base < n; base += 32) {
        const unsigned lanes = n - base < 32 ? n - base : 32;
        unsigned waiting = 0, live = 0;
        for (unsigned l = 0; l < lanes; ++l) {
            if (fibers[base + l]->park == AT_WARP_OP) waiting |= 1u << l;
            if (!fibers[base + l]->done) live |= 1u << l;
        }
        if (!waiting) continue;
        unsigned first = 0;
        while (first < lanes && !((waiting >> first & 1u) && is_matrix(fibers[base + first]->kind))) ++first;
        if (first < lanes) {
            const int r = resolve_matrix(base, lanes, first);
            if (r < 0) return -1;
            released += r;
            continue;
        }
        const unsigned warp = base / 32;
        for (unsigned l = 0; l < lanes; ++l) {
            if (!(waiting >> l & 1u)) continue;
            const Fiber* f = fibers[base + l];
            if (!(f->mask >> l & 1u)) {
                fail("warp %u lane %u calls %s with mask 0x%08x, which does not name the lane itself",
                     warp, l, kind_name(f->kind), f->mask);
                return -1;
            }
            for (unsigned j = 0; j < lanes; ++j) {
                if (!((f->mask & live) >> j & 1u)) continue;
                const Fiber* g = fibers[base + j];
                if (g->park != AT_WARP_OP) {
                    fail("warp %u: lane %u calls %s with mask 0x%08x, but lane %u %s (a warp op not "
                         "reached by every lane its mask names: divergence)", warp, l, kind_name(f->kind),
                         f->mask, j, where(g));
                    return -1;
                }
                if (g->mask != f->mask || g->kind != f->kind) {
                    fail("warp %u: lane %u calls %s with mask 0x%08x, lane %u %s with mask 0x%08x (the "
                         "lanes of a warp op must call the same one with the same mask)", warp, l,
                         kind_name(f->kind), f->mask, j, kind_name(g->kind), g->mask);
                    return -1;
                }
            }
            if (f->kind == FC_EMU_SHFL && !((f->mask & waiting) >> f->src & 1u)) {
                fail("warp %u: lane %u shuffles from lane %d, which does not take part (%s)", warp, l, f->src,
                     (unsigned)f->src >= lanes ? "beyond the block's last thread"
                     : !(f->mask >> f->src & 1u) ? "not in the mask" : "it has returned");
                return -1;
            }
        }
        for (unsigned l = 0; l < lanes; ++l) {
            if (!(waiting >> l & 1u)) continue;
            Fiber* f = fibers[base + l];
            const unsigned part = f->mask & waiting;
            unsigned bits = 0;
            for (unsigned j = 0; j < lanes; ++j)
                if ((part >> j & 1u) && fibers[base + j]->value) bits |= 1u << j;
            switch (f->kind) {
                case FC_EMU_SHFL: f->result = fibers[base + f->src]->value; break;
                case FC_EMU_BALLOT: f->result = bits; break;
                case FC_EMU_ANY: f->result = bits != 0; break;
                case FC_EMU_ALL: f->result = bits == part; break;
                default: f->result = 0;
            }
        }
        for (unsigned l = 0; l < lanes; ++l)
            if (waiting >> l & 1u) {
                fibers[base + l]->park = RUNNABLE;
                ++released;
            }
    }
    return released;
}

// 0; -2 when the threads of a block did not all pass the same __syncthreads; -4 when a warp
// op could not complete.  `error` says more.
static int run_block(const unsigned* b) {
    const unsigned n = b[0] * b[1] * b[2];
    for (unsigned t = 0; t < n; ++t) {
        fibers[t]->syncs = 0;
        fibers[t]->done = false;
        fibers[t]->park = RUNNABLE;
        fibers[t]->copies.clear();
        fibers[t]->committed = 0;
    }
    for (;;) {  // each round: every runnable thread runs to its next barrier, warp op, or end
        for (unsigned t = 0; t < n; ++t) {
            const Fiber* f = fibers[t];
            if (f->done || f->park != RUNNABLE) continue;
            resume(t, b);
            if (error[0]) return -4;
        }
        const int released = resolve_warps(n);
        if (released < 0) return -4;
        if (released > 0) continue;
        // No warp op pending: every thread waits at a __syncthreads, or has returned.
        for (unsigned t = 1; t < n; ++t)
            if (fibers[t]->syncs != fibers[0]->syncs || fibers[t]->done != fibers[0]->done) {
                fail("the threads of a block did not all pass the same __syncthreads (a return or a branch "
                     "around a barrier): thread 0 %s %ld, thread %u %s %ld", fibers[0]->done ?
                     "has returned after __syncthreads number" : "waits at __syncthreads number",
                     fibers[0]->syncs, t, fibers[t]->done ? "has returned after __syncthreads number"
                     : "waits at __syncthreads number", fibers[t]->syncs);
                return -2;
            }
        if (fibers[0]->done) return 0;
        for (unsigned t = 0; t < n; ++t) fibers[t]->park = RUNNABLE;
    }
}

static int launch(const int* grid, const int* block, void (*fn)(void*), void* arg) {
    const unsigned g[3] = {(unsigned)grid[0], (unsigned)grid[1], (unsigned)grid[2]};
    const unsigned b[3] = {(unsigned)block[0], (unsigned)block[1], (unsigned)block[2]};
    error[0] = 0;
    if (!grow(b[0] * b[1] * b[2])) return -3;
    gridDim = {g[0], g[1], g[2]};
    blockDim = {b[0], b[1], b[2]};
    job = fn;
    job_arg = arg;
    for (unsigned z = 0; z < g[2]; ++z)
        for (unsigned y = 0; y < g[1]; ++y)
            for (unsigned x = 0; x < g[0]; ++x) {
                blockIdx = {x, y, z};
                const int rc = run_block(b);
                if (rc) {  // threads stuck mid-block: start them afresh next time
                    for (Fiber* f : fibers) f->live = false;
                    return rc;
                }
            }
    return 0;
}

// kernel(args...) with args[i] pointing at the i-th argument's value (cuLaunchKernel's convention).
template <class... A> struct Call {
    void (*kernel)(A...);
    void** args;
    template <size_t... I> void go(std::index_sequence<I...>) {
        kernel(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
    }
    static void run(void* self) { static_cast<Call*>(self)->go(std::index_sequence_for<A...>{}); }
};
template <class... A> static int launch_kernel(void (*kernel)(A...), const int* grid, const int* block, void** args) {
    Call<A...> call{kernel, args};
    return launch(grid, block, &Call<A...>::run, &call);
}

// Parameter types as NumPy names ("float32", "int32", ...), pointers as "*float32";
// "?" for what the Python side cannot pass (a struct by value).
template <class T> static std::string type_name() {
    typedef typename std::remove_cv<T>::type U;
    if (std::is_pointer<U>::value) {
        typedef typename std::remove_cv<typename std::remove_pointer<U>::type>::type E;
        if (std::is_same<E, __nv_bfloat16>::value) return "*bfloat16";
        return "*" + (std::is_arithmetic<E>::value ? type_name<E>() : std::string("any"));
    }
    if (std::is_same<U, bool>::value) return "bool";
    if (std::is_floating_point<U>::value) return "float" + std::to_string(8 * sizeof(U));
    if (std::is_integral<U>::value)
        return (std::is_signed<U>::value ? "int" : "uint") + std::to_string(8 * sizeof(U));
    return "?";
}
template <class... A> static const char* signature(void (*)(A...)) {
    static const std::string s = [] { std::string r; ((r += type_name<A>() + ","), ...); return r; }();
    return s.c_str();
}
}  // namespace fc_emu

void __syncthreads() {
    fc_emu::Fiber* f = fc_emu::fibers[fc_emu::current];
    ++f->syncs;
    f->park = fc_emu::AT_BARRIER;
    if (!_setjmp(f->at)) _longjmp(fc_emu::scheduler, 1);
}

unsigned long long fc_emu_warp(int kind, unsigned mask, unsigned long long value, int src, int width) {
    fc_emu::Fiber* f = fc_emu::fibers[fc_emu::current];
    if (width < 1 || width > 32 || (width & (width - 1)))
        fc_emu::fail("thread %u: a shuffle of width %d (a power of 2 up to 32 is needed)", fc_emu::current, width);
    f->kind = kind;
    f->mask = mask;
    f->value = value;
    f->src = src;
    f->park = fc_emu::AT_WARP_OP;
    if (!_setjmp(f->at)) _longjmp(fc_emu::scheduler, 1);
    return f->result;
}

void fc_emu_matrix(int kind, int variant, const void* in, void* out) {
    fc_emu::Fiber* f = fc_emu::fibers[fc_emu::current];
    f->kind = kind;
    f->variant = variant;
    f->mask = 0xffffffffu;
    f->in = in;
    f->out = out;
    f->park = fc_emu::AT_WARP_OP;
    if (!_setjmp(f->at)) _longjmp(fc_emu::scheduler, 1);
}

// cp.async: `size` bytes (4, 8, 16; .cg: 16 only) into shared memory, the first n read from
// src, the rest zero; both addresses aligned to `size`.  Made at once, or (mode "at_wait")
// kept, with src's bytes as they are now, until a cp.async.wait_group lets its group land.
void fc_emu_cp_async(void* dst, const void* src, int size, int n, bool cg) {
    fc_emu::Fiber* f = fc_emu::fibers[fc_emu::current];
    if ((size != 4 && size != 8 && size != 16) || (cg && size != 16) || n < 0 || n > size) {
        fc_emu::fail("thread %u: cp.async%s of %d bytes with src-size %d", fc_emu::current, cg ? ".cg" : ".ca",
                     size, n);
        return;
    }
    if (((unsigned long long)dst % size) || (n > 0 && (unsigned long long)src % size)) {
        fc_emu::fail("thread %u: cp.async of %d bytes from %p to %p: addresses must be %d-byte aligned",
                     fc_emu::current, size, src, dst, size);
        return;
    }
    fc_emu::CpAsync c;
    c.dst = static_cast<unsigned char*>(dst);
    c.size = size;
    c.group = f->committed;
    std::memset(c.data, 0, sizeof c.data);
    if (n > 0) std::memcpy(c.data, src, n);
    if (fc_emu::cp_async_at_wait) f->copies.push_back(c);
    else std::memcpy(c.dst, c.data, size);
}

void fc_emu_cp_async_commit() { ++fc_emu::fibers[fc_emu::current]->committed; }

void fc_emu_cp_async_wait(int n) {
    fc_emu::Fiber* f = fc_emu::fibers[fc_emu::current];
    std::vector<fc_emu::CpAsync> left;
    for (const fc_emu::CpAsync& c : f->copies) {
        if (c.group + (unsigned)n < f->committed) std::memcpy(c.dst, c.data, c.size);
        else left.push_back(c);
    }
    f->copies.swap(left);
}

extern "C" void emu_set_cp_async_at_wait(int on) { fc_emu::cp_async_at_wait = on != 0; }
extern "C" long long emu_ldmatrix_conflicts() { return fc_emu::ldmatrix_conflicts; }

extern "C" const char* emu_error() { return fc_emu::error; }
"""

WRAPPER = r"""
extern "C" int emu_{sym}(const int* grid3, const int* block3, void** args) {{
    return fc_emu::launch_kernel(&{name}, grid3, block3, args);
}}
extern "C" const char* emusig_{sym}() {{ return fc_emu::signature(&{name}); }}
"""

_KERNEL = re.compile(r'(extern\s*"C"\s*)?(?:template\s*<[^<>]*>\s*)?__global__\s+(?:void\s+)?'
                     r'(?:__launch_bounds__\s*\(([^()]*)\)\s*)?(?:void\s+)?(\w+)\s*\(')
_SCALARS = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16, "int32": np.int32,
            "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64, "float32": np.float32,
            "float64": np.float64, "bool": np.bool_, "bfloat16": dtypes.bfloat16}
_CTYPES = {"int8": ctypes.c_int8, "uint8": ctypes.c_uint8, "int16": ctypes.c_int16, "uint16": ctypes.c_uint16,
           "int32": ctypes.c_int32, "uint32": ctypes.c_uint32, "int64": ctypes.c_int64, "uint64": ctypes.c_uint64,
           "float32": ctypes.c_float, "float64": ctypes.c_double, "bool": ctypes.c_bool}

GUARD = 64  # elements of guard zone on each side of a guarded array
SENTINELS = {dtypes.bfloat16: 3.0e38, np.dtype(np.float32): 3.0e38, np.dtype(np.float64): 3.0e38, np.dtype(np.uint8): 0xA5,
             np.dtype(np.int32): -0x5A5A5A5A, np.dtype(np.int64): -0x5A5A5A5A}


def symbol(name: str) -> str:
    """C identifier for a kernel name: ``gemm_tiled<0, 1>`` -> ``gemm_tiled_0_1``."""
    return re.sub(r"\W+", "_", name).strip("_")


def kernels_in(source: str, cxx: str) -> dict:
    """{name: (extern "C"?, max threads from __launch_bounds__ or None)} of the __global__
    functions of a kernel source, read after the preprocessor (macros expanded)."""
    proc = subprocess.run([cxx, "-E", "-P", "-x", "c++", "-std=c++17", "-"], input=source,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"the preprocessor failed:\n{proc.stderr[-4000:]}")
    found = {}
    for extern, bounds, name in _KERNEL.findall(proc.stdout):
        limit = bounds.split(",")[0].strip() if bounds else ""
        found[name] = (bool(extern), int(limit) if limit.isdigit() else None)
    return found


class Emulator:
    """The kernels of one kernels/*.cu file, compiled for the CPU."""

    def __init__(self, filename, lib, names, bounds):
        self.filename, self.names, self._lib, self._bounds = filename, tuple(names), lib, bounds
        self._sigs = {}
        for name in self.names:
            get = getattr(lib, "emusig_" + symbol(name))
            get.restype = ctypes.c_char_p
            self._sigs[name] = [t for t in get().decode().split(",") if t]
            fn = getattr(lib, "emu_" + symbol(name))
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p] * 3
        self._error = lib.emu_error
        self._error.restype = ctypes.c_char_p

    def ldmatrix_conflicts(self) -> int:
        """Extra shared-memory wavefronts (bank conflicts) of every ldmatrix run so far by
        this file's kernels: 0 when each 8x8 matrix was read in one."""
        get = self._lib.emu_ldmatrix_conflicts
        get.restype = ctypes.c_longlong
        return int(get())

    def signature(self, name):
        """The parameter types of a kernel, e.g. ['*float32', '*float32', 'int32']."""
        return list(self._sigs[name])

    def function(self, name, guarded=None, log=None, cp_async="now"):
        """A RawKernel stand-in: ``kernel(grid, block, args)``.  With ``guarded``, every array
        must lie inside one of its buffers; ``log`` (a list) records (name, grid, block).
        ``cp_async``: "now" makes each cp.async copy at once, "at_wait" keeps it until the
        cp.async.wait_group that covers its group (the two ends of what a GPU may do: the
        first shows a copy issued into a buffer other threads still read, the second a
        read before the wait)."""
        assert cp_async in ("now", "at_wait"), f"cp_async must be 'now' or 'at_wait', got {cp_async!r}"
        if name not in self._sigs:
            raise KeyError(f"{name!r} is not an emulated kernel of {self.filename} (have {self.names})")
        sig, fn = self._sigs[name], getattr(self._lib, "emu_" + symbol(name))
        limit = self._bounds.get(name.split("<")[0].strip())

        def kernel(grid, block, args, *, shared_mem=0, stream=None):
            g, b = _dims3(grid, "grid", name), _dims3(block, "block", name)
            assert g[1] <= 65535 and g[2] <= 65535 and g[0] < 2**31, f"{name}: grid {g} too large"
            threads = b[0] * b[1] * b[2]
            assert b[2] <= 64 and threads <= MAX_THREADS, f"{name}: block {b} has too many threads"
            assert limit is None or threads <= limit, f"{name}: {threads} threads > __launch_bounds__({limit})"
            assert shared_mem == 0, f"{name}: dynamic shared memory is not emulated"
            args = tuple(args)
            assert len(args) == len(sig), f"{name} takes {len(sig)} arguments ({sig}), got {len(args)}"
            values = [_value(name, i, t, a, guarded) for i, (t, a) in enumerate(zip(sig, args))]
            argv = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
            if log is not None:
                log.append((name, g, b))
            with _ONE_LAUNCH:
                self._lib.emu_set_cp_async_at_wait(int(cp_async == "at_wait"))
                rc = fn((ctypes.c_int * 3)(*g), (ctypes.c_int * 3)(*b), argv)
                why = self._error().decode() if rc else ""
            assert rc != -3, f"{name}: no memory for {threads} thread stacks"
            assert rc == 0, f"{name} grid {g} block {b}, {why}"
        return kernel


def _dims3(d, what, name):
    d = (d,) if isinstance(d, (int, np.integer)) else tuple(d)
    assert 1 <= len(d) <= 3 and all(isinstance(v, (int, np.integer)) and v >= 1 for v in d), \
        f"{name}: bad {what} {d}"
    return tuple(int(v) for v in d) + (1,) * (3 - len(d))


def _value(name, i, ctype, a, guarded):
    """The ctypes object holding argument i, after checking it against the C type."""
    where = f"{name} argument {i} ({ctype})"
    if ctype.startswith("*"):
        if a is None:
            return ctypes.c_void_p(None)
        assert isinstance(a, np.ndarray), f"{where}: expected an array or None, got {type(a).__name__}"
        assert ctype == "*any" or a.dtype == _SCALARS[ctype[1:]], f"{where}: array of {a.dtype}"
        assert a.flags.c_contiguous, f"{where}: not C-contiguous (kernels ignore strides)"
        assert guarded is None or guarded.owns(a), f"{where}: an array without guard zones"
        return ctypes.c_void_p(a.ctypes.data)
    assert ctype in _SCALARS, f"{where}: a parameter type the emulator cannot pass"
    assert type(a) is _SCALARS[ctype], f"{where}: pass np.{_SCALARS[ctype].__name__}, got {a!r}"
    return _CTYPES[ctype](a.item())


@functools.lru_cache(maxsize=None)
def _build(label: str, names: tuple, source: str | None):
    """An Emulator, or ("skip" | "fail", why): a failure is remembered too, not retried per test."""
    cxx = shutil.which("g++")
    if cxx is None:
        return "skip", "no g++: the CPU emulation of the CUDA C sources needs a host C++ compiler"
    source = _launch.kernel_source(label) if source is None else source
    try:
        found = kernels_in(source, cxx)
    except RuntimeError as e:
        return "fail", f"emulating {label}: {e}"
    wanted = [n for n, (extern, _) in found.items() if extern] + [n for n in names if n not in found]
    if len({symbol(n) for n in wanted}) != len(wanted):
        return "fail", f"kernel names of {label} clash once mangled: {wanted}"
    text = SHIM + "\n" + source + "\n" + ENGINE + "".join(WRAPPER.format(sym=symbol(n), name=n) for n in wanted)
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join((text, version) + CXX_FLAGS).encode()).hexdigest()[:24]
    cache = os.path.join(tempfile.gettempdir(), f"fastcnn-cuda-emu-{os.getuid()}")
    os.makedirs(cache, exist_ok=True)
    stem = os.path.join(cache, f"{symbol(os.path.splitext(label)[0])}-{key}")
    if not os.path.exists(stem + ".so"):
        cpp, tmp = f"{stem}.{os.getpid()}.cpp", f"{stem}.{os.getpid()}.so"
        with open(cpp, "w") as f:
            f.write(text)
        proc = subprocess.run([cxx, *CXX_FLAGS, cpp, "-o", tmp], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 and re.search(r"ucontext\.h|setjmp\.h|sys/mman\.h|c\+\+17", proc.stderr):
            return "skip", f"g++ cannot build the emulator here: {proc.stderr.strip().splitlines()[0]}"
        if proc.returncode != 0:
            return "fail", f"emulating {label}: g++ failed on {cpp}:\n{proc.stderr[-6000:]}"
        os.replace(tmp, stem + ".so")  # atomic: a concurrent session loads a whole file or builds its own
        os.remove(cpp)
    bounds = {n: b for n, (_, b) in found.items()}
    return Emulator(label, ctypes.CDLL(stem + ".so"), wanted, bounds)


def _emulator(built) -> Emulator:
    if isinstance(built, Emulator):
        return built
    kind, why = built
    (pytest.skip if kind == "skip" else pytest.fail)(why)


def load(filename: str, names=()) -> Emulator:
    """The emulator of kernels/<filename>: its extern "C" kernels plus the template instances
    ``names`` (as CuPy name_expressions spell them); built once per session and source.
    Skips the calling test without g++, fails it when the source does not compile."""
    return _emulator(_build(filename, tuple(names), None))


def load_source(label: str, source: str, names=()) -> Emulator:
    """The same for CUDA C source text (the emulator's own tests)."""
    return _emulator(_build(label, tuple(names), source))


def prebuild(*specs) -> None:
    """Build several (filename, names) emulators at once, one compiler process per core."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=max(1, min(len(specs), os.cpu_count() or 1))) as pool:
        for f in [pool.submit(load, filename, names) for filename, names in specs]:
            f.result()


# ---------------------------------------------------------------- arrays with guard zones

class DevicePointer:
    """``a.data`` of a :class:`DeviceArray`: what the backend uses of CuPy's MemoryPointer."""

    def __init__(self, owner):
        self.owner, self.ptr = owner, owner.ctypes.data

    def copy_from_device_async(self, src, size, stream=None):
        """cudaMemcpyAsync device to device: ``size`` bytes from ``src`` (a DevicePointer)."""
        assert isinstance(src, DevicePointer), f"copy from {type(src).__name__}, not a device pointer"
        assert 0 <= size <= min(self.owner.nbytes, src.owner.nbytes), \
            f"copy of {size} bytes: the arrays have {self.owner.nbytes} and {src.owner.nbytes}"
        assert self.owner.flags.c_contiguous and src.owner.flags.c_contiguous, "copy of a strided array"
        ctypes.memmove(self.ptr, src.ptr, size)


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy one: ``a.data`` is a :class:`DevicePointer`
    (``.ptr``, ``.copy_from_device_async``) instead of a memoryview."""

    @property
    def data(self):
        return DevicePointer(self)


class Guarded:
    """NumPy arrays living inside bigger buffers with sentinel guard zones on both sides.

    Each buffer starts 256-byte aligned (as CuPy's allocations); ``shift`` elements more
    in front move every array off 16-byte alignment (shift=1: the float4 paths are off).
    A sentinel read by mistake shows in a result (3e38 for floats); one overwritten fails
    ``intact()``.  The arrays are :class:`DeviceArray` views."""

    def __init__(self, shift=0):
        self.buffers, self.shift = [], shift

    def _place(self, shape, dtype, fill):
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        n = size + 2 * GUARD + self.shift
        raw = np.empty(n * dtype.itemsize + 256, np.uint8)
        skip = (-raw.ctypes.data) % 256
        buf = raw[skip:skip + n * dtype.itemsize].view(dtype)
        buf[...] = _sentinel(dtype)
        start = GUARD + self.shift
        view = buf[start:start + size].reshape(shape).view(DeviceArray)
        if fill is not None:
            view[...] = fill
        self.buffers.append(buf)
        return view

    def wrap(self, a):
        """A guarded copy of ``a``."""
        a = np.asarray(a)
        return self._place(a.shape, a.dtype, a)

    def empty(self, shape, dtype=np.float32, fill=None):
        """A guarded array filled with ``fill`` (default: NaN for floats, 255 otherwise)."""
        if fill is None:
            fill = np.nan if np.dtype(dtype).kind == "f" or np.dtype(dtype) == dtypes.bfloat16 else np.iinfo(dtype).max
        return self._place((shape,) if isinstance(shape, (int, np.integer)) else tuple(shape), dtype, fill)

    def reset(self):
        """Forget the buffers (after checking them with ``intact()``)."""
        self.buffers.clear()

    def owns(self, a):
        """True when ``a`` lies inside one of the guarded buffers."""
        return any(np.shares_memory(a, b) for b in self.buffers)

    def intact(self):
        """True when no guard zone was written."""
        return all(np.all(b[:GUARD] == _sentinel(b.dtype)) and np.all(b[-GUARD:] == _sentinel(b.dtype))
                   for b in self.buffers)


def _sentinel(dtype):
    return SENTINELS.get(np.dtype(dtype), 0)


# ---------------------------------------------------------------- pointing the backend at the emulator

def check(name, a, *, dtype=np.float32, ndim=None, shape=None):
    """_launch.check for NumPy arrays: the same refusals, the same messages."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a CuPy array on the GPU, got {type(a).__name__}")
    _launch.check_layout(name, a, dtype=dtype, ndim=ndim, shape=shape)
    return a


def _cuda_modules():
    return [m for n, m in list(sys.modules.items()) if n.startswith("fastcnn.backend.cuda") and m is not None]


def patch_backend(monkeypatch, guarded, *, sms=132, grid_cap=None, log=None, cp_async="now"):
    """Make fastcnn.backend.cuda run on the emulator for one test: kernel lookup
    (``_launch.function``), array checks, ``out=`` buffers and ``cupy.empty`` (guarded,
    NaN-filled), the SM count the plans see (``sms``, an H200's by default) and optionally a
    cap on grid-stride grids (``grid_cap`` blocks, so that the kernels' loops go round);
    ``cp_async`` as in :meth:`Emulator.function`."""
    from fastcnn.backend.cuda import gemm

    def function(filename, name, name_expressions=()):
        return load(filename, name_expressions).function(name, guarded, log, cp_async)

    def out_array(name, out, shape, dtype=np.float32):
        return guarded.empty(shape, dtype) if out is None else check(name, out, dtype=dtype, shape=shape)

    real_out, real_sms, real_blocks = _launch.out_array, gemm.sm_count, gemm.grid_blocks
    monkeypatch.setattr(_launch, "function", function)
    monkeypatch.setattr(_launch, "compute_capability", lambda: 90)  # __CUDA_ARCH__ 900
    monkeypatch.setattr(_launch, "check", check)
    for mod in _cuda_modules():
        if getattr(mod, "out_array", None) is real_out:
            monkeypatch.setattr(mod, "out_array", out_array)
        if getattr(mod, "sm_count", None) is real_sms:
            monkeypatch.setattr(mod, "sm_count", lambda: sms)
        if grid_cap is not None and getattr(mod, "grid_blocks", None) is real_blocks:
            monkeypatch.setattr(mod, "grid_blocks", lambda n, threads=256: max(1, min(-(-n // threads), grid_cap)))
    fake = types.ModuleType("cupy")
    fake.empty = lambda shape, dtype=np.float32: guarded.empty(shape, dtype)
    fake.zeros = lambda shape, dtype=np.float32: guarded.empty(shape, dtype, fill=0)
    fake.ndarray = np.ndarray
    monkeypatch.setitem(sys.modules, "cupy", fake)
