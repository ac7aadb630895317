// kernels/tc_tile.cuh: the tensor-core GEMM core, one source for two element types, shared
// by gemm_tc.cu (plain matrices) and conv_tc.cu (implicit GEMM: tiles gathered from NHWC
// tensors).  Include after common.cuh, mma.cuh and bf16.cuh.
//
// Element types (the traits E every template here takes):
//   fc_tc_tf32  float in memory, operands rounded to tf32 (cvt.rna) as fragments leave
//               shared memory, mma.sync.m16n8k8: block tile K depth 16, two 8-deep steps.
//   fc_tc_bf16  bfloat16 in memory (__nv_bfloat16), fragments used as they are,
//               mma.sync.m16n8k16: block tile K depth 32, two 16-deep steps.
// A tile row is 64 bytes either way (16 floats or 32 bf16), so the copies, the shared
// layouts and the ldmatrix addresses are the same in bytes; accumulation is fp32.
//
// Block tile 128 (M) x 64 (N) x BK (K), 128 threads = 4 warps in 2 x 2, each warp a
// 64 x 32 tile: 4 x 4 mma.sync per K step, 64 fp32 accumulators a thread.
// Operands go from global to shared memory with cp.async (no trip through registers)
// in a 3-stage pipeline: while the warps multiply stage s, the copies of stages s+1 and
// s+2 are in flight; one __syncthreads per K tile.
//
// Shared layouts (elements), chosen per operand by how global memory holds it, so that
// every cp.async moves 16 contiguous bytes when the rows allow it (VEC = elements in 16 bytes):
//   K-contiguous  S[mn][BK + VEC]  fragments by ldmatrix.x4 (a row of an 8x8 b16 matrix is
//                                  16 bytes: 4 floats, lane l receiving float (l/4, l%4), or
//                                  8 bf16, lane l receiving the pair (l/4, 2(l%4)..+1): the
//                                  A fragment, and B's stored n-major); the row stride of
//                                  80 bytes puts the 8 rows of one matrix in 8 different
//                                  4-bank groups: conflict-free.
//   MN-contiguous S[k][MN + 8]     tf32: fragments by scalar loads, lane (g, t) reads (k0+t,
//                                  mn0+g), bank 8t + g (stride = 8 mod 32): conflict-free.
//                                  bf16: ldmatrix.x4.trans (8 k rows of 8 mn each; a stride
//                                  of MN + 8 bf16 = an odd number of 16-byte groups).
// 3 stages of A (128 x BK) and B (64 x BK) take at most 3 x 15 KB = 45 KB: static shared
// memory, under the 48 KB limit.
//
// A loader fills one operand's tile: issue(S, k0, kend) starts the copies of its part of
// the BK-deep slice at k0 (zero outside the matrix) into the stage S.  A 16-byte
// cp.async needs the row's elements 16-byte aligned (ld a multiple of VEC, base aligned);
// otherwise tf32 copies 4 bytes an element with cp.async and bf16 (2 bytes: below
// cp.async's smallest copy) loads and stores an element at a time, which lands before the
// barrier that precedes its stage's use like the copies do.  fc_tc_matrix_loader covers
// plain matrices; conv_tc.cu adds gathering ones.
// Split-K: a block may cover K in [kbegin, kend) (kbegin a multiple of 8: the 16-byte
// copies rely on it); partial sums go to an fp32 workspace, summed by gemm.cu's
// gemm_splitk_reduce (fp32 result) or gemm_tc.cu's gemm_splitk_reduce_bf16.
#ifndef FASTCNN_TC_TILE_CUH
#define FASTCNN_TC_TILE_CUH

#define FC_TC_BM 128
#define FC_TC_BN 64
#define FC_TC_STAGES 3
#define FC_TC_THREADS 128

// bfloat16 in memory: the upper 16 bits of a float32 (ml_dtypes.bfloat16 on the host).
typedef __nv_bfloat16 fc_bf16;

