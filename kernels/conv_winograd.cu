// kernels/conv_winograd.cu: Winograd F(m x m, R x R) convolution, (m, R) = (2, 3), (4, 3),
// (2, 5) or (4, 5), fp32 (no TF32), for R x R kernels with stride 1; NHWC input x (N,H,W,C),
// HWIO weights w (R,R,C,K), output y (N,P,Q,K), explicit padding (pt top, pl left;
// bottom/right only shape P, Q).  The text below says 3x3; for 5x5 read R = 5 throughout
// (alpha = m + 4, G is alpha x 5, 25 weight loads, dgrad padding 4 - pad).
//
// Algorithm (Lavin & Gray 2015), alpha = m + R - 1, E = alpha^2: the output is cut into m x m
// tiles, T = N*TH*TW tiles with TH = ceil(P/m), TW = ceil(Q/m); tile t = (n, th, tw) reads
// the alpha x alpha input patch at rows m*th - pt .., columns m*tw - pl .. (zero outside
// the image: that is the padding, and it also covers the ragged last tile, whose extra
// outputs are computed but never written).  With G (alpha x 3), B^T, A^T (m x alpha):
//   U[e][c][k] = (G g_ck G^T)[e]        e = alpha*i + j < E  (weights, per call)
//   V[e][t][c] = (B^T d_tc B)[e]                             (input tiles)
//   M[e]       = V[e] (T x C) @ U[e] (C x K)                 (E independent GEMMs)
//   y tile     = A^T M_tk A  (+ bias[k], ReLU)               (m x m outputs per (t, k))
// Multiplications per output: 9*C*K direct, 4*C*K for F(2x2) (16/4), 2.25*C*K for F(4x4)
// (36/16).  F(4x4) uses the points 0, +-1, +-2 (wincnn); its rounding error grows with
// the 8s and 1/24s in A and G but stays ~1e-6 relative in fp32 here.
// 5x5: 25*C*K direct, 9*C*K for F(2x2,5x5) (36/4), 4*C*K for F(4x4,5x5) (64/16, points
// 0, +-1, +-2, +-1/2: float32 error ~5e-6 relative in NumPy on AlexNet conv2).
// Backward-data of a stride-1 3x3 conv is this forward applied to dy with the weights
// flipped in (r, s) and transposed in (C, K), padding (2-pt, 2-pb, 2-pl, 2-pr): the
// weight transform does the flip/transpose itself (flip = 1), so dgrad costs no extra
// launch.  fastcnn/backend/cuda/conv_winograd.py validates shapes and owns the
// workspaces U (E*C*K), V (E*T*C), M (E*T*K) floats.
//
// Kernels and launches (PREFIX winograd, winograd4, winograd5, winograd5x4 for F(2x2,3x3),
// F(4x4,3x3), F(2x2,5x5), F(4x4,5x5); the grid-stride
// 1-D kernels use 256-thread blocks):
//   PREFIX_weight_transform  one thread per (c, k); reads 9 weights, writes E of U.
//   PREFIX_input_transform   one thread per (t, c) (c fastest: coalesced reads of x and
//                            writes of V); alpha^2 loads, E stores.
//   winograd_gemm            the tiled core of gemm_tile.cuh (128x128x8 block tile, 256
//                            threads, 8x8 register block, float4 loads where aligned);
//                            grid (ceil(T/128), ceil(K/128), E), z = e.  winograd_gemm96:
//                            128x96 tiles (8x6 a thread) when K <= 96.
//   PREFIX_output_transform  one thread per (t, k) (k fastest); reads E of M, writes the
//                            tile's in-range outputs with bias + ReLU.
// Backward-weights, F(R x R, m x m) over dy's tiles (section below): PREFIX_input_transform
// as above on x, then
//   PREFIX_wgrad_dy_transform      one thread per (t, k); m^2 loads of dy, E stores.
//   winograd_wgrad_gemm            the same tiled core, both operands t-major; grid
//                                  (ceil(C/128), ceil(K/128), E*splits), T cut into splits.
//   PREFIX_wgrad_output_transform  one thread per (c, k); sums the splits' E values in a
//                                  fixed order, writes R^2 of dw.
// All index products fit in int32 (the host checks E*T*max(C,K), N*H*W*C, N*P*Q*K).
// Last measured: H200 2026-11-28 run 3 (CUDA events, L2 flushed, medians; copy 4178 GB/s read+write), fp32, batch 128, forward vs cuDNN fp32 NCHW in the same run:
//   AlexNet conv3/conv4/conv5 (3x3): winograd4 484/672/457 us = 1.00/1.04/1.05x cuDNN;
//   winograd (F(2x2,3x3)) 622/867/606 us. conv2 (5x5): winograd4 743 us = 0.61x, winograd 1547 us.
//   Backward-data: not reached by run 3's time budget except LeNet conv2 (winograd4 139 us; the
//   direct kernel is faster there).  Backward-weights: added after run 3, not yet run on a GPU
//   (checked on the CPU: compiled for sm_80/sm_90 with 0 spills, run under tests/cuda_emu.py).
#include "common.cuh"
#include "gemm_tile.cuh"

