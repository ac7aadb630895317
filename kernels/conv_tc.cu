// kernels/conv_tc.cu: 2-D convolution on the tensor cores, NHWC input x (N,H,W,C), HWIO
// weights w (R,S,C,K), output y (N,P,Q,K), stride (sh, sw), explicit padding (pt top, pl
// left); fp32 accumulation; one source (tc_tile.cuh) for two element types:
//   *_tf32  fp32 tensors, operands rounded to tf32 (cvt.rna), mma.sync.m16n8k8.  Used under
//           fastcnn.config.set_float32_matmul_precision("high") only.
//   *_bf16  bfloat16 x, w, dy, mma.sync.m16n8k16 on the bf16 values; forward: fp32 bias,
//           y bfloat16 (rounded once, to nearest even, after bias and ReLU); backward-data:
//           dx bfloat16; backward-weights: dw fp32.
// Every kernel takes conv.cu's shape tail  N, H, W, C, K, R, S, P, Q, sh, sw, pt, pl  (int32)
// and its argument list.
//
// Implicit GEMM, conv.cu's three products (docs/cuda_kernels.md, section 0) on the tensor-core
// core of tc_tile.cuh: block tile 128 x 64 x 16 (tf32) or x 32 (bf16), 128 threads (4 warps
// of 64 x 32, 16 mma.sync per K step), a 3-stage cp.async pipeline; the A or B tile is
// gathered from the tensors straight into shared memory by cp.async, no im2col buffer.
//   conv_fprop_*  y  (M=N*P*Q, N=K) = patches(x) (M x R*S*C) @ w (R*S*C x K), fused
//                 + bias[k] and ReLU; grid (ceil(M/128), ceil(K/64)).
//   conv_dgrad_*  dx (M=N*H*W, N=C) = dy gathered per tap (M x R*S*K) @ w^T per tap; a
//                 tap that reaches no output (stride does not divide, or outside
//                 P x Q) is zero-filled (its work is still done, as in conv.cu);
//                 grid (ceil(N*H*W/128), ceil(C/64)).
//   conv_wgrad_*  dw (M=R*S*C, N=K) = patches(x)^T (R*S*C x N*P*Q) @ dy (N*P*Q x K);
//                 split-K over N*P*Q: grid (ceil(RSC/128), ceil(K/64), splits), fp32
//                 partials to a workspace summed in order by gemm_splitk_reduce (deterministic).
// Shared layouts follow the gathered memory: forward and backward-data A are K-contiguous
// (channels of one tap), backward-data B K-contiguous (output channels of w), backward-
// weights A and the plain B operands MN-contiguous.  A thread copies 16 bytes (VEC = 4
// floats or 8 bf16 channels of one tap) when the gathered channel count is a multiple of
// VEC and the tensor 16-byte aligned, else an element at a time (tc_tile.cuh); padding and
// edges are zero-filled.  Each thread decodes its rows' (n, p, q) or (r, s, c) once; the
// forward loader steps its (r, s*C + c) position from one K tile to the next without dividing.
// Not measured on a GPU yet (compiled and checked for sm_90/sm_80, run on the CPU emulator).
#include "common.cuh"
#include "mma.cuh"
#include "bf16.cuh"
#include "tc_tile.cuh"

