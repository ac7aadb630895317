// kernels/tc_tile.cuh: the TF32 tensor-core GEMM core, shared by gemm_tf32.cu (plain
// matrices) and conv_tf32.cu (implicit GEMM: tiles gathered from NHWC tensors).
// Include after common.cuh and mma.cuh.
//
// Block tile 128 (M) x 64 (N) x 16 (K), 128 threads = 4 warps in 2 x 2, each warp a
// 64 x 32 tile: 4 x 4 mma.sync.m16n8k8 per 8-deep K step, 64 fp32 accumulators a thread.
// Operands go from global to shared memory with cp.async (no trip through registers)
// in a 3-stage pipeline: while the warps multiply stage s, the copies of stages s+1 and
// s+2 are in flight; one __syncthreads per 16-deep K tile.  Fragments are rounded to tf32
// with cvt.rna as they leave shared memory; accumulation stays fp32.
//
// Shared layouts (floats), chosen per operand by how global memory holds it, so that
// every cp.async moves 16 contiguous bytes when the rows allow it:
//   K-contiguous  S[mn][16 + 4]    fragments by ldmatrix.x4 (on 32-bit data a row of an
//                                  8x8 b16 matrix is 4 floats, and lane l receives float
//                                  (l/4, l%4): the A fragment, and B's stored n-major);
//                                  the row stride of 20 floats puts the 8 rows of one
//                                  matrix in 8 different 4-bank groups: conflict-free.
//   MN-contiguous S[k][MN + 8]     fragments by scalar loads: lane (g, t) reads (k0+t,
//                                  mn0+g), bank 8t + g (stride = 8 mod 32): conflict-free.
// 3 stages of A (128 x 16) and B (64 x 16) take at most 3 x 15 KB = 45 KB: static shared
// memory, under the 48 KB limit.
//
// A loader fills one operand's tile: issue(S, k0, kend) starts the cp.async copies of
// its part of the 16-deep slice at k0 (zero outside the matrix, by src-size 0) into the
// stage S.  fc_tc_matrix_loader covers plain matrices; conv_tf32.cu adds gathering ones.
// Split-K: a block may cover K in [kbegin, kend) (kbegin a multiple of 4: the 16-byte
// copies rely on it); partial sums go to a workspace, summed by gemm.cu's gemm_splitk_reduce.
#ifndef FASTCNN_TC_TILE_CUH
#define FASTCNN_TC_TILE_CUH

#define FC_TC_BM 128
#define FC_TC_BN 64
#define FC_TC_BK 16
#define FC_TC_STAGES 3
#define FC_TC_THREADS 128

// Where element (mn, k) of a slice lives in a stage of an MN x 16 tile.
template <int MN, bool KCONTIG> struct fc_tc_layout {
    static constexpr int LD = KCONTIG ? FC_TC_BK + 4 : MN + 8;
    static constexpr int FLOATS = KCONTIG ? MN * LD : FC_TC_BK * LD;
};

// The 16-byte chunks of an MN x 16 tile a thread copies: MN / 32 of them.
//   K-contiguous:  rows tid/4 + 32i, k offset (tid%4)*4 (4 threads cover a row's 64 bytes).
//   MN-contiguous: k offsets tid/(MN/4) + (512/MN)i, columns (tid % (MN/4))*4.
template <int MN> struct fc_tc_chunks {
    static constexpr int COUNT = MN / 32;
    static constexpr int PER_ROW = MN / 4;        // MN-contiguous: chunks of one k row
    static constexpr int KSTEP = 512 / MN;        // MN-contiguous: k rows between a thread's chunks
};