struct fc_tc_tf32 {
    typedef float T;
    static constexpr int BK = 16, KSTEP = 8, VEC = 4;
    static constexpr bool BF16 = false;
    FC_DEVICE static void mma(float (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        fc_mma_tf32(acc, a, b, acc);
    }
    // One element: a 4-byte cp.async (src must be a valid address even when !ok: nothing is read).
    FC_DEVICE static void copy1(T* dst, const T* src, bool ok) { fc_cp_async4(dst, src, ok ? 4 : 0); }
};

struct fc_tc_bf16 {
    typedef fc_bf16 T;
    static constexpr int BK = 32, KSTEP = 16, VEC = 8;
    static constexpr bool BF16 = true;
    FC_DEVICE static void mma(float (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        fc_mma_bf16(acc, a, b, acc);
    }
    FC_DEVICE static void copy1(T* dst, const T* src, bool ok) {
        *dst = ok ? *src : __ushort_as_bfloat16(0);
    }
};

// Where element (mn, k) of a slice lives in a stage of an MN x BK tile.
template <class E, int MN, bool KCONTIG> struct fc_tc_layout {
    static constexpr int LD = KCONTIG ? E::BK + E::VEC : MN + 8;
    static constexpr int ELEMS = KCONTIG ? MN * LD : E::BK * LD;
};

// The 16-byte chunks of an MN x BK tile a thread copies: MN / 32 of them.
//   K-contiguous:  rows tid/4 + 32i, k offset (tid%4)*VEC (4 threads cover a row's 64 bytes).
//   MN-contiguous: k offsets tid/PER_ROW + KSTEP*i, columns (tid % PER_ROW)*VEC.
template <class E, int MN> struct fc_tc_chunks {
    static constexpr int COUNT = MN / 32;
    static constexpr int PER_ROW = MN / E::VEC;          // MN-contiguous: chunks of one k row
    static constexpr int KSTEP = FC_TC_THREADS / PER_ROW;  // MN-contiguous: k rows between a thread's chunks
};

// Element (mn, k) at p[mn*ld + k] (KCONTIG) or p[k*ld + mn]; rows mn >= mn_lim and
// k >= kend read as zero.
template <class E, int MN, bool KC>
struct fc_tc_matrix_loader {
    static constexpr bool KCONTIG = KC;
    typedef fc_tc_layout<E, MN, KC> L;
    typedef typename E::T T;
    static constexpr int VEC = E::VEC;
    const T* p;
    int ld, mn0, mn_lim;
    bool vec;
    FC_DEVICE void init(const T* p_, int ld_, int mn_lim_, int mn0_) {
        p = p_; ld = ld_; mn_lim = mn_lim_; mn0 = mn0_;
        vec = (ld % VEC == 0) && fc_aligned16(p_);
    }
    FC_DEVICE void issue(T* S, int k0, int kend) const {
        const int tid = (int)threadIdx.x;
        if constexpr (KC) {
            const int kq = (tid % 4) * VEC, k = k0 + kq;
#pragma unroll
            for (int i = 0; i < fc_tc_chunks<E, MN>::COUNT; ++i) {
                const int row = tid / 4 + 32 * i, mn = mn0 + row;
                T* dst = S + row * L::LD + kq;
                const T* src = p + (fc_i64)mn * ld + k;
                if (vec) {
                    const int n = mn < mn_lim ? max(0, min(VEC, kend - k)) : 0;
                    fc_cp_async16(dst, n > 0 ? src : p, n * (int)sizeof(T));
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) {
                        const bool ok = mn < mn_lim && k + e < kend;
                        E::copy1(dst + e, ok ? src + e : p, ok);
                    }
                }
            }
        } else {
            typedef fc_tc_chunks<E, MN> Ch;
            const int mq = (tid % Ch::PER_ROW) * VEC, mn = mn0 + mq;
#pragma unroll
            for (int i = 0; i < Ch::COUNT; ++i) {
                const int kr = tid / Ch::PER_ROW + Ch::KSTEP * i, k = k0 + kr;
                T* dst = S + kr * L::LD + mq;
                const T* src = p + (fc_i64)k * ld + mn;
                if (vec) {
                    const int n = k < kend ? max(0, min(VEC, mn_lim - mn)) : 0;
                    fc_cp_async16(dst, n > 0 ? src : p, n * (int)sizeof(T));
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) {
                        const bool ok = k < kend && mn + e < mn_lim;
                        E::copy1(dst + e, ok ? src + e : p, ok);
                    }
                }
            }
        }
    }
};