// A(m, k) = x[n, p*sh-pt+r, q*sw-pl+s, c] for m = (n, p, q), k = (r, s, c); zero in padding.
// K-contiguous; thread rows tid/4 + 32i (i < 4), k offset (tid%4)*4.  Within one filter row
// r the S*C values (s, c) are consecutive floats of x from column w0, so a tap is inside
// the image iff 0 <= w0*C + sc < W*C (as conv.cu's fc_fprop_a_loader).
template <class E>
struct fc_tc_fprop_a_loader {
    static constexpr bool KCONTIG = true;
    static constexpr int VEC = E::VEC;
    typedef fc_tc_layout<E, FC_TC_BM, true> L;
    typedef typename E::T T;
    const T* x;
    int H, SC, WC, kq, h0[4], w0c[4];
    mutable int knext, kr_next, sc_next;  // where the next tile (k + 16) starts: no division then
    fc_i64 xbase[4];
    bool ok[4], vec;
    FC_DEVICE void init(const T* x_, int N, int H_, int W, int C, int S, int P, int Q,
                        int sh, int sw, int pt, int pl, int m0) {
        x = x_; H = H_; SC = S * C; WC = W * C;
        kq = ((int)threadIdx.x % 4) * VEC;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + (int)threadIdx.x / 4 + 32 * i;
            ok[i] = m < N * P * Q;
            const int mm = ok[i] ? m : 0;
            const int n = mm / (P * Q), pq = mm - n * (P * Q), p = pq / Q, q = pq - p * Q;
            h0[i] = p * sh - pt;
            w0c[i] = (q * sw - pl) * C;
            xbase[i] = (fc_i64)n * H * W * C;
        }
        vec = (C % VEC == 0) && fc_aligned16(x_);
        knext = -1;
    }
    FC_DEVICE void issue(T* Sm, int k0, int kend) const {
        const int k = k0 + kq;
        int kr, sc;
        if (k == knext) {
            kr = kr_next;
            sc = sc_next;
        } else {
            kr = k / SC;
            sc = k - kr * SC;
        }
        knext = k + E::BK;
        kr_next = kr;
        sc_next = sc + E::BK;
        while (sc_next >= SC) { sc_next -= SC; ++kr_next; }
        T* dst = Sm + ((int)threadIdx.x / 4) * L::LD + kq;
        if (vec) {  // C % VEC == 0, k % VEC == 0: one tap, channels c..c+VEC-1 (and kend = R*S*C: all or none)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int h = h0[i] + kr, wc = w0c[i] + sc;
                const bool in = ok[i] && k < kend && h >= 0 && h < H && wc >= 0 && wc < WC;
                fc_cp_async16(dst + 32 * i * L::LD, in ? x + xbase[i] + (fc_i64)h * WC + wc : x, in ? 16 : 0);
            }
            return;
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int h = h0[i] + kr, wc = w0c[i] + sc;
                const bool in = ok[i] && k + e < kend && h >= 0 && h < H && wc >= 0 && wc < WC;
                E::copy1(dst + 32 * i * L::LD + e, in ? x + xbase[i] + (fc_i64)h * WC + wc : x, in);
            }
            if (++sc == SC) { sc = 0; ++kr; }
        }
    }
};

