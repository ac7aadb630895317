// kernels/conv_direct.cu: direct 2-D convolution for small channel counts (LeNet-5's
// C = 1 / 6, K = 6 / 16), where a GEMM tile starves.  NHWC x (N,H,W,C), HWIO w
// (R,S,C,K), y (N,P,Q,K), stride (sh, sw), explicit padding (pt top, pl left; bottom
// and right only shape P and Q).  Every kernel takes conv.cu's shape tail
//   N, H, W, C, K, R, S, P, Q, sh, sw, pt, pl   (int32).
// Correct for any shape; fast when R*S*C and K (forward, wgrad) or R*S*K and C (dgrad)
// are small.  Template instances are fetched through name_expressions, e.g.
// "conv_direct_fprop<8>"; FASTCNN_INSTANTIATE instantiates them for the compile test.
//
//   conv_direct_fprop<KC>   one thread per output pixel m = (n,p,q), KC output channels
//       k0 = blockIdx.y*KC .. k0+KC-1 in registers.  Block 128 threads over m, grid
//       (ceil(N*P*Q/128), ceil(K/KC)).  The weights w[j][k0..k0+KC) for rows
//       j = (r,s,c) are staged in shared memory, FC_DIRECT_SMEM floats at a time; each
//       thread reads each input tap x[n, p*sh-pt+r, q*sw-pl+s, c] once and FMAs it
//       against the KC staged weights (same address for the whole warp: broadcast).
//       Taps in the padding are skipped whole.  Epilogue: + bias[k], ReLU.
//   conv_direct_dgrad<CC>   one thread per input pixel m = (n,h,w), CC input channels
//       c0 = blockIdx.y*CC .. c0+CC-1.  Block 128 threads, grid (ceil(N*H*W/128),
//       ceil(C/CC)).  w[r,s,c0..c0+CC,k] staged in shared memory by rows j = (r,s,k).
//       For tap (r,s) the output is p = (h+pt-r)/sh, q = (w+pl-s)/sw, used only when
//       both divide exactly and land inside P x Q (computed, no search); then
//       dx += sum over k of dy[n,p,q,k] * w[r,s,c,k].
//   conv_direct_wgrad<KC>   pass 1 of a deterministic two-pass dw.  grid (row tiles,
//       ceil(K/KC), chunks): block z owns positions [z*chunk, (z+1)*chunk) of the
//       N*P*Q output positions; blockDim = TR*JL, thread (tid % TR, tid / TR) owns
//       row j = blockIdx.x*TR + tid%TR of R*S*C and KC channels of K, and sums a
//       contiguous 1/JL share of the block's positions in order (x tap read from
//       global memory, dy[pos][k0..k0+KC) the same address for the whole warp).
//       The JL lanes are added in lane order through shared memory; the block writes
//       its partial dw slice to out + z*R*S*C*K (dw itself when there is one chunk).
//   conv_direct_wgrad_reduce   pass 2: dw[o] = sum over chunks of ws[chunk][o]; block
//       256 = (256/L) outputs x L lanes (L = 1..32, more when there are more chunks):
//       lane l sums chunks l, l+L, ... in order, then a fixed tree over the lanes.
//       Same bits on every run on one card.
// No atomics anywhere; everything is capturable in a CUDA graph.
// Plans on 132 SMs (conv_direct.py): LeNet-5 batch 200 conv1 fprop<8> 1225 blocks, wgrad<8>
// 528 chunks x 256 threads (TR 32, JL 8) + reduce; conv2 fprop<8> 157x2 blocks, dgrad<8> 307
// blocks, wgrad<16> 2x264 blocks x 192 threads (TR 96, JL 2) + reduce.
// Last measured: H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19), CUDA events (one eager call each, host overhead included where the
//   kernel is shorter than it), vs cuDNN fp32 NCHW in the same run, LeNet-5 at batch 200:
//   conv1 fwd 38.1 us (cuDNN 26.4), conv1 wgrad 63.8 us (45.0), conv2 dgrad 73.6 us (38.5);
//   inside the captured LeNet-5 step (no host overhead) the whole step takes 333 us.
#include "common.cuh"