// The 1-D transforms of F(m x m, R x R), alpha = m + R - 1 (Lavin & Gray; wincnn points 0,
// +-1, +-2 for F(4x4,3x3)).  in1d: t = B^T d, w1d: u = G g, out1d: o = A^T v.
template <int M_, int R_> struct fc_wino;
template <> struct fc_wino<2, 3> {
    static constexpr int A = 4;
    static FC_DEVICE void in1d(const float d[4], float t[4]) {
        t[0] = d[0] - d[2]; t[1] = d[1] + d[2]; t[2] = d[2] - d[1]; t[3] = d[1] - d[3];
    }
    static FC_DEVICE void w1d(const float g[3], float u[4]) {
        u[0] = g[0];
        u[1] = 0.5f * (g[0] + g[1] + g[2]);
        u[2] = 0.5f * (g[0] - g[1] + g[2]);
        u[3] = g[2];
    }
    static FC_DEVICE void out1d(const float v[4], float o[2]) {
        o[0] = v[0] + v[1] + v[2]; o[1] = v[1] - v[2] - v[3];
    }
};
template <> struct fc_wino<4, 3> {
    static constexpr int A = 6;
    static FC_DEVICE void in1d(const float d[6], float t[6]) {
        t[0] = fmaf(4.0f, d[0], fmaf(-5.0f, d[2], d[4]));
        t[1] = fmaf(-4.0f, d[1] + d[2], d[3] + d[4]);
        t[2] = fmaf(4.0f, d[1] - d[2], d[4] - d[3]);
        t[3] = fmaf(2.0f, d[3] - d[1], d[4] - d[2]);
        t[4] = fmaf(2.0f, d[1] - d[3], d[4] - d[2]);
        t[5] = fmaf(4.0f, d[1], fmaf(-5.0f, d[3], d[5]));
    }
    static FC_DEVICE void w1d(const float g[3], float u[6]) {
        u[0] = 0.25f * g[0];
        u[1] = (-1.0f / 6.0f) * (g[0] + g[1] + g[2]);
        u[2] = (-1.0f / 6.0f) * (g[0] - g[1] + g[2]);
        u[3] = fmaf(1.0f / 24.0f, g[0], fmaf(1.0f / 12.0f, g[1], (1.0f / 6.0f) * g[2]));
        u[4] = fmaf(1.0f / 24.0f, g[0], fmaf(-1.0f / 12.0f, g[1], (1.0f / 6.0f) * g[2]));
        u[5] = g[2];
    }
    static FC_DEVICE void out1d(const float v[6], float o[4]) {
        const float s12 = v[1] + v[2], d12 = v[1] - v[2], s34 = v[3] + v[4], d34 = v[3] - v[4];
        o[0] = v[0] + s12 + s34;
        o[1] = fmaf(2.0f, d34, d12);
        o[2] = fmaf(4.0f, s34, s12);
        o[3] = fmaf(8.0f, d34, d12) + v[5];
    }
};

