// kernels/pool.cu: max-pooling, NHWC x (N,H,W,C) -> y (N,P,Q,C), window ph x pw,
// stride (sh, sw), explicit padding (pt top, pl left; padding never wins).  Every
// kernel takes the tail N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl (int32), even where
// the window is a template argument.  Rules shared by every forward kernel (they are the
// reference's): the window is scanned row-major, the first real position is the start
// and a later one replaces it only when strictly greater (first max wins); a window
// holding NaN gives y = NaN and argmax = ph*pw - 1 (numpy.maximum propagates NaN and
// nothing equals it).  argmax (uint8) = r*pw + s within the window.  Every backward
// kernel is a gather: an input element sums, from 0.0f, dy of every window that covers
// it and whose argmax picked it, in the reference's (r, s) order (p, q descending), so
// dx matches the reference bit for bit.  No atomics, deterministic.  Tensors below 2^31
// elements (32-bit index math; the caller checks).  1-D grid-stride launches, 256-thread
// blocks, no __launch_bounds__ (with one, ptxas capped maxpool_fwd<4> at 32 registers
// and spilled).  V = channels per thread: 4 (16-byte float4 loads/stores, uchar4 argmax;
// C % 4 == 0 and 16-byte aligned tensors), 2 (float2/uchar2; C % 2 == 0) or 1; the tiled
// forward also V = 8 (variant vec8: two float4 per tap, argmax as one 8-byte uint2 store;
// C % 8 == 0, x and y 32-byte, argmax 8-byte aligned as the caller checks).
// Element type T: float or __nv_bfloat16 (bf16.cuh) for every kernel but the smem forward
// (float only): one template each, float32 compares and sums inside, a bfloat16 result
// rounded once where it is stored (a maximum is one of the inputs, so y is exact; dx is the
// float32 sum rounded once).  A bfloat16 thread moves V * 2 bytes (V = 8: one 16-byte
// load, alignment 2 * V bytes).  The bfloat16 instances: not measured on a GPU yet.
#include "common.cuh"
#include "bf16.cuh"

// ---------------------------------------------------------------- V-channel helpers
template <int V>
FC_DEVICE void pool_load(const float* __restrict__ p, float (&f)[V]) {
    if constexpr (V == 8) {
        const float4 t = __ldg(reinterpret_cast<const float4*>(p));
        const float4 u = __ldg(reinterpret_cast<const float4*>(p) + 1);
        f[0] = t.x; f[1] = t.y; f[2] = t.z; f[3] = t.w; f[4] = u.x; f[5] = u.y; f[6] = u.z; f[7] = u.w;
    } else if constexpr (V == 4) {
        const float4 t = __ldg(reinterpret_cast<const float4*>(p));
        f[0] = t.x; f[1] = t.y; f[2] = t.z; f[3] = t.w;
    } else if constexpr (V == 2) {
        const float2 t = __ldg(reinterpret_cast<const float2*>(p));
        f[0] = t.x; f[1] = t.y;
    } else {
        f[0] = __ldg(p);
    }
}

// V bfloat16 (2V bytes: one 16-, 8-, 4- or 2-byte load), widened exactly.  A 32-bit word
// holds two elements, the first in its low half (little-endian).
template <int V>
FC_DEVICE void pool_load(const __nv_bfloat16* __restrict__ p, float (&f)[V]) {
    if constexpr (V == 1) {
        f[0] = __bfloat162float(__ushort_as_bfloat16(__ldg(reinterpret_cast<const unsigned short*>(p))));
    } else {
        unsigned w[V / 2];
        if constexpr (V == 8) {
            const uint4 t = __ldg(reinterpret_cast<const uint4*>(p));
            w[0] = t.x; w[1] = t.y; w[2] = t.z; w[3] = t.w;
        } else if constexpr (V == 4) {
            const uint2 t = __ldg(reinterpret_cast<const uint2*>(p));
            w[0] = t.x; w[1] = t.y;
        } else {
            w[0] = __ldg(reinterpret_cast<const unsigned*>(p));
        }
#pragma unroll
        for (int k = 0; k < V / 2; ++k) {
            f[2 * k] = __uint_as_float(w[k] << 16);
            f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        }
    }
}