// A(m, k) = dy[n, p, q, ko] for m = (n, h, w), k = (r, s, ko) when h + pt - r = p*sh and
// w + pl - s = q*sw land on an output; zero otherwise.  K-contiguous, rows as above.
template <class E>
struct fc_tc_dgrad_a_loader {
    static constexpr bool KCONTIG = true;
    static constexpr int VEC = E::VEC;
    typedef fc_tc_layout<E, FC_TC_BM, true> L;
    typedef typename E::T T;
    const T* dy;
    int P, Q, K, S, sh, sw, kq, hp[4], wp[4];
    fc_i64 nbase[4];
    bool ok[4], vec;
    FC_DEVICE void init(const T* dy_, int N, int H, int W, int K_, int S_, int P_, int Q_,
                        int sh_, int sw_, int pt, int pl, int m0) {
        dy = dy_; P = P_; Q = Q_; K = K_; S = S_; sh = sh_; sw = sw_;
        kq = ((int)threadIdx.x % 4) * VEC;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + (int)threadIdx.x / 4 + 32 * i;
            ok[i] = m < N * H * W;
            const int mm = ok[i] ? m : 0;
            const int n = mm / (H * W), hw = mm - n * (H * W), h = hw / W, w = hw - h * W;
            hp[i] = h + pt;
            wp[i] = w + pl;
            nbase[i] = (fc_i64)n * P * Q * K;
        }
        vec = (K % VEC == 0) && fc_aligned16(dy_);
    }
    // Offset of dy[n, p, q, 0] for row i and tap (kr, ks), or -1 when the tap reaches no output.
    FC_DEVICE fc_i64 tap(int i, int kr, int ks) const {
        const int ph = hp[i] - kr, qw = wp[i] - ks;
        if (!ok[i] || ph < 0 || qw < 0) return -1;
        const int p = ph / sh, q = qw / sw;
        if (p * sh != ph || q * sw != qw || p >= P || q >= Q) return -1;
        return nbase[i] + ((fc_i64)p * Q + q) * K;
    }
    FC_DEVICE void issue(T* Sm, int k0, int kend) const {
        const int k = k0 + kq;
        const int rs = k / K;
        int ko = k - rs * K, kr = rs / S, ks = rs - kr * S;
        T* dst = Sm + ((int)threadIdx.x / 4) * L::LD + kq;
        if (vec) {  // K % VEC == 0, k % VEC == 0: one tap, channels ko..ko+VEC-1
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const fc_i64 off = k < kend ? tap(i, kr, ks) : -1;
                fc_cp_async16(dst + 32 * i * L::LD, off >= 0 ? dy + off + ko : dy, off >= 0 ? 16 : 0);
            }
            return;
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const fc_i64 off = k + e < kend ? tap(i, kr, ks) : -1;
                E::copy1(dst + 32 * i * L::LD + e, off >= 0 ? dy + off + ko : dy, off >= 0);
            }
            if (++ko == K) { ko = 0; if (++ks == S) { ks = 0; ++kr; } }
        }
    }
};

// B(k, c) = w[r, s, c, ko] for k = (r, s, ko): element (mn = c, k) at w[((r*S+s)*C + c)*K + ko].
// K-contiguous; thread rows c = n0 + tid/4 + 32i (i < 2), k offset (tid%4)*4.
template <class E>
struct fc_tc_dgrad_b_loader {
    static constexpr bool KCONTIG = true;
    static constexpr int VEC = E::VEC;
    typedef fc_tc_layout<E, FC_TC_BN, true> L;
    typedef typename E::T T;
    const T* w;
    int C, K, n0, kq;
    bool vec;
    FC_DEVICE void init(const T* w_, int C_, int K_, int n0_) {
        w = w_; C = C_; K = K_; n0 = n0_;
        kq = ((int)threadIdx.x % 4) * VEC;
        vec = (K % VEC == 0) && fc_aligned16(w_);
    }
    FC_DEVICE void issue(T* Sm, int k0, int kend) const {
        const int k = k0 + kq;
        int rs = k / K, ko = k - rs * K;
        T* dst = Sm + ((int)threadIdx.x / 4) * L::LD + kq;
        if (vec) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int c = n0 + (int)threadIdx.x / 4 + 32 * i;
                const bool in = c < C && k < kend;
                fc_cp_async16(dst + 32 * i * L::LD, in ? w + ((fc_i64)rs * C + c) * K + ko : w, in ? 16 : 0);
            }
            return;
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int c = n0 + (int)threadIdx.x / 4 + 32 * i;
                const bool in = c < C && k + e < kend;
                E::copy1(dst + 32 * i * L::LD + e, in ? w + ((fc_i64)rs * C + c) * K + ko : w, in);
            }
            if (++ko == K) { ko = 0; ++rs; }
        }
    }
};

