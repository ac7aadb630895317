// kernels/dropout.cu: dropout forward and backward from a counter-based generator.
//
// What:   y[i] = x[i] * (keep_i ? scale : 0), scale = float32(1 / (1 - rate)); the same
//         kernel serves the forward (x) and the backward (dy): the mask is regenerated
//         from (seed, step, start + i), never stored.  start: the global index of x's first
//         element (data-parallel training: where this process's slice of the batch begins).
//         keep_i: Philox4x32-10 with counter (lo32(e / 4), hi32(e / 4), step[0], 0), e = start + i, and
//         key (lo32(seed), hi32(seed)); word = output[e % 4]; keep_i = word >= threshold,
//         threshold = min(floor(rate * 2^32), 2^32 - 1) (computed on the host).
//         Bit for bit the mask of fastcnn.backend.reference.dropout_keep.
//         Element type T of x and y: float or __nv_bfloat16 (bf16.cuh), one template: the
//         product in float32 on the widened x, a bfloat16 y rounded once where it is stored.
// Launch: 1-D grid-stride, 256 threads per block, any grid; one thread per group of 4
//         consecutive global elements (one Philox call gives the 4 words of the group):
//         (start % 4 + n + 3) / 4 groups.
// Algorithm: Philox4x32-10 (philox.cuh).  step is read from device memory so that a
//         captured CUDA graph draws a new mask on every replay.
// Last measured: H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19): not timed on its own; the single-tower AlexNet training step that
//   runs it (batch 128, SGD momentum, fp32) takes 27.0 ms = 0.55x PyTorch's fp32 graph.
//   The bfloat16 instance: not measured on a GPU yet.

#include "common.cuh"
#include "bf16.cuh"
#include "philox.cuh"

// x, y: n elements (y may be x: each element is read, then written, by one thread).
// step: int32 (1,) in device memory; its bits are the third counter word.
// start >= 0: the global element index of x[0].
template <class T>
__global__ void dropout_apply(const T* x, T* y, long long n,
                              unsigned int key0, unsigned int key1,
                              const int* step, unsigned int threshold,
                              float scale, long long start) {
    const unsigned int c2 = (unsigned int)step[0];
    const long long first = start / 4, groups = (start % 4 + n + 3) / 4;
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
         g += (long long)gridDim.x * blockDim.x) {
        const unsigned long long gu = (unsigned long long)(first + g);
        const fc_u32x4 words = fc_philox4x32_10((unsigned int)(gu & 0xffffffffull),
                                                (unsigned int)(gu >> 32), c2, 0u, key0, key1);
        const long long base = (first + g) * 4 - start;   // local index of the group's word 0
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const long long i = base + k;
            if (i >= 0 && i < n) {
                y[i] = fc_from_float<T>(fc_to_float(x[i]) * (words.v[k] >= threshold ? scale : 0.0f));
            }
        }
    }
}

#ifdef FASTCNN_INSTANTIATE
#define FC_DROPOUT_TYPED(T) \
    template __global__ void dropout_apply<T>(const T*, T*, long long, unsigned int, unsigned int, const int*, \
                                              unsigned int, float, long long);
FC_DROPOUT_TYPED(float)
FC_DROPOUT_TYPED(__nv_bfloat16)
#endif