// V floats rounded once each (to nearest even) to bfloat16, stored in one 2V-byte store.
template <int V>
FC_DEVICE void pool_store(__nv_bfloat16* __restrict__ p, const float (&f)[V]) {
    if constexpr (V == 1) {
        p[0] = __float2bfloat16_rn(f[0]);
    } else {
        unsigned w[V / 2];
#pragma unroll
        for (int k = 0; k < V / 2; ++k) {
            w[k] = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(f[2 * k]))
                   | (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(f[2 * k + 1])) << 16;
        }
        if constexpr (V == 8) {
            *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
        } else if constexpr (V == 4) {
            *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
        } else {
            *reinterpret_cast<unsigned*>(p) = w[0];
        }
    }
}

template <int V>
FC_DEVICE void pool_store(float* __restrict__ p, const float (&f)[V]) {
    if constexpr (V == 8) {
        reinterpret_cast<float4*>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
        reinterpret_cast<float4*>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
    } else if constexpr (V == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
    } else if constexpr (V == 2) {
        *reinterpret_cast<float2*>(p) = make_float2(f[0], f[1]);
    } else {
        p[0] = f[0];
    }
}

template <int V>
FC_DEVICE void pool_load_u8(const fc_u8* __restrict__ p, int (&a)[V]) {
    if constexpr (V == 4) {
        const uchar4 t = __ldg(reinterpret_cast<const uchar4*>(p));
        a[0] = t.x; a[1] = t.y; a[2] = t.z; a[3] = t.w;
    } else if constexpr (V == 2) {
        const uchar2 t = __ldg(reinterpret_cast<const uchar2*>(p));
        a[0] = t.x; a[1] = t.y;
    } else {
        a[0] = __ldg(p);
    }
}

template <int V>
FC_DEVICE void pool_store_u8(fc_u8* __restrict__ p, const int (&a)[V]) {
    if constexpr (V == 8) {  // 8 bytes: two little-endian words
        *reinterpret_cast<uint2*>(p) = make_uint2(
            (unsigned)a[0] | (unsigned)a[1] << 8 | (unsigned)a[2] << 16 | (unsigned)a[3] << 24,
            (unsigned)a[4] | (unsigned)a[5] << 8 | (unsigned)a[6] << 16 | (unsigned)a[7] << 24);
    } else if constexpr (V == 4) {
        *reinterpret_cast<uchar4*>(p) = make_uchar4((fc_u8)a[0], (fc_u8)a[1], (fc_u8)a[2], (fc_u8)a[3]);
    } else if constexpr (V == 2) {
        *reinterpret_cast<uchar2*>(p) = make_uchar2((fc_u8)a[0], (fc_u8)a[1]);
    } else {
        p[0] = (fc_u8)a[0];
    }
}

// Running max: f replaces b when strictly greater, or when f is NaN (which then sticks:
// nothing is greater than NaN, and a later NaN only moves the index, fixed at the end).
FC_DEVICE bool pool_takes(float f, float b) { return f > b || f != f; }