// F(m x m, 5x5), generated from the Toom-Cook (Lavin) construction with the points 0, +-1,
// +-2 (m = 2, alpha 6: the same B^T as F(4x4,3x3)) and 0, +-1, +-2, +-1/2 (m = 4, alpha 8),
// plus infinity; checked in NumPy against a direct correlation (float32 error on AlexNet
// conv2, 27x27x96 -> 256 pad 2: 2.4e-6 (m = 2), 4.2e-6 (m = 4) relative in norm).
template <> struct fc_wino<2, 5> {
    static constexpr int A = 6;
    static FC_DEVICE void in1d(const float d[6], float t[6]) {
        t[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
        t[1] = -4.0f * d[1] - 4.0f * d[2] + d[3] + d[4];
        t[2] = 4.0f * d[1] - 4.0f * d[2] - d[3] + d[4];
        t[3] = -2.0f * d[1] - d[2] + 2.0f * d[3] + d[4];
        t[4] = 2.0f * d[1] - d[2] - 2.0f * d[3] + d[4];
        t[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
    }
    static FC_DEVICE void w1d(const float g[5], float u[6]) {
        u[0] = 0.25f * g[0];
        u[1] = -(1.0f / 6.0f) * g[0] - (1.0f / 6.0f) * g[1] - (1.0f / 6.0f) * g[2] - (1.0f / 6.0f) * g[3] - (1.0f / 6.0f) * g[4];
        u[2] = -(1.0f / 6.0f) * g[0] + (1.0f / 6.0f) * g[1] - (1.0f / 6.0f) * g[2] + (1.0f / 6.0f) * g[3] - (1.0f / 6.0f) * g[4];
        u[3] = (1.0f / 24.0f) * g[0] + (1.0f / 12.0f) * g[1] + (1.0f / 6.0f) * g[2] + (1.0f / 3.0f) * g[3] + (2.0f / 3.0f) * g[4];
        u[4] = (1.0f / 24.0f) * g[0] - (1.0f / 12.0f) * g[1] + (1.0f / 6.0f) * g[2] - (1.0f / 3.0f) * g[3] + (2.0f / 3.0f) * g[4];
        u[5] = g[4];
    }
    static FC_DEVICE void out1d(const float v[6], float o[2]) {
        o[0] = v[0] + v[1] + v[2] + v[3] + v[4];
        o[1] = v[1] - v[2] + 2.0f * v[3] - 2.0f * v[4] + v[5];
    }
};
template <> struct fc_wino<4, 5> {
    static constexpr int A = 8;
    static FC_DEVICE void in1d(const float d[8], float t[8]) {
        t[0] = -d[0] + 5.25f * d[2] - 5.25f * d[4] + d[6];
        t[1] = d[1] + d[2] - 4.25f * d[3] - 4.25f * d[4] + d[5] + d[6];
        t[2] = -d[1] + d[2] + 4.25f * d[3] - 4.25f * d[4] - d[5] + d[6];
        t[3] = 0.5f * d[1] + 0.25f * d[2] - 2.5f * d[3] - 1.25f * d[4] + 2.0f * d[5] + d[6];
        t[4] = -0.5f * d[1] + 0.25f * d[2] + 2.5f * d[3] - 1.25f * d[4] - 2.0f * d[5] + d[6];
        t[5] = 2.0f * d[1] + 4.0f * d[2] - 2.5f * d[3] - 5.0f * d[4] + 0.5f * d[5] + d[6];
        t[6] = -2.0f * d[1] + 4.0f * d[2] + 2.5f * d[3] - 5.0f * d[4] - 0.5f * d[5] + d[6];
        t[7] = -d[1] + 5.25f * d[3] - 5.25f * d[5] + d[7];
    }
    static FC_DEVICE void w1d(const float g[5], float u[8]) {
        u[0] = -g[0];
        u[1] = -(2.0f / 9.0f) * g[0] - (2.0f / 9.0f) * g[1] - (2.0f / 9.0f) * g[2] - (2.0f / 9.0f) * g[3] - (2.0f / 9.0f) * g[4];
        u[2] = -(2.0f / 9.0f) * g[0] + (2.0f / 9.0f) * g[1] - (2.0f / 9.0f) * g[2] + (2.0f / 9.0f) * g[3] - (2.0f / 9.0f) * g[4];
        u[3] = (1.0f / 90.0f) * g[0] + (1.0f / 45.0f) * g[1] + (2.0f / 45.0f) * g[2] + (4.0f / 45.0f) * g[3] + (8.0f / 45.0f) * g[4];
        u[4] = (1.0f / 90.0f) * g[0] - (1.0f / 45.0f) * g[1] + (2.0f / 45.0f) * g[2] - (4.0f / 45.0f) * g[3] + (8.0f / 45.0f) * g[4];
        u[5] = (32.0f / 45.0f) * g[0] + (16.0f / 45.0f) * g[1] + (8.0f / 45.0f) * g[2] + (4.0f / 45.0f) * g[3] + (2.0f / 45.0f) * g[4];
        u[6] = (32.0f / 45.0f) * g[0] - (16.0f / 45.0f) * g[1] + (8.0f / 45.0f) * g[2] - (4.0f / 45.0f) * g[3] + (2.0f / 45.0f) * g[4];
        u[7] = g[4];
    }
    static FC_DEVICE void out1d(const float v[8], float o[4]) {
        o[0] = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6];
        o[1] = v[1] - v[2] + 2.0f * v[3] - 2.0f * v[4] + 0.5f * v[5] - 0.5f * v[6];
        o[2] = v[1] + v[2] + 4.0f * v[3] + 4.0f * v[4] + 0.25f * v[5] + 0.25f * v[6];
        o[3] = v[1] - v[2] + 8.0f * v[3] - 8.0f * v[4] + 0.125f * v[5] - 0.125f * v[6] + v[7];
    }
};

// Tile t of the N x TH x TW grid of output tiles: image n, tile row th, tile column tw.
struct fc_wino_tile {
    int n, th, tw;
    FC_DEVICE fc_wino_tile(int t, int TH, int TW) {
        n = t / (TH * TW);
        const int rem = t - n * (TH * TW);
        th = rem / TW;
        tw = rem - th * TW;
    }
};

// F d F^T for a separable 2-D transform whose 1-D part f maps IN values to OUT (f(in, out));
// d is given by columns (dcols[j][i] = d[i][j]); store(i, j, value) for every i, j < OUT.
// Every transform below is one call: the weights' G, the inputs' B^T, the outputs' A^T and
// the weight gradient's G' and A'^T.
template <int IN, int OUT, class F, class Store>
FC_DEVICE void fc_separable(const float (&dcols)[IN][IN], F f, Store store) {
    float half[IN][OUT];  // half[j] = f(column j of d): column j of F d
#pragma unroll
    for (int j = 0; j < IN; ++j) f(dcols[j], half[j]);
#pragma unroll
    for (int i = 0; i < OUT; ++i) {  // row i of (F d) F^T
        float row[IN], v[OUT];
#pragma unroll
        for (int j = 0; j < IN; ++j) row[j] = half[j][i];
        f(row, v);
#pragma unroll
        for (int j = 0; j < OUT; ++j) store(i, j, v[j]);
    }
}

// U[e][c][k] = (G g G^T)[e], e < alpha^2, g[r][s] = w[r][s][c][k] (flip = 0) or, for dgrad
// with w of shape (R,R,K,C) (the forward's C and K swapped), g[r][s] = w[R-1-r][R-1-s][k][c].
template <int M_, int R_>
FC_DEVICE void fc_wino_weight(const float* __restrict__ w, float* __restrict__ U, int C, int K, int flip) {
    typedef fc_wino<M_, R_> X;
    constexpr int A = X::A;
    const int CK = C * K;
    for (int idx = (int)fc_global_tid(); idx < CK; idx += (int)fc_grid_stride()) {
        const int c = idx / K, k = idx - c * K;
        float gt[R_][R_];  // gt[s][r] = g[r][s]: columns of g as rows
#pragma unroll
        for (int r = 0; r < R_; ++r)
#pragma unroll
            for (int s = 0; s < R_; ++s)
                gt[s][r] = flip ? w[((R_ - 1 - r) * R_ + (R_ - 1 - s)) * CK + k * C + c]
                                : w[(r * R_ + s) * CK + c * K + k];
        fc_separable<R_, A>(gt, [](const float* g, float* u) { X::w1d(g, u); },
                            [&](int i, int j, float u) { U[(fc_i64)(i * A + j) * CK + idx] = u; });
    }
}

// V[e][t][c] = (B^T d B)[e], d the alpha x alpha patch of channel c under tile t, whose
// top-left input pixel is (m*th - pt, m*tw - pl); zero outside x.
template <int M_, int R_>
FC_DEVICE void fc_wino_input(const float* __restrict__ x, float* __restrict__ V, int N, int H, int W,
                             int C, int TH, int TW, int pt, int pl) {
    typedef fc_wino<M_, R_> X;
    constexpr int A = X::A;
    const int T = N * TH * TW, TC = T * C;
    for (int idx = (int)fc_global_tid(); idx < TC; idx += (int)fc_grid_stride()) {
        const int t = idx / C, c = idx - t * C;
        const fc_wino_tile tile(t, TH, TW);
        const int n = tile.n, th = tile.th, tw = tile.tw;
        const int h0 = M_ * th - pt, w0 = M_ * tw - pl;
        float dt[A][A];  // dt[j][i] = d[i][j]: columns of d as rows
#pragma unroll
        for (int i = 0; i < A; ++i)
#pragma unroll
            for (int j = 0; j < A; ++j) {
                const int h = h0 + i, w = w0 + j;
                dt[j][i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[fc_nhwc(n, h, w, c, H, W, C)] : 0.0f;
            }
        fc_separable<A, A>(dt, [](const float* d, float* v) { X::in1d(d, v); },
                           [&](int i, int j, float v) { V[(fc_i64)(i * A + j) * TC + idx] = v; });
    }
}

// y[n, m*th+i, m*tw+j, k] = relu?((A^T Mt A)[i][j] + bias[k]) for the in-range outputs of tile t.
template <int M_, int R_>
FC_DEVICE void fc_wino_output(const float* __restrict__ Mo, const float* __restrict__ bias,
                              float* __restrict__ y, int N, int P, int Q, int K, int TH, int TW, int relu) {
    typedef fc_wino<M_, R_> X;
    constexpr int A = X::A;
    const int T = N * TH * TW, TK = T * K;
    for (int idx = (int)fc_global_tid(); idx < TK; idx += (int)fc_grid_stride()) {
        const int t = idx / K, k = idx - t * K;
        const fc_wino_tile tile(t, TH, TW);
        const int n = tile.n, th = tile.th, tw = tile.tw;
        float mt[A][A];  // mt[j][i] = Mt[i][j]
#pragma unroll
        for (int i = 0; i < A; ++i)
#pragma unroll
            for (int j = 0; j < A; ++j) mt[j][i] = Mo[(fc_i64)(i * A + j) * TK + idx];
        const float bk = bias != nullptr ? bias[k] : 0.0f;
        fc_separable<A, M_>(mt, [](const float* m, float* o) { X::out1d(m, o); },
                            [&](int i, int j, float o) {
                                const int p = M_ * th + i, q = M_ * tw + j;
                                if (p < P && q < Q) y[fc_nhwc(n, p, q, k, P, Q, K)] = relu ? fc_relu(o + bk) : o + bk;
                            });
    }
}

// The launchable kernels: winograd_* is F(2x2,3x3) (alpha 4, 16 GEMMs), winograd4_* is
// F(4x4,3x3) (alpha 6, 36 GEMMs), winograd5_* F(2x2,5x5) (alpha 6, 36 GEMMs), winograd5x4_*
// F(4x4,5x5) (alpha 8, 64 GEMMs); winograd_gemm serves all (gridDim.z GEMMs).
#define FC_WINO_KERNELS(PREFIX, M_, R_)                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                                \
    PREFIX##_weight_transform(const float* __restrict__ w, float* __restrict__ U, int C, int K,      \
                              int flip) {                                                            \
        fc_wino_weight<M_, R_>(w, U, C, K, flip);                                                    \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                \
    PREFIX##_input_transform(const float* __restrict__ x, float* __restrict__ V, int N, int H,       \
                             int W, int C, int TH, int TW, int pt, int pl) {                         \
        fc_wino_input<M_, R_>(x, V, N, H, W, C, TH, TW, pt, pl);                                     \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                \
    PREFIX##_output_transform(const float* __restrict__ Mo, const float* __restrict__ bias,          \
                              float* __restrict__ y, int N, int P, int Q, int K, int TH, int TW,     \
                              int relu) {                                                            \
        fc_wino_output<M_, R_>(Mo, bias, y, N, P, Q, K, TH, TW, relu);                               \
    }
FC_WINO_KERNELS(winograd, 2, 3)
FC_WINO_KERNELS(winograd4, 4, 3)
FC_WINO_KERNELS(winograd5, 2, 5)
FC_WINO_KERNELS(winograd5x4, 4, 5)

// ---------------------------------------------------------------- backward-weights
// dw[r][s][c][k] = sum over n, p, q of x[n, p+r-pt, q+s-pl, c] * dy[n, p, q, k].  Cut dy into the
// same m x m tiles t as the forward cuts y: tile t's share of dw is the correlation of the
// alpha x alpha patch of x at (m*th - pt, m*tw - pl) with the m x m "filter" dy_t, R x R outputs:
// Winograd F(R x R, m x m), alpha = m + R - 1 as in the forward's F(m x m, R x R).  Its B^T is
// the forward's (it depends only on alpha and the points), so V is the forward's input
// transform; dy_t takes G' (alpha x m), the result A'^T (R x alpha).  The sum over tiles moves
// inside the transform (both are linear), so it becomes a GEMM over T per element e:
//   V[e][t][c]  = (B^T x_tc B)[e]            PREFIX_input_transform (the forward's kernel)
//   Wt[e][t][k] = (G' dy_tk G'^T)[e]         PREFIX_wgrad_dy_transform
//   Mw[z][e]    = V[e]^T (C x T_z) @ Wt[e] (T_z x K), T split into chunks z (split-K)
//   dw_ck       = A'^T (sum over z of Mw[z][.][c][k]) A'   PREFIX_wgrad_output_transform
// No condition on the padding (x outside the image is zero; a ragged last tile's rows of dy
// past P, Q are zero).  G' and A'^T below were solved exactly (fractions) for the B^T rows
// above and checked against a direct correlation; float32 error on AlexNet conv2 / conv4
// shapes in NumPy: 5e-6 / 2e-6 relative (F(R x R, 4x4)), direct float32 3e-7.
template <int R_, int M_> struct fc_wino_wgrad;  // g1d: u = G' g (m -> alpha); out1d: o = A'^T v
template <> struct fc_wino_wgrad<3, 2> {  // alpha 4
    static FC_DEVICE void g1d(const float g[2], float u[4]) {
        u[0] = g[0];
        u[1] = (1.0f / 2.0f) * g[0] + (1.0f / 2.0f) * g[1];
        u[2] = (1.0f / 2.0f) * g[0] - (1.0f / 2.0f) * g[1];
        u[3] = -g[1];
    }
    static FC_DEVICE void out1d(const float v[4], float o[3]) {
        o[0] = v[0] + v[1] + v[2];
        o[1] = v[1] - v[2];
        o[2] = v[1] + v[2] + v[3];
    }
};
template <> struct fc_wino_wgrad<3, 4> {  // alpha 6
    static FC_DEVICE void g1d(const float g[4], float u[6]) {
        u[0] = (1.0f / 4.0f) * g[0];
        u[1] = -(1.0f / 6.0f) * g[0] - (1.0f / 6.0f) * g[1] - (1.0f / 6.0f) * g[2] - (1.0f / 6.0f) * g[3];
        u[2] = -(1.0f / 6.0f) * g[0] + (1.0f / 6.0f) * g[1] - (1.0f / 6.0f) * g[2] + (1.0f / 6.0f) * g[3];
        u[3] = (1.0f / 24.0f) * g[0] + (1.0f / 12.0f) * g[1] + (1.0f / 6.0f) * g[2] + (1.0f / 3.0f) * g[3];
        u[4] = (1.0f / 24.0f) * g[0] - (1.0f / 12.0f) * g[1] + (1.0f / 6.0f) * g[2] - (1.0f / 3.0f) * g[3];
        u[5] = g[3];
    }
    static FC_DEVICE void out1d(const float v[6], float o[3]) {
        o[0] = v[0] + v[1] + v[2] + v[3] + v[4];
        o[1] = v[1] - v[2] + 2.0f * v[3] - 2.0f * v[4];
        o[2] = v[1] + v[2] + 4.0f * v[3] + 4.0f * v[4] + v[5];
    }
};
template <> struct fc_wino_wgrad<5, 2> {  // alpha 6
    static FC_DEVICE void g1d(const float g[2], float u[6]) {
        u[0] = (1.0f / 4.0f) * g[0];
        u[1] = -(1.0f / 6.0f) * g[0] - (1.0f / 6.0f) * g[1];
        u[2] = -(1.0f / 6.0f) * g[0] + (1.0f / 6.0f) * g[1];
        u[3] = (1.0f / 24.0f) * g[0] + (1.0f / 12.0f) * g[1];
        u[4] = (1.0f / 24.0f) * g[0] - (1.0f / 12.0f) * g[1];
        u[5] = g[1];
    }
    static FC_DEVICE void out1d(const float v[6], float o[5]) {
        o[0] = v[0] + v[1] + v[2] + v[3] + v[4];
        o[1] = v[1] - v[2] + 2.0f * v[3] - 2.0f * v[4];
        o[2] = v[1] + v[2] + 4.0f * v[3] + 4.0f * v[4];
        o[3] = v[1] - v[2] + 8.0f * v[3] - 8.0f * v[4];
        o[4] = v[1] + v[2] + 16.0f * v[3] + 16.0f * v[4] + v[5];
    }
};
template <> struct fc_wino_wgrad<5, 4> {  // alpha 8
    static FC_DEVICE void g1d(const float g[4], float u[8]) {
        u[0] = -g[0];
        u[1] = -(2.0f / 9.0f) * g[0] - (2.0f / 9.0f) * g[1] - (2.0f / 9.0f) * g[2] - (2.0f / 9.0f) * g[3];
        u[2] = -(2.0f / 9.0f) * g[0] + (2.0f / 9.0f) * g[1] - (2.0f / 9.0f) * g[2] + (2.0f / 9.0f) * g[3];
        u[3] = (1.0f / 90.0f) * g[0] + (1.0f / 45.0f) * g[1] + (2.0f / 45.0f) * g[2] + (4.0f / 45.0f) * g[3];
        u[4] = (1.0f / 90.0f) * g[0] - (1.0f / 45.0f) * g[1] + (2.0f / 45.0f) * g[2] - (4.0f / 45.0f) * g[3];
        u[5] = (32.0f / 45.0f) * g[0] + (16.0f / 45.0f) * g[1] + (8.0f / 45.0f) * g[2] + (4.0f / 45.0f) * g[3];
        u[6] = (32.0f / 45.0f) * g[0] - (16.0f / 45.0f) * g[1] + (8.0f / 45.0f) * g[2] - (4.0f / 45.0f) * g[3];
        u[7] = g[3];
    }
    static FC_DEVICE void out1d(const float v[8], float o[5]) {
        o[0] = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6];
        o[1] = v[1] - v[2] + 2.0f * v[3] - 2.0f * v[4] + (1.0f / 2.0f) * v[5] - (1.0f / 2.0f) * v[6];
        o[2] = v[1] + v[2] + 4.0f * v[3] + 4.0f * v[4] + (1.0f / 4.0f) * v[5] + (1.0f / 4.0f) * v[6];
        o[3] = v[1] - v[2] + 8.0f * v[3] - 8.0f * v[4] + (1.0f / 8.0f) * v[5] - (1.0f / 8.0f) * v[6];
        o[4] = v[1] + v[2] + 16.0f * v[3] + 16.0f * v[4] + (1.0f / 16.0f) * v[5] + (1.0f / 16.0f) * v[6] + v[7];
    }
};

