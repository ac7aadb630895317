// kernels/gemm_tf32.cu: GEMM on the TF32 tensor cores, C (M x N) = op(A) @ op(B)
// [+ bias per column] [ReLU], fp32 in and out, operands rounded to tf32 (cvt.rna: round
// to nearest, ties away from zero) and products accumulated in fp32.  Used under
// fastcnn.config.set_float32_matmul_precision("high") only.
//
// Layouts (row-major), as gemm.cu: TA=0: A is (M, K); TA=1: A is (K, M).
//                                  TB=0: B is (K, N); TB=1: B is (N, K).
// Kernel (template instances fetched through name_expressions, e.g. "gemm_tf32<0, 1>"):
//   gemm_tf32<TA,TB>  block tile 128 x 64 x 16, 128 threads (4 warps, 2 x 2, each 64 x 32:
//                     16 mma.sync.m16n8k8 per 8-deep step), operands copied global ->
//                     shared by cp.async in a 3-stage pipeline, fragments by ldmatrix
//                     (K-contiguous operands) or conflict-free scalar loads
//                     (tc_tile.cuh); grid (ceil(M/128), ceil(N/64), splits).  With
//                     splits > 1 each z-slice covers kchunk of K and writes raw partials
//                     to C + z*M*N (a workspace); gemm.cu's gemm_splitk_reduce then sums
//                     them in order and applies the epilogue (deterministic).
// Any M, N, K: rows, columns and K past the matrix are zero-filled by the copies
// (16-byte copies where the leading dimension is a multiple of 4 and the base 16-byte
// aligned, 4-byte ones otherwise).
// Not yet measured on a GPU (compiled and checked for sm_90/sm_80, run on the CPU emulator).
#include "common.cuh"
#include "mma.cuh"
#include "tc_tile.cuh"

template <int TA, int TB>
__global__ void __launch_bounds__(FC_TC_THREADS)
gemm_tf32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
          const float* __restrict__ bias, int relu, int kchunk) {
    const int m0 = (int)blockIdx.x * FC_TC_BM, n0 = (int)blockIdx.y * FC_TC_BN;
    const int kbegin = (int)blockIdx.z * kchunk;
    const int kend = min(K, kbegin + kchunk);
    fc_tc_matrix_loader<FC_TC_BM, TA == 0> la;  // A(m, k): K-contiguous unless transposed
    fc_tc_matrix_loader<FC_TC_BN, TB == 1> lb;  // B(n, k): K-contiguous when given as (N, K)
    la.init(A, TA == 0 ? K : M, M, m0);
    lb.init(B, TB == 1 ? K : N, N, n0);
    float acc[4][4][4];
    fc_tc_mainloop(la, lb, kbegin, kend, acc);
    if (gridDim.z > 1) {  // split-K: raw partial sums into this slice of the workspace
        fc_tc_epilogue(acc, C + (fc_i64)blockIdx.z * M * N, M, N, m0, n0, nullptr, 0);
    } else {
        fc_tc_epilogue(acc, C, M, N, m0, n0, bias, relu);
    }
}

#ifdef FASTCNN_INSTANTIATE
template __global__ void gemm_tf32<0, 0>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tf32<0, 1>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tf32<1, 0>(const float*, const float*, float*, int, int, int, const float*, int, int);
template __global__ void gemm_tf32<1, 1>(const float*, const float*, float*, int, int, int, const float*, int, int);
#endif