#define FC_DIRECT_THREADS 128
#define FC_DIRECT_SMEM 4096      // floats of staged weights per block (16 KiB)
#define FC_WGRAD_THREADS 256     // most threads of a conv_direct_wgrad block
#define FC_REDUCE_THREADS 256    // conv_direct_wgrad_reduce block

// acc[0..V) += v * s[0..V), s 16-byte aligned in shared memory, V a multiple of 4.
template <int V>
FC_DEVICE void fc_axpy_shared(float (&acc)[V], float v, const float* s) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
        const float4 t = *reinterpret_cast<const float4*>(s + i);
        acc[i] = fmaf(v, t.x, acc[i]);
        acc[i + 1] = fmaf(v, t.y, acc[i + 1]);
        acc[i + 2] = fmaf(v, t.z, acc[i + 2]);
        acc[i + 3] = fmaf(v, t.w, acc[i + 3]);
    }
}

template <int KC>
__global__ void __launch_bounds__(FC_DIRECT_THREADS)
conv_direct_fprop(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                  float* __restrict__ y, int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                  int sh, int sw, int pt, int pl, int relu) {
    constexpr int ROWS = FC_DIRECT_SMEM / KC;
    __shared__ __align__(16) float ws[FC_DIRECT_SMEM];
    const int tid = (int)threadIdx.x;
    const int k0 = (int)blockIdx.y * KC;
    const int NPQ = N * P * Q, RSC = R * S * C;
    const int m = (int)blockIdx.x * FC_DIRECT_THREADS + tid;
    const bool m_ok = m < NPQ;
    const int mm = m_ok ? m : 0;
    const int n = mm / (P * Q), pq = mm - n * (P * Q), p = pq / Q, q = pq - p * Q;
    const int h0 = p * sh - pt, w0 = q * sw - pl;
    const float* xn = x + (fc_i64)n * H * W * C;
    float acc[KC];
#pragma unroll
    for (int i = 0; i < KC; ++i) acc[i] = 0.0f;

    for (int j0 = 0; j0 < RSC; j0 += ROWS) {
        const int j1 = min(RSC, j0 + ROWS);
        __syncthreads();  // the previous chunk is no longer read
        for (int i = tid; i < (j1 - j0) * KC; i += FC_DIRECT_THREADS) {
            const int jj = i / KC, k = k0 + (i - jj * KC);
            ws[i] = k < K ? w[(fc_i64)(j0 + jj) * K + k] : 0.0f;
        }
        __syncthreads();
        if (m_ok) {
            for (int rs = j0 / C; rs * C < j1; ++rs) {
                const int r = rs / S, s = rs - r * S;
                const int h = h0 + r, wi = w0 + s;
                if (h < 0 || h >= H || wi < 0 || wi >= W) continue;  // padding: adds nothing
                const int cb = max(j0, rs * C) - rs * C, ce = min(j1, rs * C + C) - rs * C;
                const float* xp = xn + ((fc_i64)h * W + wi) * C;
                const float* wr = ws + (rs * C - j0) * KC;  // staged row (rs*C + c) at wr + c*KC
                for (int c = cb; c < ce; ++c) fc_axpy_shared<KC>(acc, xp[c], wr + c * KC);
            }
        }
    }
    if (!m_ok) return;
    float* yp = y + (fc_i64)m * K;
#pragma unroll
    for (int i = 0; i < KC; ++i) {
        const int k = k0 + i;
        if (k < K) {
            float v = acc[i];
            if (bias != nullptr) v += bias[k];
            yp[k] = relu ? fc_relu(v) : v;
        }
    }
}