// A(m, j) = x[n, p*sh-pt+r, q*sw-pl+s, c] for m = (r, s, c), j = (n, p, q); zero in padding.
// MN-contiguous; the thread's VEC rows m0 + (tid % PER_ROW)*VEC + e are fixed, their (r, s, c)
// decoded once; its k offsets are tid/PER_ROW + KSTEP*i (fc_tc_chunks).
template <class E>
struct fc_tc_wgrad_a_loader {
    static constexpr bool KCONTIG = false;
    static constexpr int VEC = E::VEC;
    typedef fc_tc_layout<E, FC_TC_BM, false> L;
    typedef fc_tc_chunks<E, FC_TC_BM> Ch;
    typedef typename E::T T;
    const T* x;
    int H, W, C, P, Q, sh, sw, pt, pl, tr[VEC], ts[VEC], tc[VEC];
    bool ok[VEC], vec;
    FC_DEVICE void init(const T* x_, int H_, int W_, int C_, int R, int S, int P_, int Q_,
                        int sh_, int sw_, int pt_, int pl_, int m0) {
        x = x_; H = H_; W = W_; C = C_; P = P_; Q = Q_; sh = sh_; sw = sw_; pt = pt_; pl = pl_;
        const int m = m0 + ((int)threadIdx.x % Ch::PER_ROW) * VEC, M = R * S * C;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            ok[e] = m + e < M;
            const int t = ok[e] ? m + e : 0;
            const int rs = t / C;
            tc[e] = t - rs * C;
            tr[e] = rs / S;
            ts[e] = rs - tr[e] * S;
        }
        // the VEC rows: one tap, channels c..c+VEC-1
        vec = (C % VEC == 0) && (m + VEC - 1 < M) && fc_aligned16(x_);
    }
    FC_DEVICE void issue(T* Sm, int k0, int kend) const {
#pragma unroll
        for (int i = 0; i < Ch::COUNT; ++i) {
            const int kr = (int)threadIdx.x / Ch::PER_ROW + Ch::KSTEP * i, j = k0 + kr;
            T* dst = Sm + kr * L::LD + ((int)threadIdx.x % Ch::PER_ROW) * VEC;
            const int jj = j < kend ? j : 0;
            const int n = jj / (P * Q), pq = jj - n * (P * Q), p = pq / Q, q = pq - p * Q;
            const int hb = p * sh - pt, wb = q * sw - pl;
            const fc_i64 base = (fc_i64)n * H * W * C;
            if (vec) {
                const int h = hb + tr[0], w = wb + ts[0];
                const bool in = j < kend && h >= 0 && h < H && w >= 0 && w < W;
                fc_cp_async16(dst, in ? x + base + ((fc_i64)h * W + w) * C + tc[0] : x, in ? 16 : 0);
                continue;
            }
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const int h = hb + tr[e], w = wb + ts[e];
                const bool in = j < kend && ok[e] && h >= 0 && h < H && w >= 0 && w < W;
                E::copy1(dst + e, in ? x + base + ((fc_i64)h * W + w) * C + tc[e] : x, in);
            }
        }
    }
};

template <class E, class OutT>
FC_DEVICE void fc_conv_fprop_tc(const typename E::T* x, const typename E::T* w, const float* bias, OutT* y,
                                int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                                int sh, int sw, int pt, int pl, int relu) {
    const int m0 = (int)blockIdx.x * FC_TC_BM, n0 = (int)blockIdx.y * FC_TC_BN;
    fc_tc_fprop_a_loader<E> la;
    la.init(x, N, H, W, C, S, P, Q, sh, sw, pt, pl, m0);
    fc_tc_matrix_loader<E, FC_TC_BN, false> lb;  // w as an (R*S*C) x K row-major matrix
    lb.init(w, K, K, n0);
    float acc[4][4][4];
    fc_tc_mainloop<E>(la, lb, 0, R * S * C, acc);
    fc_tc_epilogue(acc, y, N * P * Q, K, m0, n0, bias, relu);
}

template <class E, class OutT>
FC_DEVICE void fc_conv_dgrad_tc(const typename E::T* dy, const typename E::T* w, OutT* dx,
                                int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                                int sh, int sw, int pt, int pl) {
    const int m0 = (int)blockIdx.x * FC_TC_BM, n0 = (int)blockIdx.y * FC_TC_BN;
    fc_tc_dgrad_a_loader<E> la;
    la.init(dy, N, H, W, K, S, P, Q, sh, sw, pt, pl, m0);
    fc_tc_dgrad_b_loader<E> lb;
    lb.init(w, C, K, n0);
    float acc[4][4][4];
    fc_tc_mainloop<E>(la, lb, 0, R * S * K, acc);
    fc_tc_epilogue(acc, dx, N * H * W, C, m0, n0, nullptr, 0);
}

