// kernels/common.cuh: small helpers shared by every kernels/*.cu file.
//
// _launch.kernel_source() pastes this file in place of `#include "common.cuh"`,
// so its text is part of CuPy's cache key.  Keep it small and stable: other
// kernel files depend on every name here.  No system headers (NVRTC has none
// by default).  All names start with fc_ to stay clear of user code.
#ifndef FASTCNN_COMMON_CUH
#define FASTCNN_COMMON_CUH

#define FC_DEVICE __device__ __forceinline__

typedef unsigned char fc_u8;
typedef long long fc_i64;

// ReLU bit-exact with numpy.maximum(x, 0): NaN propagates (NaN <= 0 is false) and
// -0.0 becomes +0.0.
FC_DEVICE float fc_relu(float v) { return v <= 0.0f ? 0.0f : v; }

FC_DEVICE int fc_ceil_div(int a, int b) { return (a + b - 1) / b; }

// Flat index of this thread in a 1-D grid, and the grid-stride step.
FC_DEVICE fc_i64 fc_global_tid() {
    return (fc_i64)blockIdx.x * blockDim.x + threadIdx.x;
}
FC_DEVICE fc_i64 fc_grid_stride() { return (fc_i64)gridDim.x * blockDim.x; }

// Offset of element (n, h, w, c) of an NHWC tensor of shape (N, H, W, C).
FC_DEVICE fc_i64 fc_nhwc(int n, int h, int w, int c, int H, int W, int C) {
    return (((fc_i64)n * H + h) * W + w) * C + c;
}

// True when p is 16-byte aligned (float4 access allowed).
FC_DEVICE bool fc_aligned16(const void* p) {
    return ((unsigned long long)p & 15ull) == 0ull;
}

// 16-byte load / store; p must be 16-byte aligned (check with fc_aligned16 or
// by construction: a CuPy allocation is 256-byte aligned).
FC_DEVICE float4 fc_load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
FC_DEVICE void fc_store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

#endif  // FASTCNN_COMMON_CUH