// Wt[e][t][k] = (G' g G'^T)[e], g the m x m tile of dy channel k under tile t (zero past P, Q).
template <int R_, int M_>
FC_DEVICE void fc_wino_wgrad_dy(const float* __restrict__ dy, float* __restrict__ Wt, int N, int P, int Q,
                                int K, int TH, int TW) {
    typedef fc_wino_wgrad<R_, M_> X;
    constexpr int A = M_ + R_ - 1;
    const int T = N * TH * TW, TK = T * K;
    for (int idx = (int)fc_global_tid(); idx < TK; idx += (int)fc_grid_stride()) {
        const int t = idx / K, k = idx - t * K;
        const fc_wino_tile tile(t, TH, TW);
        const int n = tile.n, th = tile.th, tw = tile.tw;
        float gt[M_][M_];  // gt[j][i] = g[i][j]: columns of g as rows
#pragma unroll
        for (int i = 0; i < M_; ++i)
#pragma unroll
            for (int j = 0; j < M_; ++j) {
                const int p = M_ * th + i, q = M_ * tw + j;
                gt[j][i] = (p < P && q < Q) ? dy[fc_nhwc(n, p, q, k, P, Q, K)] : 0.0f;
            }
        fc_separable<M_, A>(gt, [](const float* g, float* u) { X::g1d(g, u); },
                            [&](int i, int j, float u) { Wt[(fc_i64)(i * A + j) * TK + idx] = u; });
    }
}

