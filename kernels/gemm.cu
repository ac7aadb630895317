// kernels/gemm.cu: fp32 GEMM C (M x N) = op(A) @ op(B) [+ bias per column] [ReLU].
//
// Layouts (row-major): TA=0: A is (M, K); TA=1: A is (K, M) (C = A^T @ ...).
//                      TB=0: B is (K, N); TB=1: B is (N, K) (C = ... @ B^T).
// Kernels (template instances are fetched through name_expressions, e.g.
// "gemm_tiled<0, 1>"; FASTCNN_INSTANTIATE instantiates them for the compile test):
//   gemm_naive<TA,TB>   one thread per output element, grid-stride 1-D launch of
//                       256-thread blocks; a dot product over K.  Obviously right.
//   gemm_tiled<TA,TB>   block tile 128x128x8, 256 threads, 8x8 outputs per thread
//                       in registers, 16-byte loads where ld % 4 == 0, K-major
//                       padded shared tiles (see gemm_tile.cuh); grid
//                       (ceil(M/128), ceil(N/128), splits).  With splits > 1 each
//                       z-slice covers kchunk of K and writes raw partials to
//                       C + z*M*N (a workspace); gemm_splitk_reduce then sums them
//                       in order and applies the epilogue (deterministic).
//   gemm_tiled<TA,TB,2> variant tiled_db: the same with two shared buffers and one
//                       barrier per K slice (fc_gemm_mainloop2).  Added after run 3,
//                       not yet measured.
//   gemm_splitk_reduce  (in gemm_tile.cuh) one thread per output element.
// Epilogue fused in both: + bias[col] (bias may be null), then ReLU if relu != 0.
// Last measured: H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19), CUDA events, L2 flushed, medians:
//   tiled 4096^3 3259 us = 42.2 TFLOP/s = 0.82x cuBLAS SGEMM (51.2 TFLOP/s, same run);
//   128x9216x4096 320 us (0.64x cuBLAS), 128x4096x4096 128 us (0.83x); naive 4096^3 0.06x.
#include "common.cuh"
#include "gemm_tile.cuh"

template <int TA, int TB>
__global__ void __launch_bounds__(256) gemm_naive(const float* __restrict__ A, const float* __restrict__ B,
                                                  float* __restrict__ C, int M, int N, int K,
                                                  const float* __restrict__ bias, int relu) {
    const fc_i64 total = (fc_i64)M * N;
    for (fc_i64 idx = fc_global_tid(); idx < total; idx += fc_grid_stride()) {
        const int row = (int)idx / N, col = (int)idx % N;  // M*N < 2^31 (checked by the caller)
        float acc = 0.0f;
        for (int k = 0; k < K; ++k) {
            const float a = TA ? A[(fc_i64)k * M + row] : A[(fc_i64)row * K + k];
            const float b = TB ? B[(fc_i64)col * K + k] : B[(fc_i64)k * N + col];
            acc = fmaf(a, b, acc);
        }
        if (bias != nullptr) acc += bias[col];
        if (relu) acc = fc_relu(acc);
        C[idx] = acc;
    }
}

// op(A) tile loader: TA=0 reads A(m, k) = A[m*K + k] (K-contiguous),
// TA=1 reads A(m, k) = A[k*M + m] (M-contiguous); likewise for B with N.
template <bool KCONTIG> struct fc_loader_for { typedef fc_mncontig_loader type; };
template <> struct fc_loader_for<true> { typedef fc_kcontig_loader type; };

// STAGES = 1: one shared buffer (variant tiled); 2: two, one barrier per slice (tiled_db).
template <int TA, int TB, int STAGES = 1>
__global__ void __launch_bounds__(FC_THREADS, 2) gemm_tiled(const float* __restrict__ A, const float* __restrict__ B,
                                                         float* __restrict__ C, int M, int N, int K,
                                                         const float* __restrict__ bias, int relu, int kchunk) {
    const int m0 = (int)blockIdx.x * FC_BM, n0 = (int)blockIdx.y * FC_BN;
    const int kbegin = (int)blockIdx.z * kchunk;
    const int kend = min(K, kbegin + kchunk);
    typename fc_loader_for<TA == 0>::type la;
    typename fc_loader_for<TB == 1>::type lb;
    la.init(A, TA == 0 ? K : M, M, m0);
    lb.init(B, TB == 1 ? K : N, N, n0);
    float acc[8][8];
    fc_gemm_mainloop_n<STAGES>(la, lb, kbegin, kend, acc);
    if (gridDim.z > 1) {  // split-K: raw partial sums into this slice of the workspace
        fc_gemm_epilogue(acc, C + (fc_i64)blockIdx.z * M * N, M, N, m0, n0, nullptr, 0);
    } else {
        fc_gemm_epilogue(acc, C, M, N, m0, n0, bias, relu);
    }
}

#ifdef FASTCNN_INSTANTIATE
template __global__ void gemm_naive<0, 0>(const float*, const float*, float*, int, int, int, const float*, int);
template __global__ void gemm_naive<0, 1>(const float*, const float*, float*, int, int, int, const float*, int);
template __global__ void gemm_naive<1, 0>(const float*, const float*, float*, int, int, int, const float*, int);
template __global__ void gemm_naive<1, 1>(const float*, const float*, float*, int, int, int, const float*, int);
template __global__ void gemm_tiled<0, 0>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tiled<0, 1>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tiled<1, 0>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tiled<1, 1>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tiled<0, 0, 2>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tiled<0, 1, 2>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tiled<1, 0, 2>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tiled<1, 1, 2>(const float*, const float*, float*, int, int, int, const float*, int, int);
#endif
