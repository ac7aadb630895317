// kernels/conv.cu: 2-D convolution, NHWC input x (N,H,W,C), HWIO weights w (R,S,C,K),
// output y (N,P,Q,K), stride (sh, sw), explicit padding (pt top, pl left; bottom and
// right only shape P and Q).  Every kernel takes the same shape tail
//   N, H, W, C, K, R, S, P, Q, sh, sw, pt, pl   (int32).
//
// Implicit GEMM on the tiled core of gemm_tile.cuh (block 128 x BN x 8, 256 threads,
// 8 x TN outputs per thread), the A or B tile gathered from the tensors on the fly,
// no im2col buffer.  Each kernel is a template on TN: <8> is the 128-wide tile
// (variant implicit_gemm), <6> the 96-wide one (implicit_gemm96: no idle quarter for
// 96 output channels, 127 registers so two blocks fit an SM); BN = 128 or 96 below.
// A second template argument STAGES = 2 (variants implicit_gemm_db, implicit_gemm96_db,
// added after run 3, not yet measured) runs the two-buffer main loop of gemm_tile.cuh.
//   conv_fprop_implicit  y  (M=N*P*Q, N=K) = patches(x) (M x R*S*C) @ w (R*S*C x K),
//                        fused + bias[k] and ReLU; grid (ceil(M/128), ceil(K/BN)).
//   conv_dgrad_implicit  dx (M=N*H*W, N=C) = dy gathered per tap (M x R*S*K) @ w^T per tap;
//                        a tap that reaches no output (stride does not divide, or
//                        outside P x Q) contributes zero (waste grows with sh*sw).
//                        grid (ceil(N*H*W/128), ceil(C/BN)).
//   conv_wgrad_implicit  dw (M=R*S*C, N=K) = patches(x)^T (R*S*C x N*P*Q) @ dy (N*P*Q x K);
//                        split-K over N*P*Q: grid (ceil(RSC/128), ceil(K/BN), splits),
//                        partials to a workspace, then gemm_splitk_reduce sums the
//                        slices in order (deterministic, no atomics).
// Thread loaders walk (r, s, c) by increments within a K slice; the forward and
// weight-gradient loaders also step their position from one slice to the next (the
// main loop asks for k0, k0 + 8, ...), so integer division happens at the first slice only;
// padding and edges are zero-filled by a predicate; 16-byte loads when the
// gathered channel count (C for x, K for dy) is a multiple of 4.
// Explicit-im2col variant (the simple one; our tiled GEMM does the product):
//   conv_im2col   col (N*P*Q, R*S*C), columns (r, s, c) like HWIO; one thread per element.
//   conv_col2im   dx from dcol (N*P*Q, R*S*C): one thread per dx element gathers its
//                 R*S taps in (r, s) order (deterministic, no atomics).
// No min-blocks bound on the 128-wide kernels: capping them at 128 registers spills
// (NVRTC sm_90: fprop 16 bytes, wgrad 48 bytes), so they run one 256-thread block per
// SM (8 warps); the 96-wide ones fit 128 registers with no spill and ask for two.
// Last measured: H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19), CUDA events, L2 flushed, medians, vs cuDNN fp32 NCHW in the same run:
//   implicit_gemm fprop AlexNet conv1 (N128 227x227x3 -> 96, 11x11/4) 1333 us = 0.81x cuDNN;
//   conv2 (27x27x96 -> 256, 5x5) 3704 us = 31 TFLOP/s = 0.12x (cuDNN uses a reduced-operation
//   algorithm); conv3 1229 us = 0.40x. im2col dgrad conv2 3546 us; implicit dgrad with stride 4
//   (AlexNet conv1) 702 ms: taps that reach no output still cost work (auto never picks it).
#include "common.cuh"
#include "gemm_tile.cuh"

