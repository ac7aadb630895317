// kernels/elementwise.cu: ReLU and leaky ReLU forward/backward, add, cast, step increment, bias
// gradient, channel copies and row gathers.
//
// What:   relu_forward  y = max(x, 0)            (bit-exact with numpy.maximum(x, 0): NaN
//                                                 propagates, -0.0 gives +0.0)
//         relu_backward dx = dy * (y > 0)          (the reference's product: a NaN or inf dy
//                                                 where y <= 0 gives NaN, a zero keeps dy's sign)
//         leaky_relu_forward  y = x >= 0 ? x : slope * x       (bit-exact with the reference:
//         leaky_relu_backward dx = dy * (x >= 0 ? 1 : slope)     one rounding, NaN propagates)
//         add_arrays    c = a + b
//         cast_elements y = x converted (float32 -> bfloat16 rounds to nearest even, bfloat16
//                       -> float32 is exact)
//         increment     step[0] += 1              (the device-side step counter of a graph)
//         column_sum    out[chunk, c] = sum of x[r, c] over the rows r of one chunk (float out)
//         copy_channels dst[r, dst_start + c] = src[r, src_start + c], c < width: a channel
//                       range of one NHWC tensor into another (the towers of a group conv)
//         gather_rows   dst[i, :] = src[rows[i], :] in 4-byte words (float32 images or int32
//                       labels) or 2-byte ones (bfloat16): a shuffled training batch picked on
//                       the device, straight into a captured step's input buffers; a row index
//                       outside the source fills the row with all-ones bits (NaN / -1), never
//                       reads past it
//         Element type T: float or __nv_bfloat16 (bf16.cuh), one template each; the math is
//         float32 on the exactly widened values and a bfloat16 result is rounded once (to
//         nearest even) where it is stored, so each bfloat16 result is the float32 one rounded.
// Launch: elementwise kernels: 1-D grid-stride, 256 threads per block, any grid.
//         increment: 1 block of 1 thread.
//         copy_channels, gather_rows: block (32, 8), grid (1, any): lanes walk a row's
//         channels / words (one warp reads 32 contiguous words), warps walk rows grid-stride.
//         column_sum: block (32, 8), grid (ceil(C / 32), chunks).  Threads of a warp
//         read 32 consecutive columns of one row (coalesced); the 8 warps of a block
//         walk every 8th row of the chunk; a fixed-order tree in shared memory adds
//         the 8 partial sums.  bias_grad = column_sum over all rows in one chunk, or,
//         when there are many rows, column_sum into a (chunks, C) float buffer followed by
//         column_sum of that buffer (two passes, no atomics: deterministic).
// Algorithm: straightforward memory-bound loops, float32 accumulation.
// Last measured: H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19): not timed on its own; the whole LeNet-5 training step that
//   runs it (batch 200, Adam, one CUDA graph) takes 333 us = 1.36x PyTorch's whole-step graph.
//   leaky_relu_forward / leaky_relu_backward: not measured on a GPU yet.
//   The bfloat16 instances and cast_elements: not measured on a GPU yet.

#include "common.cuh"
#include "bf16.cuh"

#define FC_EW_LOOP(i, n)                                                        \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;        \
         i < (n); i += (long long)gridDim.x * blockDim.x)

template <class T>
__global__ void relu_forward(const T* x, T* y, long long n) {
    FC_EW_LOOP(i, n) {
        const float v = fc_to_float(x[i]);
        y[i] = fc_from_float<T>(v <= 0.0f ? 0.0f : v);
    }
}

template <class T>
__global__ void relu_backward(const T* dy, const T* y, T* dx, long long n) {
    FC_EW_LOOP(i, n) {
        dx[i] = fc_from_float<T>(fc_to_float(dy[i]) * (fc_to_float(y[i]) > 0.0f ? 1.0f : 0.0f));
    }
}

template <class T>
__global__ void leaky_relu_forward(const T* x, T* y, float slope, long long n) {
    FC_EW_LOOP(i, n) {
        const float v = fc_to_float(x[i]);
        y[i] = fc_from_float<T>(v >= 0.0f ? v : slope * v);
    }
}

template <class T>
__global__ void leaky_relu_backward(const T* dy, const T* x, T* dx, float slope, long long n) {
    FC_EW_LOOP(i, n) {
        dx[i] = fc_from_float<T>(fc_to_float(dy[i]) * (fc_to_float(x[i]) >= 0.0f ? 1.0f : slope));
    }
}

template <class T>
__global__ void add_arrays(const T* a, const T* b, T* c, long long n) {
    FC_EW_LOOP(i, n) {
        c[i] = fc_from_float<T>(fc_to_float(a[i]) + fc_to_float(b[i]));
    }
}