// ---------------------------------------------------------------- generic kernels
//   maxpool_fwd<T, V>  (variants direct: V = 1; vec4: V = 4 when C % 4 == 0, else 1; tiled's
//                   fallback for windows without a tile instance: V = 4, 2 or 1)
//   What: one thread per V consecutive channels of one output; channel is the fastest
//   index, so a warp reads and writes contiguous memory.  Launch: 1-D, N*P*Q*C/V items.
//   Algorithm: runtime loops over the window (ph, pw, strides, padding all runtime).
//   Last measured (H200 2026-11-28 run 3 (CUDA events, L2 flushed, medians; copy 4178 GB/s read+write); GB/s counts x read + y written, not argmax): 128x55x55x96 3x3/2:
//     direct 219 us, vec4 79.8 us (2313 GB/s, 55%); PyTorch NCHW 144 us.
//   Earlier (H200 2026-11-28 run 1, CUDA events, L2 flushed, medians; copy 4183 GB/s):
//     128x55x55x96 3x3/2: direct 208 us (886 GB/s), vec4 78.5 us (2352 GB/s, 56%);
//     128x27x27x256: direct 159, vec4 71.4 us (1648 GB/s); 128x13x13x256: 39.2 / 36.0 us;
//     LeNet 200x28x28x6 2x2/2: 38.3 / 32.5 us (V = 1 for both; per-call host cost).
template <class T, int V>
__global__ void
maxpool_fwd(const T* __restrict__ x, T* __restrict__ y, fc_u8* __restrict__ am,
            int N, int H, int W, int C, int P, int Q, int ph, int pw, int sh, int sw, int pt, int pl) {
    const int CV = C / V;
    const fc_i64 total = (fc_i64)N * P * Q * CV;
    for (fc_i64 i = fc_global_tid(); i < total; i += fc_grid_stride()) {
        const int idx = (int)i;  // total < 2^31 (checked by the caller): 32-bit index math
        const int c = (idx % CV) * V;
        int t = idx / CV;
        const int q = t % Q;
        t /= Q;
        const int p = t % P, n = t / P;
        float b[V];
        int a[V];
        bool first = true;
        const int h0 = p * sh - pt, w0 = q * sw - pl;
#pragma unroll
        for (int v = 0; v < V; ++v) { b[v] = -__int_as_float(0x7f800000); a[v] = 0; }
        for (int r = 0; r < ph; ++r) {
            const int h = h0 + r;
            if (h < 0 || h >= H) continue;
            for (int s = 0; s < pw; ++s) {
                const int w = w0 + s;
                if (w < 0 || w >= W) continue;
                float f[V];
                pool_load<V>(x + fc_nhwc(n, h, w, c, H, W, C), f);
                const int at = r * pw + s;
#pragma unroll
                for (int v = 0; v < V; ++v)
                    if (first || pool_takes(f[v], b[v])) { b[v] = f[v]; a[v] = at; }
                first = false;
            }
        }
#pragma unroll
        for (int v = 0; v < V; ++v)
            if (b[v] != b[v]) a[v] = ph * pw - 1;
        const fc_i64 o = (((fc_i64)n * P + p) * Q + q) * C + c;
        pool_store<V>(y + o, b);
        pool_store_u8<V>(am + o, a);
    }
}

