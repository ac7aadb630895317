// kernels/gemm_tile.cuh: the block-tiled fp32 SIMT GEMM core, shared by gemm.cu
// (plain matrices) and conv.cu (implicit GEMM: tiles gathered from NHWC tensors).
// Include after common.cuh.
//
// Block tile 128 (M) x 128 (N) x 8 (K), 256 threads, each thread an 8x8 block of
// C held in registers: rows {ty*4+i, 64+ty*4+i}, columns {tx*4+j, 64+tx*4+j}
// (ty = tid/16, tx = tid%16, i, j < 4), so that every shared-memory read in the
// inner loop is a 16-byte vector, a broadcast (A) or 16 consecutive float4 (B),
// free of bank conflicts.  A 128 x 96 variant (8x6 a thread, see fc_tile) serves
// 96-channel convolutions; the accumulator's shape selects it.  Both operand tiles sit in shared memory K-major,
// S[k][mn] (A transposed), each row padded by 4 floats.  The next K slice is
// fetched from global memory into registers while the current one is multiplied
// (register prefetch; one shared buffer, or two in fc_gemm_mainloop2: variant tiled_db).
//
// A "loader" fetches one operand's 8 x 128 tile: fetch(k0, kend) reads the
// thread's 4 elements (zero outside the matrix), store(S) writes them to shared
// memory.  Two generic loaders cover plain matrices:
//   fc_kcontig_loader   element (mn, k) at p[mn*ld + k]   (thread: one mn, 4 consecutive k)
//   fc_mncontig_loader  element (mn, k) at p[k*ld + mn]   (thread: one k, 4 consecutive mn)
// conv.cu adds loaders that gather from NHWC tensors with the same two shapes.
// Split-K: a block may cover K in [kbegin, kend); partial products go to a
// workspace and gemm_splitk_reduce sums them in a fixed order (deterministic).
#ifndef FASTCNN_GEMM_TILE_CUH
#define FASTCNN_GEMM_TILE_CUH

#define FC_BM 128
#define FC_BN 128
#define FC_BK 8
#define FC_PAD 4
#define FC_THREADS 256
#define FC_LDS (FC_BM + FC_PAD)

// Element (mn, k) at p[mn*ld + k]: thread owns row mn0 + tid/2, k offsets (tid%2)*4 + 0..3.
struct fc_kcontig_loader {
    const float* p;
    int ld, mn_lim, mn, kq;
    bool vec;
    float r[4];
    FC_DEVICE void init(const float* p_, int ld_, int mn_lim_, int mn0) {
        p = p_; ld = ld_; mn_lim = mn_lim_;
        mn = mn0 + (int)threadIdx.x / 2;
        kq = ((int)threadIdx.x % 2) * 4;
        vec = (ld % 4 == 0) && fc_aligned16(p_);
    }
    FC_DEVICE void fetch(int k0, int kend) {
        const int k = k0 + kq;  // a multiple of 4 when k0 is
        r[0] = r[1] = r[2] = r[3] = 0.0f;
        if (mn >= mn_lim) return;
        const float* row = p + (fc_i64)mn * ld;
        if (vec && k + 3 < kend) {
            const float4 v = fc_load4(row + k);
            r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i)
                if (k + i < kend) r[i] = row[k + i];
        }
    }
    FC_DEVICE void store(float (*S)[FC_LDS]) const {
        const int m = (int)threadIdx.x / 2;
#pragma unroll
        for (int i = 0; i < 4; ++i) S[kq + i][m] = r[i];
    }
};

// Element (mn, k) at p[k*ld + mn]: thread owns k offset tid/32, rows mn0 + (tid%32)*4 + 0..3.
struct fc_mncontig_loader {
    const float* p;
    int ld, mn_lim, mn, kk;
    bool vec;
    float r[4];
    FC_DEVICE void init(const float* p_, int ld_, int mn_lim_, int mn0) {
        p = p_; ld = ld_; mn_lim = mn_lim_;
        mn = mn0 + ((int)threadIdx.x % 32) * 4;
        kk = (int)threadIdx.x / 32;
        vec = (ld % 4 == 0) && fc_aligned16(p_);
    }
    FC_DEVICE void fetch(int k0, int kend) {
        const int k = k0 + kk;
        r[0] = r[1] = r[2] = r[3] = 0.0f;
        if (k >= kend) return;
        const float* row = p + (fc_i64)k * ld;
        if (vec && mn + 3 < mn_lim) {
            const float4 v = fc_load4(row + mn);
            r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i)
                if (mn + i < mn_lim) r[i] = row[mn + i];
        }
    }
    FC_DEVICE void store(float (*S)[FC_LDS]) const {
        fc_store4(&S[kk][((int)threadIdx.x % 32) * 4], make_float4(r[0], r[1], r[2], r[3]));
    }
};