// Element (mn, k) at p[mn*ld + k] (KCONTIG) or p[k*ld + mn]; rows mn >= mn_lim and
// k >= kend read as zero.
template <int MN, bool KC>
struct fc_tc_matrix_loader {
    static constexpr bool KCONTIG = KC;
    typedef fc_tc_layout<MN, KC> L;
    const float* p;
    int ld, mn0, mn_lim;
    bool vec;
    FC_DEVICE void init(const float* p_, int ld_, int mn_lim_, int mn0_) {
        p = p_; ld = ld_; mn_lim = mn_lim_; mn0 = mn0_;
        vec = (ld % 4 == 0) && fc_aligned16(p_);
    }
    FC_DEVICE void issue(float* S, int k0, int kend) const {
        const int tid = (int)threadIdx.x;
        if constexpr (KC) {
            const int kq = (tid % 4) * 4, k = k0 + kq;
#pragma unroll
            for (int i = 0; i < fc_tc_chunks<MN>::COUNT; ++i) {
                const int row = tid / 4 + 32 * i, mn = mn0 + row;
                float* dst = S + row * L::LD + kq;
                const float* src = p + (fc_i64)mn * ld + k;
                if (vec) {
                    const int n = mn < mn_lim ? max(0, min(4, kend - k)) : 0;
                    fc_cp_async16(dst, n > 0 ? src : p, 4 * n);
                } else {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const bool ok = mn < mn_lim && k + e < kend;
                        fc_cp_async4(dst + e, ok ? src + e : p, ok ? 4 : 0);
                    }
                }
            }
        } else {
            const int mq = (tid % fc_tc_chunks<MN>::PER_ROW) * 4, mn = mn0 + mq;
#pragma unroll
            for (int i = 0; i < fc_tc_chunks<MN>::COUNT; ++i) {
                const int kr = tid / fc_tc_chunks<MN>::PER_ROW + fc_tc_chunks<MN>::KSTEP * i, k = k0 + kr;
                float* dst = S + kr * L::LD + mq;
                const float* src = p + (fc_i64)k * ld + mn;
                if (vec) {
                    const int n = k < kend ? max(0, min(4, mn_lim - mn)) : 0;
                    fc_cp_async16(dst, n > 0 ? src : p, 4 * n);
                } else {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const bool ok = k < kend && mn + e < mn_lim;
                        fc_cp_async4(dst + e, ok ? src + e : p, ok ? 4 : 0);
                    }
                }
            }
        }
    }
};

FC_DEVICE unsigned fc_tc_round(unsigned bits) { return fc_cvt_rna_tf32(__uint_as_float(bits)); }

// The A fragments (4 m16 tiles of the warp's 64 rows, from row r0) of the 8-deep step kk.
template <bool KCONTIG>
FC_DEVICE void fc_tc_load_a(const float* S, int r0, int kk, unsigned (&a)[4][4]) {
    const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    typedef fc_tc_layout<FC_TC_BM, KCONTIG> L;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = r0 + 16 * i;
        if constexpr (KCONTIG) {  // matrices: rows 0-7 k 0-3, rows 8-15 k 0-3, rows 0-7 k 4-7, rows 8-15 k 4-7
            fc_ldmatrix_x4(a[i], S + (r + (lane & 7) + 8 * ((lane >> 3) & 1)) * L::LD + kk + 4 * (lane >> 4));
#pragma unroll
            for (int q = 0; q < 4; ++q) a[i][q] = fc_tc_round(a[i][q]);
        } else {
            const float* s = S + (kk + t) * L::LD + r + g;
            a[i][0] = fc_cvt_rna_tf32(s[0]);
            a[i][1] = fc_cvt_rna_tf32(s[8]);
            a[i][2] = fc_cvt_rna_tf32(s[4 * L::LD]);
            a[i][3] = fc_cvt_rna_tf32(s[4 * L::LD + 8]);
        }
    }
}

// The B fragments (4 n8 tiles of the warp's 32 columns, from column c0) of step kk.
template <bool KCONTIG>
FC_DEVICE void fc_tc_load_b(const float* S, int c0, int kk, unsigned (&b)[4][2]) {
    const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    typedef fc_tc_layout<FC_TC_BN, KCONTIG> L;
    if constexpr (KCONTIG) {  // per pair of n8 tiles: (n 0-7, k 0-3), (n 0-7, k 4-7), (n 8-15, k 0-3), (n 8-15, k 4-7)
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
            unsigned r[4];
            fc_ldmatrix_x4(r, S + (c0 + 8 * j + (lane & 7) + 8 * (lane >> 4)) * L::LD + kk + 4 * ((lane >> 3) & 1));
            b[j][0] = fc_tc_round(r[0]);
            b[j][1] = fc_tc_round(r[1]);
            b[j + 1][0] = fc_tc_round(r[2]);
            b[j + 1][1] = fc_tc_round(r[3]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float* s = S + (kk + t) * L::LD + c0 + 8 * j + g;
            b[j][0] = fc_cvt_rna_tf32(s[0]);
            b[j][1] = fc_cvt_rna_tf32(s[4 * L::LD]);
        }
    }
}