// A(m, k) = x[n, p*sh-pt+r, q*sw-pl+s, c] for m = (n, p, q), k = (r, s, c); zero in padding.
// Shape of fc_kcontig_loader: thread owns row m0 + tid/2 and k offsets (tid%2)*4 + 0..3.
// Within one filter row r, the S*C values (s, c) are S*C consecutive floats of x starting
// at column w0, so k needs one division (by S*C): sc = s*C + c, and the tap is inside the
// image iff 0 <= w0*C + sc < W*C (c < C keeps w0 + s on the right side of both bounds).
struct fc_fprop_a_loader {
    const float* x;
    int H, SC, WC, h0, w0c, kq;
    int knext, kr_next, sc_next;  // where the next slice (k0 + FC_BK) starts: no division then
    fc_i64 xbase;
    bool vec, row_ok;
    float r[4];
    FC_DEVICE void init(const float* x_, int N, int H_, int W, int C, int S, int P, int Q,
                        int sh, int sw, int pt, int pl, int m0) {
        x = x_; H = H_; SC = S * C; WC = W * C;
        const int m = m0 + (int)threadIdx.x / 2;
        kq = ((int)threadIdx.x % 2) * 4;
        row_ok = m < N * P * Q;
        const int mm = row_ok ? m : 0;
        const int n = mm / (P * Q), pq = mm - n * (P * Q), p = pq / Q, q = pq - p * Q;
        h0 = p * sh - pt;
        w0c = (q * sw - pl) * C;
        xbase = (fc_i64)n * H * W * C;
        vec = (C % 4 == 0) && fc_aligned16(x_);
        knext = -1;
    }
    FC_DEVICE void fetch(int k0, int kend) {
        r[0] = r[1] = r[2] = r[3] = 0.0f;
        const int k = k0 + kq;
        if (!row_ok || k >= kend) return;
        int kr, sc;
        if (k == knext) {  // the main loop's next slice: step from the last one
            kr = kr_next;
            sc = sc_next;
        } else {
            kr = k / SC;
            sc = k - kr * SC;
        }
        knext = k + FC_BK;
        sc_next = sc + FC_BK;
        kr_next = kr;
        while (sc_next >= SC) { sc_next -= SC; ++kr_next; }
        if (vec && k + 3 < kend) {  // C % 4 == 0 and k % 4 == 0: one tap, channels c..c+3
            const int h = h0 + kr, wc = w0c + sc;
            if (h >= 0 && h < H && wc >= 0 && wc < WC) {
                const float4 v = fc_load4(x + xbase + (fc_i64)h * WC + wc);
                r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
            }
            return;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int h = h0 + kr, wc = w0c + sc;
            if (k + i < kend && h >= 0 && h < H && wc >= 0 && wc < WC)
                r[i] = x[xbase + (fc_i64)h * WC + wc];
            if (++sc == SC) { sc = 0; ++kr; }
        }
    }
    FC_DEVICE void store(float (*Sm)[FC_LDS]) const {
        const int m = (int)threadIdx.x / 2;
#pragma unroll
        for (int i = 0; i < 4; ++i) Sm[kq + i][m] = r[i];
    }
};

// A(m, k) = dy[n, p, q, ko] for m = (n, h, w), k = (r, s, ko) when h + pt - r = p*sh and
// w + pl - s = q*sw land on an output; zero otherwise.  Shape of fc_kcontig_loader.
struct fc_dgrad_a_loader {
    const float* dy;
    int P, Q, K, S, sh, sw, hp, wp, kq;
    fc_i64 nbase;
    bool vec, row_ok;
    float r[4];
    FC_DEVICE void init(const float* dy_, int N, int H, int W, int K_, int S_, int P_, int Q_,
                        int sh_, int sw_, int pt, int pl, int m0) {
        dy = dy_; P = P_; Q = Q_; K = K_; S = S_; sh = sh_; sw = sw_;
        const int m = m0 + (int)threadIdx.x / 2;
        kq = ((int)threadIdx.x % 2) * 4;
        row_ok = m < N * H * W;
        const int mm = row_ok ? m : 0;
        const int n = mm / (H * W), hw = mm - n * (H * W), h = hw / W, w = hw - h * W;
        hp = h + pt;
        wp = w + pl;
        nbase = (fc_i64)n * P * Q * K;
        vec = (K % 4 == 0) && fc_aligned16(dy_);
    }
    // Offset of dy[n, p, q, 0] for tap (kr, ks), or -1 when the tap reaches no output.
    FC_DEVICE fc_i64 tap(int kr, int ks) const {
        const int ph = hp - kr, qw = wp - ks;
        if (ph < 0 || qw < 0) return -1;
        const int p = ph / sh, q = qw / sw;
        if (p * sh != ph || q * sw != qw || p >= P || q >= Q) return -1;
        return nbase + ((fc_i64)p * Q + q) * K;
    }
    FC_DEVICE void fetch(int k0, int kend) {
        r[0] = r[1] = r[2] = r[3] = 0.0f;
        const int k = k0 + kq;
        if (!row_ok || k >= kend) return;
        const int rs = k / K;
        int ko = k - rs * K, kr = rs / S, ks = rs - kr * S;
        if (vec && k + 3 < kend) {  // K % 4 == 0 and k % 4 == 0: one tap, channels ko..ko+3
            const fc_i64 off = tap(kr, ks);
            if (off >= 0) {
                const float4 v = fc_load4(dy + off + ko);
                r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
            }
            return;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (k + i < kend) {
                const fc_i64 off = tap(kr, ks);
                if (off >= 0) r[i] = dy[off + ko];
            }
            if (++ko == K) { ko = 0; if (++ks == S) { ks = 0; ++kr; } }
        }
    }
    FC_DEVICE void store(float (*Sm)[FC_LDS]) const {
        const int m = (int)threadIdx.x / 2;
#pragma unroll
        for (int i = 0; i < 4; ++i) Sm[kq + i][m] = r[i];
    }
};

