// kernels/lrn.cu: local response normalisation across channels (AlexNet), NHWC.
//
// What:   x, y, scale, dy, dx: (N, H, W, C), channels contiguous; half = size // 2
//         (size odd), window(c) = [max(0, c - half), min(C - 1, c + half)].
//         lrn_forward   scale_c = k + alpha * sum_{j in window(c)} x_j^2
//                       y_c = x_c * scale_c^-beta                     (AlexNet paper:
//                       alpha is not divided by size)
//         lrn_backward  dx_c = dy_c * scale_c^-beta
//                              - 2 alpha beta x_c * sum_{j in window(c)} dy_j y_j / scale_j
//                       (the window is symmetric, so {j : c in window(j)} = window(c))
// Launch: 1-D grid-stride over the N*H*W*C elements, 256 threads per block, any grid.
// Algorithm: one thread per element, direct window sums over its pixel's channels
//         (size reads, from L1/L2 since a warp covers neighbouring channels).
//         Constants arrive as float32 exactly as the reference rounds them:
//         alpha, k, -beta and -2*alpha*beta.
//         Element type T of x, y, scale, dy, dx: float or __nv_bfloat16 (bf16.cuh), one
//         template each: float32 math on the widened values; scale and y (dx) rounded once
//         each where they are stored, y from the float32 scale (not from its rounding).
// Last measured: not timed on a GPU (only the 'original' AlexNet uses LRN); checked against
//   the reference on an H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19).
//   The bfloat16 instances: not measured on a GPU yet.

#include "common.cuh"
#include "bf16.cuh"

template <class T>
__global__ void lrn_forward(const T* x, T* y, T* scale, long long n,
                            int C, int half, float alpha, float k,
                            float neg_beta) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long pixel = i / C;
        const int c = (int)(i - pixel * C);
        const T* xp = x + pixel * C;
        const int lo = c - half < 0 ? 0 : c - half;
        const int hi = c + half > C - 1 ? C - 1 : c + half;
        float acc = 0.0f;
        for (int j = lo; j <= hi; ++j) {
            const float v = fc_to_float(xp[j]);
            acc += v * v;
        }
        const float s = acc * alpha + k;
        scale[i] = fc_from_float<T>(s);
        y[i] = fc_from_float<T>(fc_to_float(x[i]) * powf(s, neg_beta));
    }
}

template <class T>
__global__ void lrn_backward(const T* dy, const T* x, const T* y,
                             const T* scale, T* dx, long long n, int C,
                             int half, float neg_beta, float neg_two_alpha_beta) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long pixel = i / C;
        const int c = (int)(i - pixel * C);
        const long long base = pixel * C;
        const int lo = c - half < 0 ? 0 : c - half;
        const int hi = c + half > C - 1 ? C - 1 : c + half;
        float acc = 0.0f;
        for (int j = lo; j <= hi; ++j) {
            acc += fc_to_float(dy[base + j]) * fc_to_float(y[base + j]) / fc_to_float(scale[base + j]);
        }
        dx[i] = fc_from_float<T>((acc * fc_to_float(x[i])) * neg_two_alpha_beta
                                 + fc_to_float(dy[i]) * powf(fc_to_float(scale[i]), neg_beta));
    }
}

#ifdef FASTCNN_INSTANTIATE
#define FC_LRN_TYPED(T) \
    template __global__ void lrn_forward<T>(const T*, T*, T*, long long, int, int, float, float, float); \
    template __global__ void lrn_backward<T>(const T*, const T*, const T*, const T*, T*, long long, int, int, \
                                             float, float);
FC_LRN_TYPED(float)
FC_LRN_TYPED(__nv_bfloat16)
#endif
