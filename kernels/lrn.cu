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
// Last measured: not timed on a GPU (only the 'original' AlexNet uses LRN); checked against
//   the reference on an H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19).
//
// Self-contained (no #include): NVRTC has no system headers.

extern "C" __global__ void lrn_forward(const float* x, float* y, float* scale, long long n,
                                       int C, int half, float alpha, float k,
                                       float neg_beta) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long pixel = i / C;
        const int c = (int)(i - pixel * C);
        const float* xp = x + pixel * C;
        const int lo = c - half < 0 ? 0 : c - half;
        const int hi = c + half > C - 1 ? C - 1 : c + half;
        float acc = 0.0f;
        for (int j = lo; j <= hi; ++j) {
            const float v = xp[j];
            acc += v * v;
        }
        const float s = acc * alpha + k;
        scale[i] = s;
        y[i] = x[i] * powf(s, neg_beta);
    }
}

extern "C" __global__ void lrn_backward(const float* dy, const float* x, const float* y,
                                        const float* scale, float* dx, long long n, int C,
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
            acc += dy[base + j] * y[base + j] / scale[base + j];
        }
        dx[i] = (acc * x[i]) * neg_two_alpha_beta + dy[i] * powf(scale[i], neg_beta);
    }
}
