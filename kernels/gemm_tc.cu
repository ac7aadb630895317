// kernels/gemm_tc.cu: GEMM on the tensor cores, C (M x N) = op(A) @ op(B) [+ bias per
// column] [ReLU], products accumulated in fp32; one source (tc_tile.cuh) for two element types:
//   gemm_tf32<TA,TB>      fp32 in and out, operands rounded to tf32 (cvt.rna: round to
//                         nearest, ties away from zero), mma.sync.m16n8k8.  Used under
//                         fastcnn.config.set_float32_matmul_precision("high") only.
//   gemm_bf16<TA,TB,OUT>  bfloat16 A and B, fp32 bias, mma.sync.m16n8k16 on the bf16 values;
//                         C bfloat16 (OUT = 1: the fp32 result rounded once, to nearest even)
//                         or fp32 (OUT = 0: weight gradients, split-K partials).
//   gemm_splitk_reduce_bf16  gemm.cu's gemm_splitk_reduce with a bfloat16 C.
//
// Layouts (row-major), as gemm.cu: TA=0: A is (M, K); TA=1: A is (K, M).
//                                  TB=0: B is (K, N); TB=1: B is (N, K).
// Kernels are template instances fetched through name_expressions ("gemm_tf32<0, 1>",
// "gemm_bf16<0, 1, 1>"): block tile 128 x 64 x 16 (tf32) or x 32 (bf16), 128 threads (4
// warps, 2 x 2, each 64 x 32: 16 mma.sync per K step), operands copied global -> shared by
// cp.async in a 3-stage pipeline, fragments by ldmatrix (bf16 MN-contiguous operands:
// ldmatrix.trans) or conflict-free scalar loads (tf32 MN-contiguous; tc_tile.cuh); grid
// (ceil(M/128), ceil(N/64), splits).  With splits > 1 each z-slice covers kchunk of K and
// writes raw fp32 partials to C + z*M*N (a workspace: the OUT = 0 instance); a reduce
// then sums them in order and applies the epilogue (deterministic).
// Any M, N, K: rows, columns and K past the matrix are zero-filled by the copies
// (16-byte copies where the leading dimension is a multiple of 16 bytes and the base
// 16-byte aligned, element by element otherwise).
// Not measured on a GPU yet (compiled and checked for sm_90/sm_80, run on the CPU emulator).
#include "common.cuh"
#include "mma.cuh"
#include "bf16.cuh"
#include "tc_tile.cuh"

template <class E, int TA, int TB, class OutT>
FC_DEVICE void fc_gemm_tc(const typename E::T* A, const typename E::T* B, OutT* C, int M, int N, int K,
                          const float* bias, int relu, int kchunk) {
    const int m0 = (int)blockIdx.x * FC_TC_BM, n0 = (int)blockIdx.y * FC_TC_BN;
    const int kbegin = (int)blockIdx.z * kchunk;
    const int kend = min(K, kbegin + kchunk);
    fc_tc_matrix_loader<E, FC_TC_BM, TA == 0> la;  // A(m, k): K-contiguous unless transposed
    fc_tc_matrix_loader<E, FC_TC_BN, TB == 1> lb;  // B(n, k): K-contiguous when given as (N, K)
    la.init(A, TA == 0 ? K : M, M, m0);
    lb.init(B, TB == 1 ? K : N, N, n0);
    float acc[4][4][4];
    fc_tc_mainloop<E>(la, lb, kbegin, kend, acc);
    if (gridDim.z > 1) {  // split-K: raw partial sums into this slice of the workspace
        fc_tc_epilogue(acc, C + (fc_i64)blockIdx.z * M * N, M, N, m0, n0, nullptr, 0);
    } else {
        fc_tc_epilogue(acc, C, M, N, m0, n0, bias, relu);
    }
}

template <int TA, int TB>
__global__ void __launch_bounds__(FC_TC_THREADS)
gemm_tf32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
          const float* __restrict__ bias, int relu, int kchunk) {
    fc_gemm_tc<fc_tc_tf32, TA, TB>(A, B, C, M, N, K, bias, relu, kchunk);
}

template <int OUT> struct fc_gemm_out { typedef float T; };
template <> struct fc_gemm_out<1> { typedef fc_bf16 T; };

template <int TA, int TB, int OUT>
__global__ void __launch_bounds__(FC_TC_THREADS)
gemm_bf16(const fc_bf16* __restrict__ A, const fc_bf16* __restrict__ B, typename fc_gemm_out<OUT>::T* __restrict__ C,
          int M, int N, int K, const float* __restrict__ bias, int relu, int kchunk) {
    fc_gemm_tc<fc_tc_bf16, TA, TB>(A, B, C, M, N, K, bias, relu, kchunk);
}

// C[i] = bf16(relu?(sum over z < splits of ws[z*M*N + i] + bias[i % N])), z in fixed order
// (gemm_splitk_reduce's sum), rounded once.  One thread per element (grid-stride).
extern "C" __global__ void gemm_splitk_reduce_bf16(const float* __restrict__ ws, fc_bf16* __restrict__ C,
                                                   int M, int N, int splits,
                                                   const float* __restrict__ bias, int relu) {
    const fc_i64 total = (fc_i64)M * N;
    for (fc_i64 idx = fc_global_tid(); idx < total; idx += fc_grid_stride()) {
        float s = 0.0f;
        for (int z = 0; z < splits; ++z) s += ws[(fc_i64)z * total + idx];
        if (bias != nullptr) s += bias[(int)idx % N];  // M*N < 2^31 (checked by the caller)
        if (relu) s = fc_relu(s);
        fc_tc_store2(C + idx, s, 0.0f, false, false);
    }
}

#ifdef FASTCNN_INSTANTIATE
template __global__ void gemm_tf32<0, 0>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tf32<0, 1>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tf32<1, 0>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tf32<1, 1>(const float*, const float*, float*, int, int, int, const float*, int, int);
#define FC_GEMM_BF16(TA, TB, OUT) \
    template __global__ void gemm_bf16<TA, TB, OUT>(const fc_bf16*, const fc_bf16*, fc_gemm_out<OUT>::T*, int, int, int, \
                                                    const float*, int, int);
FC_GEMM_BF16(0, 0, 0) FC_GEMM_BF16(0, 1, 0) FC_GEMM_BF16(1, 0, 0) FC_GEMM_BF16(1, 1, 0)
FC_GEMM_BF16(0, 0, 1) FC_GEMM_BF16(0, 1, 1) FC_GEMM_BF16(1, 0, 1) FC_GEMM_BF16(1, 1, 1)
#endif
