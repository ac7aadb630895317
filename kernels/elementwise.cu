// kernels/elementwise.cu: ReLU and leaky ReLU forward/backward, add, step increment, bias gradient.
//
// What:   relu_forward  y = max(x, 0)            (bit-exact with numpy.maximum(x, 0): NaN
//                                                 propagates, -0.0 gives +0.0)
//         relu_backward dx = dy * (y > 0)          (the reference's product: a NaN or inf dy
//                                                 where y <= 0 gives NaN, a zero keeps dy's sign)
//         leaky_relu_forward  y = x >= 0 ? x : slope * x       (bit-exact with the reference:
//         leaky_relu_backward dx = dy * (x >= 0 ? 1 : slope)     one rounding, NaN propagates)
//         add_arrays    c = a + b
//         increment     step[0] += 1              (the device-side step counter of a graph)
//         column_sum    out[chunk, c] = sum of x[r, c] over the rows r of one chunk
//         copy_channels dst[r, dst_start + c] = src[r, src_start + c], c < width: a channel
//                       range of one NHWC tensor into another (the towers of a group conv)
//         gather_rows   dst[i, :] = src[rows[i], :] in 4-byte words (float32 images or int32
//                       labels): a shuffled training batch picked on the device, straight
//                       into a captured step's input buffers; a row index outside the
//                       source fills the row with all-ones bits (NaN / -1), never reads past it
// Launch: elementwise kernels: 1-D grid-stride, 256 threads per block, any grid.
//         increment: 1 block of 1 thread.
//         copy_channels, gather_rows: block (32, 8), grid (1, any): lanes walk a row's
//         channels / words (one warp reads 32 contiguous words), warps walk rows grid-stride.
//         column_sum: block (32, 8), grid (ceil(C / 32), chunks).  Threads of a warp
//         read 32 consecutive columns of one row (coalesced); the 8 warps of a block
//         walk every 8th row of the chunk; a fixed-order tree in shared memory adds
//         the 8 partial sums.  bias_grad = column_sum over all rows in one chunk, or,
//         when there are many rows, column_sum into a (chunks, C) buffer followed by
//         column_sum of that buffer (two passes, no atomics: deterministic).
// Algorithm: straightforward memory-bound loops, float32 accumulation.
// Last measured: H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19): not timed on its own; the whole LeNet-5 training step that
//   runs it (batch 200, Adam, one CUDA graph) takes 333 us = 1.36x PyTorch's whole-step graph.
//   leaky_relu_forward / leaky_relu_backward: not measured on a GPU yet.
//
// Self-contained (no #include): NVRTC has no system headers.

#define FC_EW_LOOP(i, n)                                                        \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;        \
         i < (n); i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void relu_forward(const float* x, float* y, long long n) {
    FC_EW_LOOP(i, n) {
        float v = x[i];
        y[i] = v <= 0.0f ? 0.0f : v;
    }
}

extern "C" __global__ void relu_backward(const float* dy, const float* y, float* dx,
                                         long long n) {
    FC_EW_LOOP(i, n) {
        dx[i] = dy[i] * (y[i] > 0.0f ? 1.0f : 0.0f);
    }
}

extern "C" __global__ void leaky_relu_forward(const float* x, float* y, float slope, long long n) {
    FC_EW_LOOP(i, n) {
        float v = x[i];
        y[i] = v >= 0.0f ? v : slope * v;
    }
}

extern "C" __global__ void leaky_relu_backward(const float* dy, const float* x, float* dx, float slope,
                                               long long n) {
    FC_EW_LOOP(i, n) {
        dx[i] = dy[i] * (x[i] >= 0.0f ? 1.0f : slope);
    }
}

extern "C" __global__ void add_arrays(const float* a, const float* b, float* c, long long n) {
    FC_EW_LOOP(i, n) {
        c[i] = a[i] + b[i];
    }
}

extern "C" __global__ void increment(int* step) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        step[0] = step[0] + 1;
    }
}

extern "C" __global__ void copy_channels(const float* __restrict__ src, float* __restrict__ dst,
                                         long long rows, int width, int src_C, int src_start,
                                         int dst_C, int dst_start) {
    for (long long r = (long long)blockIdx.y * blockDim.y + threadIdx.y; r < rows;
         r += (long long)gridDim.y * blockDim.y) {
        const float* s = src + r * src_C + src_start;
        float* d = dst + r * dst_C + dst_start;
        for (int c = threadIdx.x; c < width; c += blockDim.x) d[c] = s[c];
    }
}

// src, dst: 4-byte words (float or int32; void* so that either dtype may be passed).
extern "C" __global__ void gather_rows(const void* __restrict__ src_, void* __restrict__ dst_,
                                       const int* __restrict__ rows, long long n, long long row_len,
                                       long long src_rows) {
    const unsigned* src = static_cast<const unsigned*>(src_);
    unsigned* dst = static_cast<unsigned*>(dst_);
    for (long long i = (long long)blockIdx.y * blockDim.y + threadIdx.y; i < n;
         i += (long long)gridDim.y * blockDim.y) {
        const long long r = rows[i];
        unsigned* d = dst + i * row_len;
        const bool ok = r >= 0 && r < src_rows;
        const unsigned* s = src + (ok ? r : 0) * row_len;
        for (long long c = threadIdx.x; c < row_len; c += blockDim.x) d[c] = ok ? s[c] : 0xFFFFFFFFu;
    }
}

#define FC_CS_COLS 32  // columns per block (blockDim.x)
#define FC_CS_ROWS 8   // row lanes per block (blockDim.y)

// x: (rows, C) row-major.  Chunk blockIdx.y covers rows
// [blockIdx.y * rows_per_chunk, min(rows, (blockIdx.y + 1) * rows_per_chunk)).
// out: (gridDim.y, C) row-major: out[blockIdx.y * C + c].
// Must be launched with blockDim = (32, 8).
extern "C" __global__ void column_sum(const float* x, float* out, long long rows, int C,
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
            acc += x[r * C + c];
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