// out is dw (R*S*C x K, fp32) when gridDim.z == 1, else a workspace of gridDim.z such slices.
template <class E>
FC_DEVICE void fc_conv_wgrad_tc(const typename E::T* x, const typename E::T* dy, float* out,
                                int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                                int sh, int sw, int pt, int pl, int kchunk) {
    const int m0 = (int)blockIdx.x * FC_TC_BM, n0 = (int)blockIdx.y * FC_TC_BN;
    const int M = R * S * C, KG = N * P * Q;
    const int kbegin = (int)blockIdx.z * kchunk;
    const int kend = min(KG, kbegin + kchunk);
    fc_tc_wgrad_a_loader<E> la;
    la.init(x, H, W, C, R, S, P, Q, sh, sw, pt, pl, m0);
    fc_tc_matrix_loader<E, FC_TC_BN, false> lb;  // dy as an (N*P*Q) x K row-major matrix
    lb.init(dy, K, K, n0);
    float acc[4][4][4];
    fc_tc_mainloop<E>(la, lb, kbegin, kend, acc);
    fc_tc_epilogue(acc, out + (fc_i64)blockIdx.z * M * K, M, K, m0, n0, nullptr, 0);
}

#define FC_CONV_DIMS int N, int H, int W, int C, int K, int R, int S, int P, int Q, int sh, int sw, int pt, int pl
#define FC_CONV_ARGS N, H, W, C, K, R, S, P, Q, sh, sw, pt, pl

extern "C" __global__ void __launch_bounds__(FC_TC_THREADS)
conv_fprop_tf32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                float* __restrict__ y, FC_CONV_DIMS, int relu) {
    fc_conv_fprop_tc<fc_tc_tf32>(x, w, bias, y, FC_CONV_ARGS, relu);
}

extern "C" __global__ void __launch_bounds__(FC_TC_THREADS)
conv_dgrad_tf32(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, FC_CONV_DIMS) {
    fc_conv_dgrad_tc<fc_tc_tf32>(dy, w, dx, FC_CONV_ARGS);
}

extern "C" __global__ void __launch_bounds__(FC_TC_THREADS)
conv_wgrad_tf32(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out,
                FC_CONV_DIMS, int kchunk) {
    fc_conv_wgrad_tc<fc_tc_tf32>(x, dy, out, FC_CONV_ARGS, kchunk);
}

extern "C" __global__ void __launch_bounds__(FC_TC_THREADS)
conv_fprop_bf16(const fc_bf16* __restrict__ x, const fc_bf16* __restrict__ w, const float* __restrict__ bias,
                fc_bf16* __restrict__ y, FC_CONV_DIMS, int relu) {
    fc_conv_fprop_tc<fc_tc_bf16>(x, w, bias, y, FC_CONV_ARGS, relu);
}

extern "C" __global__ void __launch_bounds__(FC_TC_THREADS)
conv_dgrad_bf16(const fc_bf16* __restrict__ dy, const fc_bf16* __restrict__ w, fc_bf16* __restrict__ dx,
                FC_CONV_DIMS) {
    fc_conv_dgrad_tc<fc_tc_bf16>(dy, w, dx, FC_CONV_ARGS);
}

extern "C" __global__ void __launch_bounds__(FC_TC_THREADS)
conv_wgrad_bf16(const fc_bf16* __restrict__ x, const fc_bf16* __restrict__ dy, float* __restrict__ out,
                FC_CONV_DIMS, int kchunk) {
    fc_conv_wgrad_tc<fc_tc_bf16>(x, dy, out, FC_CONV_ARGS, kchunk);
}