FC_DEVICE unsigned fc_tc_round(unsigned bits) { return fc_cvt_rna_tf32(__uint_as_float(bits)); }

// The A fragments (4 m16 tiles of the warp's 64 rows, from row r0) of the K step at kk.
template <class E, bool KCONTIG>
FC_DEVICE void fc_tc_load_a(const typename E::T* S, int r0, int kk, unsigned (&a)[4][4]) {
    const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    typedef fc_tc_layout<E, FC_TC_BM, KCONTIG> L;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = r0 + 16 * i;
        if constexpr (KCONTIG) {  // matrices: rows 0-7 k lo, rows 8-15 k lo, rows 0-7 k hi, rows 8-15 k hi
            fc_ldmatrix_x4(a[i], S + (r + (lane & 7) + 8 * ((lane >> 3) & 1)) * L::LD + kk + E::VEC * (lane >> 4));
            if constexpr (!E::BF16) {
#pragma unroll
                for (int q = 0; q < 4; ++q) a[i][q] = fc_tc_round(a[i][q]);
            }
        } else if constexpr (E::BF16) {  // k-major: (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15)
            fc_ldmatrix_x4_trans(a[i], S + (kk + (lane & 7) + 8 * (lane >> 4)) * L::LD + r + 8 * ((lane >> 3) & 1));
        } else {
            const float* s = S + (kk + t) * L::LD + r + g;
            a[i][0] = fc_cvt_rna_tf32(s[0]);
            a[i][1] = fc_cvt_rna_tf32(s[8]);
            a[i][2] = fc_cvt_rna_tf32(s[4 * L::LD]);
            a[i][3] = fc_cvt_rna_tf32(s[4 * L::LD + 8]);
        }
    }
}

// The B fragments (4 n8 tiles of the warp's 32 columns, from column c0) of the K step at kk.
template <class E, bool KCONTIG>
FC_DEVICE void fc_tc_load_b(const typename E::T* S, int c0, int kk, unsigned (&b)[4][2]) {
    const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    typedef fc_tc_layout<E, FC_TC_BN, KCONTIG> L;
    if constexpr (KCONTIG) {  // per pair of n8 tiles: (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi)
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
            unsigned r[4];
            fc_ldmatrix_x4(r, S + (c0 + 8 * j + (lane & 7) + 8 * (lane >> 4)) * L::LD + kk + E::VEC * ((lane >> 3) & 1));
            if constexpr (!E::BF16) {
#pragma unroll
                for (int q = 0; q < 4; ++q) r[q] = fc_tc_round(r[q]);
            }
            b[j][0] = r[0];
            b[j][1] = r[1];
            b[j + 1][0] = r[2];
            b[j + 1][1] = r[3];
        }
    } else if constexpr (E::BF16) {  // k-major: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
            unsigned r[4];
            fc_ldmatrix_x4_trans(r, S + (kk + (lane & 7) + 8 * ((lane >> 3) & 1)) * L::LD + c0 + 8 * j + 8 * (lane >> 4));
            b[j][0] = r[0];
            b[j][1] = r[1];
            b[j + 1][0] = r[2];
            b[j + 1][1] = r[3];
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
// layout) = sum over k in [kbegin, kend) of A(row, k) * B(k, col) on E's operands.
// Every thread of the block must call it (barriers inside).
//
// Pipeline: tile t (BK-deep) lives in stage t % 3 and is copy group t of every thread.
// Iteration t waits until at most one group (t + 1) is in flight, so tile t has landed for
// this thread; the barrier then makes every thread's copies (and plain stores) visible, and
// tells that every warp is done with tile t - 1, whose stage the copies of tile t + 2 now
// reuse.  A group is committed every iteration, empty or not, so that the count stays uniform.
template <class E, class LA, class LB>
FC_DEVICE void fc_tc_mainloop(const LA& la, const LB& lb, int kbegin, int kend, float (&acc)[4][4][4]) {
    typedef typename E::T T;
    __shared__ __align__(16) T As[FC_TC_STAGES][LA::L::ELEMS];
    __shared__ __align__(16) T Bs[FC_TC_STAGES][LB::L::ELEMS];
    const int warp = (int)threadIdx.x >> 5;
    const int r0 = (warp >> 1) * 64, c0 = (warp & 1) * 32;
    fc_tc_zero(acc);
    const int tiles = kend > kbegin ? (kend - kbegin + E::BK - 1) / E::BK : 0;
#pragma unroll
    for (int s = 0; s < FC_TC_STAGES - 1; ++s) {
        if (s < tiles) {
            la.issue(As[s], kbegin + s * E::BK, kend);
            lb.issue(Bs[s], kbegin + s * E::BK, kend);
        }
        fc_cp_async_commit();
    }
    for (int t = 0; t < tiles; ++t) {
        fc_cp_async_wait<FC_TC_STAGES - 2>();
        __syncthreads();
        const int next = t + FC_TC_STAGES - 1;
        if (next < tiles) {
            la.issue(As[next % FC_TC_STAGES], kbegin + next * E::BK, kend);
            lb.issue(Bs[next % FC_TC_STAGES], kbegin + next * E::BK, kend);
        }
        fc_cp_async_commit();
        const T* as = As[t % FC_TC_STAGES];
        const T* bs = Bs[t % FC_TC_STAGES];
#pragma unroll
        for (int kk = 0; kk < E::BK; kk += E::KSTEP) {
            unsigned a[4][4], b[4][2];
            fc_tc_load_a<E, LA::KCONTIG>(as, r0, kk, a);
            fc_tc_load_b<E, LB::KCONTIG>(bs, c0, kk, b);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) E::mma(acc[i][j], a[i], b[j]);
        }
    }
    fc_cp_async_wait<0>();
}