//   maxpool_bwd<T, V>  (direct: V = 1; vec4: 4 or 1; tiled's fallback: 4, 2 or 1)
//   What: one thread per V channels of one input element.  Launch: 1-D, N*H*W*C/V items.
//   Algorithm: runtime loops over the windows p, q that cover the element (descending, so
//   r, s ascending as in the reference), adding dy where argmax == r*pw + s.
//   Last measured (H200 2026-11-28 run 3 (CUDA events, L2 flushed, medians; copy 4178 GB/s read+write)): 128x55x55x96 3x3/2: direct 514 us, vec4 152 us (1211 GB/s);
//     PyTorch NHWC 315 us.
//   Earlier (H200 2026-11-28 run 1): 128x55x55x96 3x3/2: direct 562 us, vec4 153 us
//     (1208 GB/s, 29%); 128x27x27x256: 420 / 110 us (1070 GB/s); LeNet 200x28x28x6 2x2/2:
//     37.2 / 37.0 us.
template <class T, int V>
__global__ void
maxpool_bwd(const T* __restrict__ dy, const fc_u8* __restrict__ am, T* __restrict__ dx,
            int N, int H, int W, int C, int P, int Q, int ph, int pw, int sh, int sw, int pt, int pl) {
    const int CV = C / V;
    const fc_i64 total = (fc_i64)N * H * W * CV;
    for (fc_i64 i = fc_global_tid(); i < total; i += fc_grid_stride()) {
        const int idx = (int)i;  // total < 2^31 (checked by the caller): 32-bit index math
        const int c = (idx % CV) * V;
        int t = idx / CV;
        const int w = t % W;
        t /= W;
        const int h = t % H, n = t / H;
        // Windows p with p*sh - pt <= h <= p*sh - pt + ph - 1 (likewise q).
        const int hp = h + pt, wp = w + pl;
        const int p_hi = min(P - 1, hp / sh), q_hi = min(Q - 1, wp / sw);
        const int p_lo = hp - ph + 1 <= 0 ? 0 : (hp - ph + 1 + sh - 1) / sh;
        const int q_lo = wp - pw + 1 <= 0 ? 0 : (wp - pw + 1 + sw - 1) / sw;
        float acc[V];
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = 0.0f;
        for (int p = p_hi; p >= p_lo; --p) {       // r = hp - p*sh ascending
            const int r = hp - p * sh;
            for (int q = q_hi; q >= q_lo; --q) {   // s = wp - q*sw ascending
                const int want = r * pw + (wp - q * sw);
                const fc_i64 o = (((fc_i64)n * P + p) * Q + q) * C + c;
                int a[V];
                float d[V];
                pool_load_u8<V>(am + o, a);
                pool_load<V>(dy + o, d);
#pragma unroll
                for (int v = 0; v < V; ++v)
                    if (a[v] == want) acc[v] += d[v];
            }
        }
        pool_store<V>(dx + fc_nhwc(n, h, w, c, H, W, C), acc);
    }
}

