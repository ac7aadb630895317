// kernels/pool.cu: max-pooling, NHWC x (N,H,W,C) -> y (N,P,Q,C), window ph x pw,
// stride (sh, sw), explicit padding (pt top, pl left; padding never wins).  Every
// kernel takes the tail N, H, W, C, P, Q, ph, pw, sh, sw, pt, pl (int32).
//   maxpool_fwd<V>  one thread per V consecutive channels of one output (V = 1, or 4
//                   when C % 4 == 0: float4 loads, uchar4 argmax stores); channel is
//                   the fastest index, so a warp reads and writes contiguous memory.
//                   Scans the window row-major; the first real position is taken,
//                   later ones only when strictly greater (first max wins).
//                   argmax (uint8) = r*pw + s within the window.
//   maxpool_bwd<V>  one thread per V channels of one input element: gathers dy from
//                   every window that covers it and whose argmax picked it, in the
//                   reference's (r, s) order (p, q descending).  Deterministic, no atomics.
// 1-D grid-stride launch, 256-thread blocks (no __launch_bounds__: with one, ptxas capped
// maxpool_fwd<4> at 32 registers and spilled); tensors below 2^31 elements (32-bit index math).
// Last measured: not yet measured on a GPU.
#include "common.cuh"

template <int V>
__global__ void
maxpool_fwd(const float* __restrict__ x, float* __restrict__ y, fc_u8* __restrict__ am,
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
        // Per-lane running max and its window index; lanes spelled out (no local arrays).
        float b0 = -__int_as_float(0x7f800000), b1 = b0, b2 = b0, b3 = b0;
        int a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        bool first = true;
        const int h0 = p * sh - pt, w0 = q * sw - pl;
        for (int r = 0; r < ph; ++r) {
            const int h = h0 + r;
            if (h < 0 || h >= H) continue;
            for (int s = 0; s < pw; ++s) {
                const int w = w0 + s;
                if (w < 0 || w >= W) continue;
                const float* src = x + fc_nhwc(n, h, w, c, H, W, C);
                const int at = r * pw + s;
                if constexpr (V == 4) {
                    const float4 f = fc_load4(src);
                    if (first || f.x > b0) { b0 = f.x; a0 = at; }
                    if (first || f.y > b1) { b1 = f.y; a1 = at; }
                    if (first || f.z > b2) { b2 = f.z; a2 = at; }
                    if (first || f.w > b3) { b3 = f.w; a3 = at; }
                } else {
                    const float f = src[0];
                    if (first || f > b0) { b0 = f; a0 = at; }
                }
                first = false;
            }
        }
        const fc_i64 o = (((fc_i64)n * P + p) * Q + q) * C + c;
        if constexpr (V == 4) {
            fc_store4(y + o, make_float4(b0, b1, b2, b3));
            *reinterpret_cast<uchar4*>(am + o) = make_uchar4((fc_u8)a0, (fc_u8)a1, (fc_u8)a2, (fc_u8)a3);
        } else {
            y[o] = b0;
            am[o] = (fc_u8)a0;
        }
    }
}

template <int V>
__global__ void
maxpool_bwd(const float* __restrict__ dy, const fc_u8* __restrict__ am, float* __restrict__ dx,
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
                if constexpr (V == 4) {
                    const uchar4 a = *reinterpret_cast<const uchar4*>(am + o);
                    const float4 d = fc_load4(dy + o);
                    if (a.x == want) acc[0] += d.x;
                    if (a.y == want) acc[1] += d.y;
                    if (a.z == want) acc[2] += d.z;
                    if (a.w == want) acc[3] += d.w;
                } else {
                    if (am[o] == want) acc[0] += dy[o];
                }
            }
        }
        const fc_i64 o = fc_nhwc(n, h, w, c, H, W, C);
        if constexpr (V == 4) {
            fc_store4(dx + o, make_float4(acc[0], acc[1], acc[2], acc[3]));
        } else {
            dx[o] = acc[0];
        }
    }
}

#ifdef FASTCNN_INSTANTIATE
template __global__ void maxpool_fwd<1>(const float*, float*, fc_u8*, int, int, int, int, int, int, int, int, int, int, int, int);
template __global__ void maxpool_fwd<4>(const float*, float*, fc_u8*, int, int, int, int, int, int, int, int, int, int, int, int);
template __global__ void maxpool_bwd<1>(const float*, const fc_u8*, float*, int, int, int, int, int, int, int, int, int, int, int, int);
template __global__ void maxpool_bwd<4>(const float*, const fc_u8*, float*, int, int, int, int, int, int, int, int, int, int, int, int);
#endif