// B(k, c) = w[r, s, c, ko] for k = (r, s, ko): element (mn = c, k) at w[((r*S+s)*C + c)*K + ko].
// Shape of fc_kcontig_loader: thread owns c = n0 + tid/2 and k offsets (tid%2)*4 + 0..3.
struct fc_dgrad_b_loader {
    const float* w;
    int C, K, c, kq;
    bool vec;
    float r[4];
    FC_DEVICE void init(const float* w_, int C_, int K_, int n0) {
        w = w_; C = C_; K = K_;
        c = n0 + (int)threadIdx.x / 2;
        kq = ((int)threadIdx.x % 2) * 4;
        vec = (K % 4 == 0) && fc_aligned16(w_);
    }
    FC_DEVICE void fetch(int k0, int kend) {
        r[0] = r[1] = r[2] = r[3] = 0.0f;
        const int k = k0 + kq;
        if (c >= C || k >= kend) return;
        int rs = k / K, ko = k - rs * K;
        if (vec && k + 3 < kend) {
            const float4 v = fc_load4(w + ((fc_i64)rs * C + c) * K + ko);
            r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
            return;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (k + i < kend) r[i] = w[((fc_i64)rs * C + c) * K + ko];
            if (++ko == K) { ko = 0; ++rs; }
        }
    }
    FC_DEVICE void store(float (*Sm)[FC_LDS]) const {
        const int m = (int)threadIdx.x / 2;
#pragma unroll
        for (int i = 0; i < 4; ++i) Sm[kq + i][m] = r[i];
    }
};