template <int CC>
__global__ void __launch_bounds__(FC_DIRECT_THREADS)
conv_direct_dgrad(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                  int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                  int sh, int sw, int pt, int pl) {
    constexpr int ROWS = FC_DIRECT_SMEM / CC;
    __shared__ __align__(16) float ws[FC_DIRECT_SMEM];
    const int tid = (int)threadIdx.x;
    const int c0 = (int)blockIdx.y * CC;
    const int NHW = N * H * W, RSK = R * S * K;
    const int m = (int)blockIdx.x * FC_DIRECT_THREADS + tid;
    const bool m_ok = m < NHW;
    const int mm = m_ok ? m : 0;
    const int n = mm / (H * W), hw = mm - n * (H * W), h = hw / W, wi = hw - h * W;
    const int hp = h + pt, wp = wi + pl;
    const float* dyn = dy + (fc_i64)n * P * Q * K;
    const bool vec = (K % 4 == 0) && fc_aligned16(dy);
    float acc[CC];
#pragma unroll
    for (int i = 0; i < CC; ++i) acc[i] = 0.0f;

    for (int j0 = 0; j0 < RSK; j0 += ROWS) {
        const int j1 = min(RSK, j0 + ROWS);
        __syncthreads();
        for (int i = tid; i < (j1 - j0) * CC; i += FC_DIRECT_THREADS) {
            const int jj = i / CC, c = c0 + (i - jj * CC);
            const int j = j0 + jj, rs = j / K, k = j - rs * K;
            ws[i] = c < C ? w[((fc_i64)rs * C + c) * K + k] : 0.0f;
        }
        __syncthreads();
        if (m_ok) {
            for (int rs = j0 / K; rs * K < j1; ++rs) {
                const int r = rs / S, s = rs - r * S;
                const int ph = hp - r, qw = wp - s;
                if (ph < 0 || qw < 0) continue;
                const int p = ph / sh, q = qw / sw;
                if (p * sh != ph || q * sw != qw || p >= P || q >= Q) continue;  // reaches no output
                const int kb = max(j0, rs * K) - rs * K, ke = min(j1, rs * K + K) - rs * K;
                const float* dp = dyn + ((fc_i64)p * Q + q) * K;
                const float* wr = ws + (rs * K - j0) * CC;  // staged row (rs*K + k) at wr + k*CC
                if (vec && kb == 0 && ke == K) {
                    for (int k = 0; k < K; k += 4) {
                        const float4 d = fc_load4(dp + k);
                        fc_axpy_shared<CC>(acc, d.x, wr + k * CC);
                        fc_axpy_shared<CC>(acc, d.y, wr + (k + 1) * CC);
                        fc_axpy_shared<CC>(acc, d.z, wr + (k + 2) * CC);
                        fc_axpy_shared<CC>(acc, d.w, wr + (k + 3) * CC);
                    }
                } else {
                    for (int k = kb; k < ke; ++k) fc_axpy_shared<CC>(acc, dp[k], wr + k * CC);
                }
            }
        }
    }
    if (!m_ok) return;
    float* xp = dx + (fc_i64)m * C;
#pragma unroll
    for (int i = 0; i < CC; ++i)
        if (c0 + i < C) xp[c0 + i] = acc[i];
}