// dw[r][s][c][k] = (A'^T Mt A')[r][s], Mt[e] = sum over z < splits of Mw[z][e][c][k] (fixed order).
template <int R_, int M_>
FC_DEVICE void fc_wino_wgrad_output(const float* __restrict__ Mw, float* __restrict__ dw, int C, int K,
                                    int splits) {
    typedef fc_wino_wgrad<R_, M_> X;
    constexpr int A = M_ + R_ - 1;
    const int CK = C * K;
    for (int idx = (int)fc_global_tid(); idx < CK; idx += (int)fc_grid_stride()) {
        float mt[A][A];  // mt[j][i] = Mt[i][j]
#pragma unroll
        for (int i = 0; i < A; ++i)
#pragma unroll
            for (int j = 0; j < A; ++j) mt[j][i] = 0.0f;
        for (int z = 0; z < splits; ++z) {  // the runtime loop outside: the unrolled ones stay in registers
            const float* part = Mw + (fc_i64)z * (A * A) * CK + idx;
#pragma unroll
            for (int i = 0; i < A; ++i)
#pragma unroll
                for (int j = 0; j < A; ++j) mt[j][i] += part[(fc_i64)(i * A + j) * CK];
        }
        fc_separable<A, R_>(mt, [](const float* m, float* o) { X::out1d(m, o); },
                            [&](int i, int j, float o) { dw[(fc_i64)(i * R_ + j) * CK + idx] = o; });
    }
}

