// kernels/conv_winograd.cu: Winograd F(2x2, 3x3) convolution, fp32 (no TF32), for 3x3
// kernels with stride 1; NHWC input x (N,H,W,C), HWIO weights w (3,3,C,K), output
// y (N,P,Q,K), explicit padding (pt top, pl left; bottom/right only shape P, Q).
//
// Algorithm (Lavin & Gray 2015): the output is cut into 2x2 tiles, T = N*TH*TW tiles
// with TH = ceil(P/2), TW = ceil(Q/2); tile t = (n, th, tw) reads the 4x4 input patch
// at rows 2*th - pt .. +3, columns 2*tw - pl .. +3 (zero outside the image: that is
// the padding, and it also covers the ragged last tile, whose extra outputs are
// computed but never written).  With G (4x3), B^T (4x4), A^T (2x4) of F(2x2,3x3):
//   U[e][c][k] = (G g_ck G^T)[e]        e = 4*i + j < 16   (weights, per call)
//   V[e][t][c] = (B^T d_tc B)[e]                           (input tiles)
//   M[e]       = V[e] (T x C) @ U[e] (C x K)               (16 independent GEMMs)
//   y tile     = A^T M_tk A  (+ bias[k], ReLU)             (2x2 outputs per (t, k))
// The multiplications per output drop from 9*C*K to 16/4 = 4*C*K (2.25x fewer).
// Backward-data of a stride-1 3x3 conv is this forward applied to dy with the weights
// flipped in (r, s) and transposed in (C, K), padding (2-pt, 2-pb, 2-pl, 2-pr): the
// weight transform does the flip/transpose itself (flip = 1), so dgrad costs no extra
// launch.  fastcnn/backend/cuda/conv_winograd.py validates shapes and owns the
// workspaces U (16*C*K), V (16*T*C), M (16*T*K) floats.
//
// Kernels and launches (grid-stride 1-D kernels use 256-thread blocks):
//   winograd_weight_transform  one thread per (c, k); reads 9 weights, writes 16 of U.
//   winograd_input_transform   one thread per (t, c) (c fastest: coalesced reads of x
//                              and writes of V); 16 loads, 16 stores.
//   winograd_gemm              the tiled core of gemm_tile.cuh (128x128x8 block tile,
//                              256 threads, 8x8 register block, float4 loads where
//                              aligned); grid (ceil(T/128), ceil(K/128), 16), z = e.
//   winograd_output_transform  one thread per (t, k) (k fastest); reads 16 of M,
//                              writes the tile's in-range outputs with bias + ReLU.
// All index products fit in int32 (the host checks 16*T*max(C,K), N*H*W*C, N*P*Q*K).
// Last measured: not yet measured on a GPU.
#include "common.cuh"
#include "gemm_tile.cuh"