// ---------------------------------------------------------------- tiled kernels
//   maxpool_fwd_tile<T, V, PH, PW, SH, SW, OH, OW>  (variant tiled)
//   What: one thread computes an OH x OW block of adjacent outputs for V channels; the
//   window (PH x PW) and stride (SH x SW) are template arguments (ph..sw of the tail must
//   equal them), padding is runtime.  Launch: 1-D, N * ceil(P/OH) * ceil(Q/OW) * C/V items.
//   Algorithm: the thread loads the ((OH-1)*SH + PH) x ((OW-1)*SW + PW) input block once
//   (fully unrolled, so every load is in flight before the first compare; 3x3/2 with 2x2
//   outputs reads 25 pixels instead of 36) and feeds each pixel to every window holding
//   it, row-major within each window.
//   Variant vec8 uses it with V = 8 and OH = OW = 1: one output x 8 channels per thread,
//   2*PH*PW float4 loads per thread (18 for 3x3), fully unrolled; ptxas schedules them
//   (46 registers on sm_90, so not all 18 are in flight before the first compare).
//   Variant vec8x2: V = 8, OH = 1, OW = 2: two outputs side by side share their window's
//   overlapping column (3x3/2: 15 pixels for 2 outputs instead of 18), half the threads.
//   Added after run 3; not yet measured.
//   Last measured (H200 2026-11-28 run 3 (CUDA events, L2 flushed, medians; copy 4178 GB/s read+write)): 128x55x55x96 3x3/2: tiled 92.3 us (1998 GB/s, 48%);
//     vec8 (V = 8, 1x1) 63.6 us (2900 GB/s, 69.4%: the fastest forward); vec4 79.8 us.
template <class T, int V, int PH, int PW, int SH, int SW, int OH, int OW>
__global__ void
maxpool_fwd_tile(const T* __restrict__ x, T* __restrict__ y, fc_u8* __restrict__ am,
                 int N, int H, int W, int C, int P, int Q, int ph, int pw, int sh, int sw, int pt, int pl) {
    constexpr int RH = (OH - 1) * SH + PH, RW = (OW - 1) * SW + PW;  // input block
    const int CV = C / V;
    const int PT = (P + OH - 1) / OH, QT = (Q + OW - 1) / OW;
    const fc_i64 total = (fc_i64)N * PT * QT * CV;
    for (fc_i64 i = fc_global_tid(); i < total; i += fc_grid_stride()) {
        const int idx = (int)i;  // total <= N*P*Q*C/V < 2^31 (checked by the caller)
        const int c = (idx % CV) * V;
        int t = idx / CV;
        const int q0 = (t % QT) * OW;
        t /= QT;
        const int p0 = (t % PT) * OH, n = t / PT;
        const int h0 = p0 * SH - pt, w0 = q0 * SW - pl;
        float b[OH][OW][V];
        int a[OH][OW][V];
#pragma unroll
        for (int u = 0; u < OH; ++u) {
            const int r0 = max(0, -(h0 + u * SH));  // first real position of the window
#pragma unroll
            for (int o = 0; o < OW; ++o) {
                const int s0 = max(0, -(w0 + o * SW));
#pragma unroll
                for (int v = 0; v < V; ++v) { b[u][o][v] = -__int_as_float(0x7f800000); a[u][o][v] = r0 * PW + s0; }
            }
        }
#pragma unroll
        for (int rr = 0; rr < RH; ++rr) {
            const int h = h0 + rr;
            const bool hok = h >= 0 && h < H;
            const int row = (n * H + h) * W;
#pragma unroll
            for (int jj = 0; jj < RW; ++jj) {
                const int w = w0 + jj;
                if (!hok || w < 0 || w >= W) continue;
                float f[V];
                pool_load<V>(x + (row + w) * C + c, f);
#pragma unroll
                for (int u = 0; u < OH; ++u) {
                    const int r = rr - u * SH;
                    if (r < 0 || r >= PH) continue;
#pragma unroll
                    for (int o = 0; o < OW; ++o) {
                        const int s = jj - o * SW;
                        if (s < 0 || s >= PW) continue;
#pragma unroll
                        for (int v = 0; v < V; ++v)
                            if (pool_takes(f[v], b[u][o][v])) { b[u][o][v] = f[v]; a[u][o][v] = r * PW + s; }
                    }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < OH; ++u) {
            const int p = p0 + u;
            if (p >= P) continue;
#pragma unroll
            for (int o = 0; o < OW; ++o) {
                const int q = q0 + o;
                if (q >= Q) continue;
#pragma unroll
                for (int v = 0; v < V; ++v)
                    if (b[u][o][v] != b[u][o][v]) a[u][o][v] = PH * PW - 1;
                const int off = ((n * P + p) * Q + q) * C + c;
                pool_store<V>(y + off, b[u][o]);
                pool_store_u8<V>(am + off, a[u][o]);
            }
        }
    }
}

//   maxpool_bwd_tile<T, V, PH, PW, SH, SW, BH, BW>  (variant tiled)
//   What: one thread writes dx for a tile of (BH*SH) x (BW*SW) input pixels x V channels
//   (padded coordinates, tiles aligned to the stride).  Launch: 1-D,
//   N * ceil((H+pt)/(BH*SH)) * ceil((W+pl)/(BW*SW)) * C/V items.
//   Algorithm: the windows that can cover the tile are ((PH-1)/SH + BH) x ((PW-1)/SW + BW);
//   the thread loads their dy and argmax once (3x3/2, 2x4 pixels: 6 windows instead of
//   18 window reads per pixel), then for each pixel adds, from 0.0f, the dy whose argmax
//   names it, windows in p, q descending order (r, s ascending: the reference's order).
//   Which (window, pixel) pairs can meet and the position r*PW + s each one needs are
//   compile-time constants.
//   Last measured (H200 2026-11-28 run 3 (CUDA events, L2 flushed, medians; copy 4178 GB/s read+write)): 128x55x55x96 3x3/2: tiled 52.8 us (3497 GB/s, 83.7%: the fastest
//     backward); PyTorch NHWC 315 us.
template <class T, int V, int PH, int PW, int SH, int SW, int BH, int BW>
__global__ void
maxpool_bwd_tile(const T* __restrict__ dy, const fc_u8* __restrict__ am, T* __restrict__ dx,
                 int N, int H, int W, int C, int P, int Q, int ph, int pw, int sh, int sw, int pt, int pl) {
    constexpr int KH = (PH - 1) / SH + BH, KW = (PW - 1) / SW + BW;  // windows per tile
    constexpr int TH = BH * SH, TW = BW * SW;                         // pixels per tile
    const int CV = C / V;
    const int HT = (H + pt + TH - 1) / TH, WT = (W + pl + TW - 1) / TW;
    const fc_i64 total = (fc_i64)N * HT * WT * CV;
    for (fc_i64 i = fc_global_tid(); i < total; i += fc_grid_stride()) {
        const int idx = (int)i;  // total < 2^31 (checked by the caller)
        const int c = (idx % CV) * V;
        int t = idx / CV;
        const int tw = t % WT;
        t /= WT;
        const int th = t % HT, n = t / HT;
        const int pb = th * BH + BH - 1, qb = tw * BW + BW - 1;  // window kk, ll = (pb - kk, qb - ll)
        float d[KH][KW][V];
        int g[KH][KW][V];
#pragma unroll
        for (int kk = 0; kk < KH; ++kk) {
            const int p = pb - kk;
            const bool pok = p >= 0 && p < P;
#pragma unroll
            for (int ll = 0; ll < KW; ++ll) {
                const int q = qb - ll;
                if (pok && q >= 0 && q < Q) {
                    const int off = ((n * P + p) * Q + q) * C + c;
                    pool_load<V>(dy + off, d[kk][ll]);
                    pool_load_u8<V>(am + off, g[kk][ll]);
                } else {
#pragma unroll
                    for (int v = 0; v < V; ++v) { d[kk][ll][v] = 0.0f; g[kk][ll][v] = -1; }  // matches nothing
                }
            }
        }
#pragma unroll
        for (int ii = 0; ii < TH; ++ii) {
            const int h = th * TH + ii - pt;
            if (h < 0 || h >= H) continue;
            const int row = (n * H + h) * W;
#pragma unroll
            for (int jj = 0; jj < TW; ++jj) {
                const int w = tw * TW + jj - pl;
                if (w < 0 || w >= W) continue;
                float acc[V];
#pragma unroll
                for (int v = 0; v < V; ++v) acc[v] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < KH; ++kk) {          // p descending: r ascending
                    const int r = ii - (BH - 1 - kk) * SH;
                    if (r < 0 || r >= PH) continue;
#pragma unroll
                    for (int ll = 0; ll < KW; ++ll) {      // q descending: s ascending
                        const int s = jj - (BW - 1 - ll) * SW;
                        if (s < 0 || s >= PW) continue;
#pragma unroll
                        for (int v = 0; v < V; ++v)
                            if (g[kk][ll][v] == r * PW + s) acc[v] += d[kk][ll][v];
                    }
                }
                pool_store<V>(dx + (row + w) * C + c, acc);
            }
        }
    }
}

// ---------------------------------------------------------------- shared-memory forward
//   maxpool_fwd_smem<PH, PW, SH, SW, TP, TQ>  (variant smem; V = 4: C % 4 == 0, x and y
//   16-byte, argmax 4-byte aligned; otherwise smem uses tiled's kernels)
//   What: one block of TP*TQ*8 threads computes a TP x TQ tile of outputs for a slab of 32
//   channels (8 float4 chunks; chunks at or past C/4 idle) of one image; window and
//   stride compiled in, padding runtime.  Launch: 1-D, blockDim = TP*TQ*8 (the caller
//   passes it), block-stride loop over N * ceil(P/TP) * ceil(Q/TQ) * ceil(C/32) tiles,
//   channel slab fastest (neighbouring blocks read the rest of the same 384-byte pixels).
//   Algorithm: the block copies the ((TP-1)*SH+PH) x ((TQ-1)*SW+PW) x 32-channel input
//   band into shared memory with consecutive threads on consecutive 16-byte chunks (8
//   threads = one pixel's 128-byte line), all of a thread's LOADS loads issued before its
//   first shared store, so each input element is read once per tile (3x3/2, 4x8
//   outputs: 9x17 pixels = 19.6 KB per block, halo rows/columns 1.2x, from L2) instead of
//   ~2.25x by vec4; then each thread reads its window's 9 float4 from shared memory (8
//   lanes = one contiguous 128-byte pixel: no bank conflicts) and stores one float4 of y
//   and one uchar4 of argmax (coalesced).  Bytes in flight: ~5 float4 loads x 256 threads
//   per block, several blocks per SM (~100+ KB/SM against the ~32 KB Little's law asks).
//   Same rules as maxpool_fwd_tile (first max wins, NaN -> ph*pw-1, padding never wins).
//   Last measured (H200 2026-11-28 run 3 (CUDA events, L2 flushed, medians; copy 4178 GB/s read+write)): 128x55x55x96 3x3/2: 82.1 us (2247 GB/s, 54%), slower than vec8.
template <int PH, int PW, int SH, int SW, int TP, int TQ>
__global__ void
maxpool_fwd_smem(const float* __restrict__ x, float* __restrict__ y, fc_u8* __restrict__ am,
                 int N, int H, int W, int C, int P, int Q, int ph, int pw, int sh, int sw, int pt, int pl) {
    constexpr int CK = 8;                                             // float4 chunks per slab
    constexpr int NT = TP * TQ * CK;                                  // threads per block
    constexpr int RH = (TP - 1) * SH + PH, RW = (TQ - 1) * SW + PW;   // input band
    constexpr int TILE = RH * RW * CK;                                // float4 in shared memory
    constexpr int LOADS = (TILE + NT - 1) / NT;
    __shared__ float4 band[TILE];
    const int C4 = C >> 2;
    const int SL = (C4 + CK - 1) / CK, PT = (P + TP - 1) / TP, QT = (Q + TQ - 1) / TQ;
    const int tiles = N * PT * QT * SL;  // tiles * NT < 2^31 (checked by the caller)
    const int t = threadIdx.x;
    const int c4 = t % CK, oq = (t / CK) % TQ, op = t / (CK * TQ);
    const float4* __restrict__ x4 = reinterpret_cast<const float4*>(x);
    for (int k = blockIdx.x; k < tiles; k += gridDim.x) {          // uniform per block
        int u = k;
        const int sl = u % SL;
        u /= SL;
        const int qt = u % QT;
        u /= QT;
        const int ptile = u % PT, n = u / PT;
        const int h0 = ptile * TP * SH - pt, w0 = qt * TQ * SW - pl, cb = sl * CK;
        float4 f[LOADS];
#pragma unroll
        for (int j = 0; j < LOADS; ++j) {
            const int i = t + j * NT;
            const int h = h0 + i / (RW * CK), w = w0 + (i / CK) % RW, cc = cb + i % CK;
            f[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if ((TILE % NT == 0 || i < TILE) && h >= 0 && h < H && w >= 0 && w < W && cc < C4)
                f[j] = __ldg(x4 + (n * H + h) * W * C4 + w * C4 + cc);
        }
#pragma unroll
        for (int j = 0; j < LOADS; ++j) {
            const int i = t + j * NT;
            if (TILE % NT == 0 || i < TILE) band[i] = f[j];
        }
        __syncthreads();
        const int p = ptile * TP + op, q = qt * TQ + oq, cc = cb + c4;
        if (p < P && q < Q && cc < C4) {
            const int hw = h0 + op * SH, ww = w0 + oq * SW;           // window's top-left
            const int first = max(0, -hw) * PW + max(0, -ww);        // first real position
            float b[4];
            int a[4];
#pragma unroll
            for (int v = 0; v < 4; ++v) { b[v] = -__int_as_float(0x7f800000); a[v] = first; }
#pragma unroll
            for (int r = 0; r < PH; ++r) {
                if (hw + r < 0 || hw + r >= H) continue;
#pragma unroll
                for (int s = 0; s < PW; ++s) {
                    if (ww + s < 0 || ww + s >= W) continue;
                    const float4 e = band[((op * SH + r) * RW + oq * SW + s) * CK + c4];
                    const float g[4] = {e.x, e.y, e.z, e.w};
#pragma unroll
                    for (int v = 0; v < 4; ++v)
                        if (pool_takes(g[v], b[v])) { b[v] = g[v]; a[v] = r * PW + s; }
                }
            }
#pragma unroll
            for (int v = 0; v < 4; ++v)
                if (b[v] != b[v]) a[v] = PH * PW - 1;
            const int o = ((n * P + p) * Q + q) * C + cc * 4;
            pool_store<4>(y + o, b);
            pool_store_u8<4>(am + o, a);
        }
        __syncthreads();                                              // band is reloaded next
    }
}

#ifdef FASTCNN_INSTANTIATE
#define POOL_TAIL int, int, int, int, int, int, int, int, int, int, int, int
#define POOL_GENERIC(T, V) \
    template __global__ void maxpool_fwd<T, V>(const T*, T*, fc_u8*, POOL_TAIL); \
    template __global__ void maxpool_bwd<T, V>(const T*, const fc_u8*, T*, POOL_TAIL);
#define POOL_TILE(T, V, PH, PW, SH, SW, OH, OW, BH, BW) \
    template __global__ void maxpool_fwd_tile<T, V, PH, PW, SH, SW, OH, OW>(const T*, T*, fc_u8*, POOL_TAIL); \
    template __global__ void maxpool_bwd_tile<T, V, PH, PW, SH, SW, BH, BW>(const T*, const fc_u8*, T*, POOL_TAIL);
#define POOL_TILES(T, PH, PW, SH, SW, OH, OW, BH, BW) \
    POOL_TILE(T, 1, PH, PW, SH, SW, OH, OW, BH, BW) \
    POOL_TILE(T, 2, PH, PW, SH, SW, OH, OW, BH, BW) \
    POOL_TILE(T, 4, PH, PW, SH, SW, OH, OW, BH, BW)
#define POOL_VEC8(T, PH, PW, SH, SW) \
    template __global__ void maxpool_fwd_tile<T, 8, PH, PW, SH, SW, 1, 1>(const T*, T*, fc_u8*, POOL_TAIL); \
    template __global__ void maxpool_fwd_tile<T, 8, PH, PW, SH, SW, 1, 2>(const T*, T*, fc_u8*, POOL_TAIL);
#define POOL_SMEM(PH, PW, SH, SW, TP, TQ) \
    template __global__ void maxpool_fwd_smem<PH, PW, SH, SW, TP, TQ>(const float*, float*, fc_u8*, POOL_TAIL);
// Keep in step with fastcnn/backend/cuda/pool.py (CTYPES, GENERIC_LANES, TILES, VEC8, SMEM).
#define POOL_TYPED(T) \
    POOL_GENERIC(T, 1) \
    POOL_GENERIC(T, 2) \
    POOL_GENERIC(T, 4) \
    POOL_TILES(T, 2, 2, 2, 2, 1, 2, 1, 2) \
    POOL_TILES(T, 3, 3, 2, 2, 2, 2, 1, 2) \
    POOL_TILES(T, 3, 3, 1, 1, 1, 2, 1, 2) \
    POOL_TILES(T, 2, 2, 1, 1, 1, 2, 1, 2) \
    POOL_VEC8(T, 2, 2, 2, 2) \
    POOL_VEC8(T, 3, 3, 2, 2) \
    POOL_VEC8(T, 3, 3, 1, 1) \
    POOL_VEC8(T, 2, 2, 1, 1)
POOL_TYPED(float)
POOL_TYPED(__nv_bfloat16)
POOL_SMEM(2, 2, 2, 2, 4, 8)
POOL_SMEM(3, 3, 2, 2, 4, 8)
POOL_SMEM(3, 3, 1, 1, 4, 8)
POOL_SMEM(2, 2, 1, 1, 4, 8)
#endif