// PREFIX is the forward's prefix of the same (m, R): F(R x R, m x m) shares its alpha and B^T.
#define FC_WINO_WGRAD_KERNELS(PREFIX, M_, R_)                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                                \
    PREFIX##_wgrad_dy_transform(const float* __restrict__ dy, float* __restrict__ Wt, int N, int P,  \
                                int Q, int K, int TH, int TW) {                                      \
        fc_wino_wgrad_dy<R_, M_>(dy, Wt, N, P, Q, K, TH, TW);                                        \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                \
    PREFIX##_wgrad_output_transform(const float* __restrict__ Mw, float* __restrict__ dw, int C,     \
                                    int K, int splits) {                                             \
        fc_wino_wgrad_output<R_, M_>(Mw, dw, C, K, splits);                                          \
    }
FC_WINO_WGRAD_KERNELS(winograd, 2, 3)
FC_WINO_WGRAD_KERNELS(winograd4, 4, 3)
FC_WINO_WGRAD_KERNELS(winograd5, 2, 5)
FC_WINO_WGRAD_KERNELS(winograd5x4, 4, 5)

// Mo[e] (T x K) = relu?(V[e] (T x C) @ U[e] (C x K) + bias), e = blockIdx.z (16, 36 or 64 of them); row-major.
// The host passes bias = null, relu = 0 (they belong to the output transform); with them
// as run-time arguments, as in gemm_tiled, ptxas keeps 128 registers with 0 spills on
// sm_80 (compile-time null spilled 4 bytes there).
// TN = 8: 128-wide tiles of K; TN = 6: 96-wide (winograd_gemm96), for K <= 96 where a
// 128-wide tile idles a quarter or more of its columns (AlexNet conv2's dgrad: K = 96).
template <int TN>
FC_DEVICE void fc_wino_gemm(const float* __restrict__ V, const float* __restrict__ U, float* __restrict__ Mo,
                            int T, int C, int K, const float* __restrict__ bias, int relu) {
    const int m0 = (int)blockIdx.x * FC_BM, n0 = (int)blockIdx.y * fc_tile<TN>::BN;
    fc_kcontig_loader la;   // A(t, c) = V[e][t*C + c]
    fc_mncontig_loader lb;  // B(c, k) = U[e][c*K + k]
    la.init(V + (fc_i64)blockIdx.z * T * C, C, T, m0);
    lb.init(U + (fc_i64)blockIdx.z * C * K, K, min(K, n0 + fc_tile<TN>::BN), n0);
    float acc[8][TN];
    fc_gemm_mainloop(la, lb, 0, C, acc);
    fc_gemm_epilogue(acc, Mo + (fc_i64)blockIdx.z * T * K, T, K, m0, n0, bias, relu);
}
extern "C" __global__ void __launch_bounds__(FC_THREADS, 2)
winograd_gemm(const float* __restrict__ V, const float* __restrict__ U, float* __restrict__ Mo,
              int T, int C, int K, const float* __restrict__ bias, int relu) {
    fc_wino_gemm<8>(V, U, Mo, T, C, K, bias, relu);
}
extern "C" __global__ void __launch_bounds__(FC_THREADS, 2)
winograd_gemm96(const float* __restrict__ V, const float* __restrict__ U, float* __restrict__ Mo,
                int T, int C, int K, const float* __restrict__ bias, int relu) {
    fc_wino_gemm<6>(V, U, Mo, T, C, K, bias, relu);
}