template <class S, class D>
__global__ void cast_elements(const S* __restrict__ x, D* __restrict__ y, long long n) {
    FC_EW_LOOP(i, n) {
        y[i] = fc_from_float<D>(fc_to_float(x[i]));
    }
}

extern "C" __global__ void increment(int* step) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        step[0] = step[0] + 1;
    }
}

template <class T>
__global__ void copy_channels(const T* __restrict__ src, T* __restrict__ dst,
                              long long rows, int width, int src_C, int src_start,
                              int dst_C, int dst_start) {
    for (long long r = (long long)blockIdx.y * blockDim.y + threadIdx.y; r < rows;
         r += (long long)gridDim.y * blockDim.y) {
        const T* s = src + r * src_C + src_start;
        T* d = dst + r * dst_C + dst_start;
        for (int c = threadIdx.x; c < width; c += blockDim.x) d[c] = s[c];
    }
}

// src, dst: words of type W, unsigned (float or int32) or unsigned short (bfloat16); void*
// so that any dtype of that size may be passed.  row_len counts words.
template <class W>
__global__ void gather_rows(const void* __restrict__ src_, void* __restrict__ dst_,
                            const int* __restrict__ rows, long long n, long long row_len,
                            long long src_rows) {
    const W* src = static_cast<const W*>(src_);
    W* dst = static_cast<W*>(dst_);
    for (long long i = (long long)blockIdx.y * blockDim.y + threadIdx.y; i < n;
         i += (long long)gridDim.y * blockDim.y) {
        const long long r = rows[i];
        W* d = dst + i * row_len;
        const bool ok = r >= 0 && r < src_rows;
        const W* s = src + (ok ? r : 0) * row_len;
        for (long long c = threadIdx.x; c < row_len; c += blockDim.x) d[c] = ok ? s[c] : (W)~(W)0;
    }
}

#define FC_CS_COLS 32  // columns per block (blockDim.x)
#define FC_CS_ROWS 8   // row lanes per block (blockDim.y)

// x: (rows, C) row-major, float or bfloat16.  Chunk blockIdx.y covers rows
// [blockIdx.y * rows_per_chunk, min(rows, (blockIdx.y + 1) * rows_per_chunk)).
// out: (gridDim.y, C) row-major float: out[blockIdx.y * C + c].
// Must be launched with blockDim = (32, 8).
template <class T>
__global__ void column_sum(const T* x, float* out, long long rows, int C,
                           long long rows_per_chunk) {
    __shared__ float partial[FC_CS_ROWS][FC_CS_COLS + 1];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const long long c = (long long)blockIdx.x * FC_CS_COLS + tx;
    const long long r0 = (long long)blockIdx.y * rows_per_chunk;
    long long r1 = r0 + rows_per_chunk;
    if (r1 > rows) r1 = rows;

    float acc = 0.0f;
    if (c < C) {
        for (long long r = r0 + ty; r < r1; r += FC_CS_ROWS) {
            acc += fc_to_float(x[r * C + c]);
        }
    }
    partial[ty][tx] = acc;
    __syncthreads();
    for (int half = FC_CS_ROWS / 2; half > 0; half >>= 1) {
        if (ty < half) {
            partial[ty][tx] += partial[ty + half][tx];
        }
        __syncthreads();
    }
    if (ty == 0 && c < C) {
        out[(long long)blockIdx.y * C + c] = partial[0][tx];
    }
}

#ifdef FASTCNN_INSTANTIATE
// Keep in step with fastcnn/backend/cuda/step.py (EW_NAMES).
#define FC_EW_TYPED(T) \
    template __global__ void relu_forward<T>(const T*, T*, long long); \
    template __global__ void relu_backward<T>(const T*, const T*, T*, long long); \
    template __global__ void leaky_relu_forward<T>(const T*, T*, float, long long); \
    template __global__ void leaky_relu_backward<T>(const T*, const T*, T*, float, long long); \
    template __global__ void add_arrays<T>(const T*, const T*, T*, long long); \
    template __global__ void copy_channels<T>(const T*, T*, long long, int, int, int, int, int); \
    template __global__ void column_sum<T>(const T*, float*, long long, int, long long);
FC_EW_TYPED(float)
FC_EW_TYPED(__nv_bfloat16)
template __global__ void cast_elements<float, __nv_bfloat16>(const float*, __nv_bfloat16*, long long);
template __global__ void cast_elements<__nv_bfloat16, float>(const __nv_bfloat16*, float*, long long);
template __global__ void gather_rows<unsigned>(const void*, void*, const int*, long long, long long, long long);
template __global__ void gather_rows<unsigned short>(const void*, void*, const int*, long long, long long, long long);
#endif