// Block tile width for TN columns a thread: TN = 8 -> 128 columns, TN = 6 -> 96.
// Thread columns are {tx*4 + j, j < 4} and {64 + tx*(TN-4) + j, j < TN-4}, so the
// 96-wide tile (for 96 output channels, AlexNet conv1, where 128 would idle a
// quarter of the FMAs) reads its second group as one 8-byte vector, still
// conflict-free.  The loaders always fill 128 columns of Bs; columns past the tile
// are never read.
template <int TN> struct fc_tile { static constexpr int BN = 64 + 16 * (TN - 4); };

// acc += the product of one BK-deep slice of the operand tiles in shared memory.
// (ty, tx) = (tid / 16, tid % 16), worked out once by the caller.
template <int TN>
FC_DEVICE void fc_gemm_slice(const float (*As)[FC_LDS], const float (*Bs)[FC_LDS], int ty, int tx,
                             float (&acc)[8][TN]) {
#pragma unroll
    for (int kk = 0; kk < FC_BK; ++kk) {
        float a[8], b[TN];
        float4 v = fc_load4(&As[kk][ty * 4]);
        a[0] = v.x; a[1] = v.y; a[2] = v.z; a[3] = v.w;
        v = fc_load4(&As[kk][64 + ty * 4]);
        a[4] = v.x; a[5] = v.y; a[6] = v.z; a[7] = v.w;
        v = fc_load4(&Bs[kk][tx * 4]);
        b[0] = v.x; b[1] = v.y; b[2] = v.z; b[3] = v.w;
        if constexpr (TN == 8) {
            v = fc_load4(&Bs[kk][64 + tx * 4]);
            b[4] = v.x; b[5] = v.y; b[6] = v.z; b[7] = v.w;
        } else {
            const float2 u = *reinterpret_cast<const float2*>(&Bs[kk][64 + tx * 2]);
            b[4] = u.x; b[5] = u.y;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}

template <int TN>
FC_DEVICE void fc_gemm_zero(float (&acc)[8][TN]) {
    static_assert(TN == 8 || TN == 6, "tile width: 128 (TN 8) or 96 (TN 6) columns");
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
}

// acc[i][j] += sum over k in [kbegin, kend) of A(row_i, k) * B(k, col_j), TN = 8 or 6
// (the acc shape picks the tile width).  kbegin must be a multiple of 8 (vector loads
// rely on it).  Every thread of the block must call it (barriers inside).
// One shared buffer: store, barrier, prefetch the next slice into registers, multiply,
// barrier (two barriers per slice).
template <class LA, class LB, int TN>
FC_DEVICE void fc_gemm_mainloop(LA& la, LB& lb, int kbegin, int kend, float (&acc)[8][TN]) {
    __shared__ __align__(16) float As[FC_BK][FC_LDS];
    __shared__ __align__(16) float Bs[FC_BK][FC_LDS];
    const int ty = (int)threadIdx.x / 16, tx = (int)threadIdx.x % 16;
    fc_gemm_zero(acc);
    if (kbegin >= kend) return;  // uniform over the block
    la.fetch(kbegin, kend);
    lb.fetch(kbegin, kend);
    for (int k0 = kbegin; k0 < kend; k0 += FC_BK) {
        la.store(As);
        lb.store(Bs);
        __syncthreads();
        if (k0 + FC_BK < kend) {  // prefetch the next slice while this one is multiplied
            la.fetch(k0 + FC_BK, kend);
            lb.fetch(k0 + FC_BK, kend);
        }
        fc_gemm_slice(As, Bs, ty, tx, acc);
        __syncthreads();
    }
}

// The same product with two shared buffers (twice the shared memory, 16.5 KB): slice i is
// multiplied from buffer i % 2 while slice i + 1, fetched into registers meanwhile, is
// stored into the other buffer; one barrier per slice.  A thread storing into buffer
// (i+1) % 2 cannot meet a thread still reading it: that one read it in slice i - 1, before
// the previous barrier.
template <class LA, class LB, int TN>
FC_DEVICE void fc_gemm_mainloop2(LA& la, LB& lb, int kbegin, int kend, float (&acc)[8][TN]) {
    __shared__ __align__(16) float As[2][FC_BK][FC_LDS];
    __shared__ __align__(16) float Bs[2][FC_BK][FC_LDS];
    const int ty = (int)threadIdx.x / 16, tx = (int)threadIdx.x % 16;
    fc_gemm_zero(acc);
    if (kbegin >= kend) return;  // uniform over the block
    la.fetch(kbegin, kend);
    lb.fetch(kbegin, kend);
    la.store(As[0]);
    lb.store(Bs[0]);
    __syncthreads();
    int buf = 0;
    for (int k0 = kbegin; k0 < kend; k0 += FC_BK) {
        const bool more = k0 + FC_BK < kend;  // uniform over the block
        if (more) {
            la.fetch(k0 + FC_BK, kend);
            lb.fetch(k0 + FC_BK, kend);
        }
        fc_gemm_slice(As[buf], Bs[buf], ty, tx, acc);
        if (more) {
            la.store(As[buf ^ 1]);
            lb.store(Bs[buf ^ 1]);
        }
        __syncthreads();
        buf ^= 1;
    }
}

// STAGES shared buffers: 1, fc_gemm_mainloop; 2, fc_gemm_mainloop2 (the *_db variants).
template <int STAGES, class LA, class LB, int TN>
FC_DEVICE void fc_gemm_mainloop_n(LA& la, LB& lb, int kbegin, int kend, float (&acc)[8][TN]) {
    static_assert(STAGES == 1 || STAGES == 2, "one or two shared buffers");
    if constexpr (STAGES == 2) {
        fc_gemm_mainloop2(la, lb, kbegin, kend, acc);
    } else {
        fc_gemm_mainloop(la, lb, kbegin, kend, acc);
    }
}

// Write the block's 128 x fc_tile<TN>::BN tile of C (M x N row-major, ld = N) at
// (m0, n0): C = relu?(acc + bias[col]); bias may be null.  Rows/columns outside C
// skipped.
template <int TN>
FC_DEVICE void fc_gemm_epilogue(const float (&acc)[8][TN], float* C, int M, int N, int m0, int n0,
                                const float* bias, int relu) {
    const int ty = (int)threadIdx.x / 16, tx = (int)threadIdx.x % 16;
    const bool vec = (N % 4 == 0) && fc_aligned16(C);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
        if (row >= M) continue;
        float* crow = C + (fc_i64)row * N;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int width = half == 0 ? 4 : TN - 4;
            const int col = n0 + (half == 0 ? tx * 4 : 64 + tx * width);
            float v[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (j >= width) break;
                v[j] = acc[i][half * 4 + j];
                if (bias != nullptr && col + j < N) v[j] += bias[col + j];
                if (relu) v[j] = fc_relu(v[j]);
            }
            if (width == 4 && vec && col + 3 < N) {
                fc_store4(crow + col, make_float4(v[0], v[1], v[2], v[3]));
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (j < width && col + j < N) crow[col + j] = v[j];
            }
        }
    }
}

// C[i] = relu?(sum over z < splits of ws[z*M*N + i] + bias[i % N]), z in fixed order.
// One thread per element of C (grid-stride).
extern "C" __global__ void gemm_splitk_reduce(const float* __restrict__ ws, float* __restrict__ C,
                                              int M, int N, int splits,
                                              const float* __restrict__ bias, int relu) {
    const fc_i64 total = (fc_i64)M * N;
    for (fc_i64 idx = fc_global_tid(); idx < total; idx += fc_grid_stride()) {
        float s = 0.0f;
        for (int z = 0; z < splits; ++z) s += ws[(fc_i64)z * total + idx];
        if (bias != nullptr) s += bias[(int)idx % N];  // M*N < 2^31 (checked by the caller)
        if (relu) s = fc_relu(s);
        C[idx] = s;
    }
}

#endif  // FASTCNN_GEMM_TILE_CUH