// Mw[z*E + e] (C x K) = V[e]^T @ Wt[e] over the tiles t in [z*chunk, min(T, (z+1)*chunk)): both
// operands are t-major (element (c, t) at V[e][t*C + c], (t, k) at Wt[e][t*K + k]), so both use
// the mn-contiguous loader.  Grid (ceil(C/128), ceil(K/128), E*splits), z = blockIdx.z / E.
// bias = null, relu = 0 from the host, as in winograd_gemm (run-time: no spill).
extern "C" __global__ void __launch_bounds__(FC_THREADS, 2)
winograd_wgrad_gemm(const float* __restrict__ V, const float* __restrict__ Wt, float* __restrict__ Mw,
                    int T, int C, int K, int E, int chunk, const float* __restrict__ bias, int relu) {
    const int e = (int)blockIdx.z % E, z = (int)blockIdx.z / E;
    const int m0 = (int)blockIdx.x * FC_BM, n0 = (int)blockIdx.y * FC_BN;
    fc_mncontig_loader la;  // A(c, t) = V[e][t*C + c]
    fc_mncontig_loader lb;  // B(t, k) = Wt[e][t*K + k]
    la.init(V + (fc_i64)e * T * C, C, C, m0);
    lb.init(Wt + (fc_i64)e * T * K, K, K, n0);
    const int t0 = z * chunk, t1 = min(T, t0 + chunk);
    float acc[8][8];
    fc_gemm_mainloop(la, lb, t0, t1, acc);
    fc_gemm_epilogue(acc, Mw + (fc_i64)blockIdx.z * C * K, C, K, m0, n0, bias, relu);
}