FC_DEVICE void fc_tc_zero(float (&acc)[4][4][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
}

// acc (the warp's 64 x 32 tile: acc[i][j] is m16 tile i, n8 tile j in the C/D fragment
// layout) = sum over k in [kbegin, kend) of A(row, k) * B(k, col), operands rounded to tf32.
// Every thread of the block must call it (barriers inside).
//
// Pipeline: tile t (16-deep) lives in stage t % 3 and is copy group t of every thread.
// Iteration t waits until at most one group (t + 1) is in flight, so tile t has landed for
// this thread; the barrier then makes every thread's copies visible, and tells that every
// warp is done with tile t - 1, whose stage the copies of tile t + 2 now reuse.  A group is
// committed every iteration, empty or not, so that the count stays uniform.
template <class LA, class LB>
FC_DEVICE void fc_tc_mainloop(const LA& la, const LB& lb, int kbegin, int kend, float (&acc)[4][4][4]) {
    __shared__ __align__(16) float As[FC_TC_STAGES][LA::L::FLOATS];
    __shared__ __align__(16) float Bs[FC_TC_STAGES][LB::L::FLOATS];
    const int warp = (int)threadIdx.x >> 5;
    const int r0 = (warp >> 1) * 64, c0 = (warp & 1) * 32;
    fc_tc_zero(acc);
    const int tiles = kend > kbegin ? (kend - kbegin + FC_TC_BK - 1) / FC_TC_BK : 0;
#pragma unroll
    for (int s = 0; s < FC_TC_STAGES - 1; ++s) {
        if (s < tiles) {
            la.issue(As[s], kbegin + s * FC_TC_BK, kend);
            lb.issue(Bs[s], kbegin + s * FC_TC_BK, kend);
        }
        fc_cp_async_commit();
    }
    for (int t = 0; t < tiles; ++t) {
        fc_cp_async_wait<FC_TC_STAGES - 2>();
        __syncthreads();
        const int next = t + FC_TC_STAGES - 1;
        if (next < tiles) {
            la.issue(As[next % FC_TC_STAGES], kbegin + next * FC_TC_BK, kend);
            lb.issue(Bs[next % FC_TC_STAGES], kbegin + next * FC_TC_BK, kend);
        }
        fc_cp_async_commit();
        const float* as = As[t % FC_TC_STAGES];
        const float* bs = Bs[t % FC_TC_STAGES];
#pragma unroll
        for (int kk = 0; kk < FC_TC_BK; kk += 8) {
            unsigned a[4][4], b[4][2];
            fc_tc_load_a<LA::KCONTIG>(as, r0, kk, a);
            fc_tc_load_b<LB::KCONTIG>(bs, c0, kk, b);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) fc_mma_tf32(acc[i][j], a[i], b[j], acc[i][j]);
        }
    }
    fc_cp_async_wait<0>();
}

// Write the block's 128 x 64 tile of C (M x N row-major, ld = N) at (m0, n0):
// C = relu?(acc + bias[col]); bias may be null.  Rows/columns outside C skipped;
// 8-byte stores where N is even and C 8-byte aligned.
FC_DEVICE void fc_tc_epilogue(const float (&acc)[4][4][4], float* C, int M, int N, int m0, int n0,
                              const float* bias, int relu) {
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int r0 = m0 + (warp >> 1) * 64, c0 = n0 + (warp & 1) * 32;
    const bool vec = (N % 2 == 0) && (((unsigned long long)C & 7ull) == 0ull);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = c0 + 8 * j + 2 * t;
        float b0 = 0.0f, b1 = 0.0f;
        if (bias != nullptr) {
            if (col < N) b0 = bias[col];
            if (col + 1 < N) b1 = bias[col + 1];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = r0 + 16 * i + g + 8 * h;
                if (row >= M) continue;
                float v0 = acc[i][j][2 * h] + b0, v1 = acc[i][j][2 * h + 1] + b1;
                if (relu) { v0 = fc_relu(v0); v1 = fc_relu(v1); }
                float* c = C + (fc_i64)row * N + col;
                if (vec && col + 1 < N) {
                    *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
                } else {
                    if (col < N) c[0] = v0;
                    if (col + 1 < N) c[1] = v1;
                }
            }
    }
}

#endif  // FASTCNN_TC_TILE_CUH