// A(m, j) = x[n, p*sh-pt+r, q*sw-pl+s, c] for m = (r, s, c), j = (n, p, q); zero in padding.
// Shape of fc_mncontig_loader: thread owns j offset tid/32 and rows m0 + (tid%32)*4 + 0..3,
// whose (r, s, c) are fixed for the whole K loop and decoded once here.
struct fc_wgrad_a_loader {
    const float* x;
    int H, W, C, P, Q, sh, sw, pt, pl, kk;
    int jnext, n_next, p_next, q_next;  // where the next slice (j + FC_BK) lands: no division then
    int tr[4], ts[4], tc[4];
    bool ok[4], vec;
    float r[4];
    FC_DEVICE void init(const float* x_, int H_, int W_, int C_, int R, int S, int P_, int Q_,
                        int sh_, int sw_, int pt_, int pl_, int m0) {
        x = x_; H = H_; W = W_; C = C_; P = P_; Q = Q_; sh = sh_; sw = sw_; pt = pt_; pl = pl_;
        kk = (int)threadIdx.x / 32;
        const int m = m0 + ((int)threadIdx.x % 32) * 4;
        const int M = R * S * C;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            ok[i] = m + i < M;
            const int t = ok[i] ? m + i : 0;
            const int rs = t / C;
            tc[i] = t - rs * C;
            tr[i] = rs / S;
            ts[i] = rs - tr[i] * S;
        }
        // C % 4 == 0 and m % 4 == 0: the 4 rows are one tap, channels c..c+3.
        vec = (C % 4 == 0) && (m + 3 < M) && fc_aligned16(x_);
        jnext = -1;
    }
    FC_DEVICE void fetch(int k0, int kend) {
        r[0] = r[1] = r[2] = r[3] = 0.0f;
        const int j = k0 + kk;
        if (j >= kend) return;
        int n, p, q;
        if (j == jnext) {  // the main loop's next slice: step (n, p, q) from the last one
            n = n_next; p = p_next; q = q_next;
        } else {
            n = j / (P * Q);
            const int pq = j - n * (P * Q);
            p = pq / Q;
            q = pq - p * Q;
        }
        jnext = j + FC_BK;
        n_next = n; p_next = p; q_next = q + FC_BK;
        while (q_next >= Q) {
            q_next -= Q;
            if (++p_next == P) { p_next = 0; ++n_next; }
        }
        const int hb = p * sh - pt, wb = q * sw - pl;
        const fc_i64 base = (fc_i64)n * H * W * C;
        if (vec) {
            const int h = hb + tr[0], w = wb + ts[0];
            if (h >= 0 && h < H && w >= 0 && w < W) {
                const float4 v = fc_load4(x + base + ((fc_i64)h * W + w) * C + tc[0]);
                r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
            }
            return;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int h = hb + tr[i], w = wb + ts[i];
            if (ok[i] && h >= 0 && h < H && w >= 0 && w < W)
                r[i] = x[base + ((fc_i64)h * W + w) * C + tc[i]];
        }
    }
    FC_DEVICE void store(float (*Sm)[FC_LDS]) const {
        fc_store4(&Sm[kk][((int)threadIdx.x % 32) * 4], make_float4(r[0], r[1], r[2], r[3]));
    }
};

// TN = 8: 128-wide tiles of output channels; TN = 6: 96-wide (conv.py picks the one
// that pads the channel count less).  The 96-wide tile needs fewer registers, so it
// asks for two blocks per SM.
#define FC_CONV_BOUNDS __launch_bounds__(FC_THREADS, TN == 6 ? 2 : 1)

template <int TN, int STAGES = 1>
__global__ void FC_CONV_BOUNDS
conv_fprop_implicit(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                    float* __restrict__ y, int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                    int sh, int sw, int pt, int pl, int relu) {
    const int m0 = (int)blockIdx.x * FC_BM, n0 = (int)blockIdx.y * fc_tile<TN>::BN;
    fc_fprop_a_loader la;
    la.init(x, N, H, W, C, S, P, Q, sh, sw, pt, pl, m0);
    fc_mncontig_loader lb;  // w as an (R*S*C) x K row-major matrix
    lb.init(w, K, min(K, n0 + fc_tile<TN>::BN), n0);
    float acc[8][TN];
    fc_gemm_mainloop_n<STAGES>(la, lb, 0, R * S * C, acc);
    fc_gemm_epilogue(acc, y, N * P * Q, K, m0, n0, bias, relu);
}

template <int TN, int STAGES = 1>
__global__ void FC_CONV_BOUNDS
conv_dgrad_implicit(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                    int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                    int sh, int sw, int pt, int pl) {
    const int m0 = (int)blockIdx.x * FC_BM, n0 = (int)blockIdx.y * fc_tile<TN>::BN;
    fc_dgrad_a_loader la;
    la.init(dy, N, H, W, K, S, P, Q, sh, sw, pt, pl, m0);
    fc_dgrad_b_loader lb;
    lb.init(w, min(C, n0 + fc_tile<TN>::BN), K, n0);
    float acc[8][TN];
    fc_gemm_mainloop_n<STAGES>(la, lb, 0, R * S * K, acc);
    fc_gemm_epilogue(acc, dx, N * H * W, C, m0, n0, nullptr, 0);
}

