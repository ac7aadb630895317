// kernels/bf16.cuh: the bfloat16 element type of the kernels templated over float / bfloat16.
//
// NVRTC has no system headers (cuda_bf16.h is not found without include paths), so this is
// the part of cuda_bf16.h that fastcnn's kernels use, with its names and its semantics:
//   __nv_bfloat16        2 bytes: the upper half of a float32's bits (ml_dtypes.bfloat16 on
//                        the host); __nv_bfloat162 two of them.  No implicit conversions:
//                        kernels convert with the functions below.
//   __float2bfloat16_rn  float -> bfloat16, round to nearest, ties to even: cvt.rn.bf16.f32
//                        on sm_80 and newer, below that cuda_bf16.hpp's integer rounding
//                        (the same results); overflow gives inf, subnormals are kept, a NaN
//                        gives the canonical NaN 0x7FFF
//   __bfloat162float     bfloat16 -> float, exact (a 16-bit shift)
//   __floats2bfloat162_rn, __bfloat1622float2  the same for pairs
//   __bfloat16_as_ushort, __ushort_as_bfloat16 the bits
// and the helpers the templates call: fc_to_float(v) (float or bfloat16 -> float) and
// fc_from_float<T>(f) (float -> T: itself, or rounded once to bfloat16).
// Under the CPU emulator (tests/cuda_emu.py defines FASTCNN_EMULATOR) the types and the
// conversions come from the emulator's shim, cuda_bf16.hpp's host rules in C++, checked bit
// for bit against cuda_bf16.h itself and ml_dtypes (tests/test_emu_bf16.py).
// Include common.cuh before it (_launch.kernel_source pastes one level of includes).
#ifndef FASTCNN_BF16_CUH
#define FASTCNN_BF16_CUH

#ifndef FASTCNN_EMULATOR
struct __align__(2) __nv_bfloat16 { unsigned short __x; };
struct __align__(4) __nv_bfloat162 { __nv_bfloat16 x, y; };

FC_DEVICE unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.__x; }
FC_DEVICE __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) {
    __nv_bfloat16 r;
    r.__x = bits;
    return r;
}

FC_DEVICE __nv_bfloat16 __float2bfloat16_rn(float f) {
    __nv_bfloat16 r;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.__x) : "f"(f));
#else
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.__x = 0x7fffu;
    } else {
        const unsigned rest = u << 16;  // the dropped half: above, at or below the tie
        r.__x = (unsigned short)(u >> 16);
        if (rest > 0x80000000u || (rest == 0x80000000u && (r.__x & 1u))) ++r.__x;
    }
#endif
    return r;
}

FC_DEVICE float __bfloat162float(__nv_bfloat16 v) { return __uint_as_float((unsigned)v.__x << 16); }

FC_DEVICE __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    __nv_bfloat162 r;
    r.x = __float2bfloat16_rn(a);
    r.y = __float2bfloat16_rn(b);
    return r;
}

FC_DEVICE float2 __bfloat1622float2(__nv_bfloat162 v) {
    return make_float2(__bfloat162float(v.x), __bfloat162float(v.y));
}
#endif  // FASTCNN_EMULATOR

FC_DEVICE float fc_to_float(float v) { return v; }
FC_DEVICE float fc_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> FC_DEVICE T fc_from_float(float v);
template <> FC_DEVICE float fc_from_float<float>(float v) { return v; }
template <> FC_DEVICE __nv_bfloat16 fc_from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

#endif  // FASTCNN_BF16_CUH