// Store v0 at c[0] and, if has1, v1 at c[1]; pair: both at once (c aligned to two elements).
// bf16: both rounded once, to nearest even (cvt.rn.bf16x2).
FC_DEVICE void fc_tc_store2(float* c, float v0, float v1, bool pair, bool has1) {
    if (pair) {
        *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
    } else {
        c[0] = v0;
        if (has1) c[1] = v1;
    }
}
FC_DEVICE void fc_tc_store2(fc_bf16* c, float v0, float v1, bool pair, bool has1) {
    const unsigned u = fc_cvt_rn_bf16x2(v1, v0);  // v1 upper: the higher address
    if (pair) {
        *reinterpret_cast<unsigned*>(c) = u;
    } else {
        c[0] = __ushort_as_bfloat16((unsigned short)(u & 0xffffu));
        if (has1) c[1] = __ushort_as_bfloat16((unsigned short)(u >> 16));
    }
}

// Write the block's 128 x 64 tile of C (M x N row-major, ld = N, float or fc_bf16) at
// (m0, n0): C = relu?(acc + bias[col]) (bias fp32, may be null), rounded once if bf16.
// Rows/columns outside C skipped; two-element stores where N is even and C aligned to them.
template <class OutT>
FC_DEVICE void fc_tc_epilogue(const float (&acc)[4][4][4], OutT* C, int M, int N, int m0, int n0,
                              const float* bias, int relu) {
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int r0 = m0 + (warp >> 1) * 64, c0 = n0 + (warp & 1) * 32;
    const bool vec = (N % 2 == 0) && (((unsigned long long)C & (2 * sizeof(OutT) - 1)) == 0ull);
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
                if (row >= M || col >= N) continue;
                float v0 = acc[i][j][2 * h] + b0, v1 = acc[i][j][2 * h + 1] + b1;
                if (relu) { v0 = fc_relu(v0); v1 = fc_relu(v1); }
                fc_tc_store2(C + (fc_i64)row * N + col, v0, v1, vec && col + 1 < N, col + 1 < N);
            }
    }
}

#endif  // FASTCNN_TC_TILE_CUH