// out is dw (R*S*C x K) when gridDim.z == 1, else a workspace of gridDim.z such slices.
template <int TN, int STAGES = 1>
__global__ void FC_CONV_BOUNDS
conv_wgrad_implicit(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out,
                    int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                    int sh, int sw, int pt, int pl, int kchunk) {
    const int m0 = (int)blockIdx.x * FC_BM, n0 = (int)blockIdx.y * fc_tile<TN>::BN;
    const int M = R * S * C, KG = N * P * Q;
    const int kbegin = (int)blockIdx.z * kchunk;
    const int kend = min(KG, kbegin + kchunk);
    fc_wgrad_a_loader la;
    la.init(x, H, W, C, R, S, P, Q, sh, sw, pt, pl, m0);
    fc_mncontig_loader lb;  // dy as an (N*P*Q) x K row-major matrix
    lb.init(dy, K, min(K, n0 + fc_tile<TN>::BN), n0);
    float acc[8][TN];
    fc_gemm_mainloop_n<STAGES>(la, lb, kbegin, kend, acc);
    fc_gemm_epilogue(acc, out + (fc_i64)blockIdx.z * M * K, M, K, m0, n0, nullptr, 0);
}

extern "C" __global__ void __launch_bounds__(256)
conv_im2col(const float* __restrict__ x, float* __restrict__ col, int N, int H, int W, int C, int K,
            int R, int S, int P, int Q, int sh, int sw, int pt, int pl) {
    const int KG = R * S * C;
    const fc_i64 total = (fc_i64)N * P * Q * KG;
    for (fc_i64 idx = fc_global_tid(); idx < total; idx += fc_grid_stride()) {
        const int m = (int)(idx / KG), k = (int)(idx - (fc_i64)m * KG);  // one 64-bit division
        const int n = m / (P * Q), pq = m - n * (P * Q), p = pq / Q, q = pq - p * Q;
        const int rs = k / C, c = k - rs * C, kr = rs / S, ks = rs - kr * S;
        const int h = p * sh - pt + kr, w = q * sw - pl + ks;
        float v = 0.0f;
        if (h >= 0 && h < H && w >= 0 && w < W) v = x[fc_nhwc(n, h, w, c, H, W, C)];
        col[idx] = v;
    }
}

extern "C" __global__ void __launch_bounds__(256)
conv_col2im(const float* __restrict__ dcol, float* __restrict__ dx, int N, int H, int W, int C, int K,
            int R, int S, int P, int Q, int sh, int sw, int pt, int pl) {
    const int KG = R * S * C;
    const fc_i64 total = (fc_i64)N * H * W * C;
    for (fc_i64 i = fc_global_tid(); i < total; i += fc_grid_stride()) {
        const int idx = (int)i;  // dx has < 2^31 elements (checked by the caller)
        const int c = idx % C;
        int t = idx / C;
        const int w = t % W;
        t /= W;
        const int h = t % H, n = t / H;
        float acc = 0.0f;
        for (int kr = 0; kr < R; ++kr) {
            const int ph = h + pt - kr;
            if (ph < 0) break;  // only decreases with kr
            const int p = ph / sh;
            if (p * sh != ph || p >= P) continue;
            for (int ks = 0; ks < S; ++ks) {
                const int qw = w + pl - ks;
                if (qw < 0) break;
                const int q = qw / sw;
                if (q * sw != qw || q >= Q) continue;
                acc += dcol[(((fc_i64)n * P + p) * Q + q) * KG + (kr * S + ks) * C + c];
            }
        }
        dx[idx] = acc;
    }
}

#ifdef FASTCNN_INSTANTIATE
#define FC_CONV_INSTANCES(TN, ST) \
    template __global__ void conv_fprop_implicit<TN, ST>(const float*, const float*, const float*, float*, int, \
        int, int, int, int, int, int, int, int, int, int, int, int, int); \
    template __global__ void conv_dgrad_implicit<TN, ST>(const float*, const float*, float*, int, int, int, int, \
        int, int, int, int, int, int, int, int, int); \
    template __global__ void conv_wgrad_implicit<TN, ST>(const float*, const float*, float*, int, int, int, int, \
        int, int, int, int, int, int, int, int, int, int);
// Keep in step with fastcnn/backend/cuda/conv.py (_TILES).
FC_CONV_INSTANCES(8, 1)
FC_CONV_INSTANCES(6, 1)
FC_CONV_INSTANCES(8, 2)
FC_CONV_INSTANCES(6, 2)
#endif