// U[e][c][k] = (G g G^T)[e], g[r][s] = w[r][s][c][k] (flip = 0) or, for dgrad with w of
// shape (3,3,K,C) (the forward's C and K swapped), g[r][s] = w[2-r][2-s][k][c] (flip = 1).
extern "C" __global__ void __launch_bounds__(256)
winograd_weight_transform(const float* __restrict__ w, float* __restrict__ U, int C, int K, int flip) {
    const int CK = C * K;
    for (int idx = (int)fc_global_tid(); idx < CK; idx += (int)fc_grid_stride()) {
        const int c = idx / K, k = idx - c * K;
        float g[3][3];
#pragma unroll
        for (int r = 0; r < 3; ++r)
#pragma unroll
            for (int s = 0; s < 3; ++s)
                g[r][s] = flip ? w[((2 - r) * 3 + (2 - s)) * CK + k * C + c]
                               : w[(r * 3 + s) * CK + c * K + k];
        float t[4][3];  // G g
#pragma unroll
        for (int s = 0; s < 3; ++s) {
            t[0][s] = g[0][s];
            t[1][s] = 0.5f * (g[0][s] + g[1][s] + g[2][s]);
            t[2][s] = 0.5f * (g[0][s] - g[1][s] + g[2][s]);
            t[3][s] = g[2][s];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // (G g) G^T
            float u[4];
            u[0] = t[i][0];
            u[1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
            u[2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
            u[3] = t[i][2];
#pragma unroll
            for (int j = 0; j < 4; ++j) U[(i * 4 + j) * CK + idx] = u[j];
        }
    }
}

// V[e][t][c] = (B^T d B)[e], d the 4x4 patch of channel c under tile t (zero outside x).
extern "C" __global__ void __launch_bounds__(256)
winograd_input_transform(const float* __restrict__ x, float* __restrict__ V, int N, int H, int W,
                         int C, int TH, int TW, int pt, int pl) {
    const int T = N * TH * TW, TC = T * C;
    for (int idx = (int)fc_global_tid(); idx < TC; idx += (int)fc_grid_stride()) {
        const int t = idx / C, c = idx - t * C;
        const int n = t / (TH * TW), rem = t - n * (TH * TW), th = rem / TW, tw = rem - th * TW;
        const int h0 = 2 * th - pt, w0 = 2 * tw - pl;
        float d[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int h = h0 + i, w = w0 + j;
                d[i][j] = (h >= 0 && h < H && w >= 0 && w < W) ? x[fc_nhwc(n, h, w, c, H, W, C)] : 0.0f;
            }
        float b[4][4];  // B^T d
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            b[0][j] = d[0][j] - d[2][j];
            b[1][j] = d[1][j] + d[2][j];
            b[2][j] = d[2][j] - d[1][j];
            b[3][j] = d[1][j] - d[3][j];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // (B^T d) B
            float* v = V + (fc_i64)(i * 4) * TC + idx;
            v[0] = b[i][0] - b[i][2];
            v[TC] = b[i][1] + b[i][2];
            v[2 * (fc_i64)TC] = b[i][2] - b[i][1];
            v[3 * (fc_i64)TC] = b[i][1] - b[i][3];
        }
    }
}

// Mo[e] (T x K) = relu?(V[e] (T x C) @ U[e] (C x K) + bias), e = blockIdx.z; row-major.
// The host passes bias = null, relu = 0 (they belong to the output transform); with them
// as run-time arguments, as in gemm_tiled, ptxas keeps 128 registers with 0 spills on
// sm_80 (compile-time null spilled 4 bytes there).
extern "C" __global__ void __launch_bounds__(FC_THREADS, 2)
winograd_gemm(const float* __restrict__ V, const float* __restrict__ U, float* __restrict__ Mo,
              int T, int C, int K, const float* __restrict__ bias, int relu) {
    const int m0 = (int)blockIdx.x * FC_BM, n0 = (int)blockIdx.y * FC_BN;
    fc_kcontig_loader la;   // A(t, c) = V[e][t*C + c]
    fc_mncontig_loader lb;  // B(c, k) = U[e][c*K + k]
    la.init(V + (fc_i64)blockIdx.z * T * C, C, T, m0);
    lb.init(U + (fc_i64)blockIdx.z * C * K, K, K, n0);
    float acc[8][8];
    fc_gemm_mainloop(la, lb, 0, C, acc);
    fc_gemm_epilogue(acc, Mo + (fc_i64)blockIdx.z * T * K, T, K, m0, n0, bias, relu);
}

// y[n, 2th+i, 2tw+j, k] = relu?((A^T m A)[i][j] + bias[k]) for the in-range outputs of tile t.
extern "C" __global__ void __launch_bounds__(256)
winograd_output_transform(const float* __restrict__ Mo, const float* __restrict__ bias,
                          float* __restrict__ y, int N, int P, int Q, int K, int TH, int TW, int relu) {
    const int T = N * TH * TW, TK = T * K;
    for (int idx = (int)fc_global_tid(); idx < TK; idx += (int)fc_grid_stride()) {
        const int t = idx / K, k = idx - t * K;
        const int n = t / (TH * TW), rem = t - n * (TH * TW), th = rem / TW, tw = rem - th * TW;
        float m[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) m[i][j] = Mo[(fc_i64)(i * 4 + j) * TK + idx];
        float a[2][4];  // A^T m
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            a[0][j] = m[0][j] + m[1][j] + m[2][j];
            a[1][j] = m[1][j] - m[2][j] - m[3][j];
        }
        const float bk = bias != nullptr ? bias[k] : 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {  // (A^T m) A
            const int p = 2 * th + i;
            if (p >= P) continue;
            float o[2];
            o[0] = a[i][0] + a[i][1] + a[i][2] + bk;
            o[1] = a[i][1] - a[i][2] - a[i][3] + bk;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int q = 2 * tw + j;
                if (q >= Q) continue;
                y[fc_nhwc(n, p, q, k, P, Q, K)] = relu ? fc_relu(o[j]) : o[j];
            }
        }
    }
}