// blockDim.x = TR * JL (TR a multiple of 32, at most FC_WGRAD_THREADS); chunk = positions per block.
template <int KC>
__global__ void __launch_bounds__(FC_WGRAD_THREADS)
conv_direct_wgrad(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out,
                  int N, int H, int W, int C, int K, int R, int S, int P, int Q,
                  int sh, int sw, int pt, int pl, int TR, int chunk) {
    __shared__ __align__(16) float red[FC_WGRAD_THREADS * KC];
    const int tid = (int)threadIdx.x;
    const int JL = (int)blockDim.x / TR;
    const int trow = tid % TR, lane = tid / TR;
    const int RSC = R * S * C, NPQ = N * P * Q;
    const int row = (int)blockIdx.x * TR + trow;
    const int k0 = (int)blockIdx.y * KC;
    const bool row_ok = row < RSC;
    const int rr = row_ok ? row : 0;
    const int rs = rr / C, c = rr - rs * C, r = rs / S, s = rs - r * S;
    // This lane's share [lb, le) of the block's positions [jb, jb + len) (written so that no
    // intermediate exceeds 2 * chunk beyond jb: no int overflow near 2^31 positions).
    const int jb = (int)blockIdx.z * chunk, len = min(chunk, NPQ - jb);
    const int share = (len + JL - 1) / JL;
    const int lo = min(len, lane * share), hi = min(len, lo + share);
    const int lb = jb + lo, le = jb + hi;
    const bool vec = (K % 4 == 0) && (k0 + KC <= K) && fc_aligned16(dy);
    float acc[KC];
#pragma unroll
    for (int i = 0; i < KC; ++i) acc[i] = 0.0f;

    if (row_ok && lb < le) {
        int n = lb / (P * Q), pq = lb - n * (P * Q), p = pq / Q, q = pq - p * Q;
        for (int j = lb; j < le; ++j) {
            const int h = p * sh - pt + r, wi = q * sw - pl + s;
            float xv = 0.0f;
            if (h >= 0 && h < H && wi >= 0 && wi < W) xv = x[fc_nhwc(n, h, wi, c, H, W, C)];
            const float* dp = dy + (fc_i64)j * K + k0;
            if (vec) {
#pragma unroll
                for (int i = 0; i < KC; i += 4) {
                    const float4 d = fc_load4(dp + i);
                    acc[i] = fmaf(xv, d.x, acc[i]);
                    acc[i + 1] = fmaf(xv, d.y, acc[i + 1]);
                    acc[i + 2] = fmaf(xv, d.z, acc[i + 2]);
                    acc[i + 3] = fmaf(xv, d.w, acc[i + 3]);
                }
            } else {
#pragma unroll
                for (int i = 0; i < KC; ++i)
                    if (k0 + i < K) acc[i] = fmaf(xv, dp[i], acc[i]);
            }
            if (++q == Q) { q = 0; if (++p == P) { p = 0; ++n; } }
        }
    }
    // Lanes added in lane order: red[(lane*TR + trow)*KC + i].
#pragma unroll
    for (int i = 0; i < KC; ++i) red[tid * KC + i] = acc[i];
    __syncthreads();
    const fc_i64 M = (fc_i64)RSC * K;
    float* o = out + (fc_i64)blockIdx.z * M;
    for (int e = tid; e < TR * KC; e += (int)blockDim.x) {
        const int er = e / KC, ei = e - er * KC;
        const int orow = (int)blockIdx.x * TR + er, k = k0 + ei;
        float sum = 0.0f;
        for (int l = 0; l < JL; ++l) sum += red[(l * TR + er) * KC + ei];
        if (orow < RSC && k < K) o[(fc_i64)orow * K + k] = sum;
    }
}

// blockDim.x = FC_REDUCE_THREADS; lanes a power of two dividing it (1 to 32).
extern "C" __global__ void __launch_bounds__(FC_REDUCE_THREADS)
conv_direct_wgrad_reduce(const float* __restrict__ ws, float* __restrict__ dw, int M, int chunks, int lanes) {
    __shared__ float red[FC_REDUCE_THREADS];  // red[lane * outs + ot]
    const int tid = (int)threadIdx.x;
    const int outs = FC_REDUCE_THREADS / lanes;
    const int ot = tid % outs, lane = tid / outs;
    const int o = (int)blockIdx.x * outs + ot;
    float sum = 0.0f;
    if (o < M)
        for (int z = lane; z < chunks; z += lanes) sum += ws[(fc_i64)z * M + o];
    red[tid] = sum;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half /= 2) {  // fixed tree over the lanes
        if (lane < half) red[tid] += red[tid + half * outs];
        __syncthreads();
    }
    if (lane == 0 && o < M) dw[o] = red[tid];
}

#ifdef FASTCNN_INSTANTIATE
#define FC_FPROP_ARGS const float*, const float*, const float*, float*, int, int, int, int, int, int, int, \
    int, int, int, int, int, int, int
#define FC_DGRAD_ARGS const float*, const float*, float*, int, int, int, int, int, int, int, int, int, \
    int, int, int, int
#define FC_WGRAD_ARGS const float*, const float*, float*, int, int, int, int, int, int, int, int, int, \
    int, int, int, int, int, int
template __global__ void conv_direct_fprop<4>(FC_FPROP_ARGS);
template __global__ void conv_direct_fprop<8>(FC_FPROP_ARGS);
template __global__ void conv_direct_fprop<16>(FC_FPROP_ARGS);
template __global__ void conv_direct_dgrad<4>(FC_DGRAD_ARGS);
template __global__ void conv_direct_dgrad<8>(FC_DGRAD_ARGS);
template __global__ void conv_direct_dgrad<16>(FC_DGRAD_ARGS);
template __global__ void conv_direct_wgrad<4>(FC_WGRAD_ARGS);
template __global__ void conv_direct_wgrad<8>(FC_WGRAD_ARGS);
template __global__ void conv_direct_wgrad<16>(FC_WGRAD_ARGS);
#endif
