// kernels/augment.cu: AlexNet's data augmentation on the device: crops (random windows,
// mirrored at random) and the colour noise along the RGB principal components.
//
// What:   crop_forward:  y[n, i, j, c] = x[n, top_n + i, left_n + (mirrored_n ? width-1-j : j), c]
//         crop_backward: dx[n, h, w, c] = dy[n, h - top_n, j, c] inside image n's window
//                        (j = w - left_n, mirrored back where mirrored_n), 0 outside;
//                        every dx element written once: no atomics, no memset.
//         random = 0: the centre window ((H - height) / 2, (W - width) / 2), not mirrored.
//         random = 1: Philox4x32-10 (philox.cuh) of counter (first + n, 0, step[0], 0x43524F50 'CROP'),
//         key (lo32(seed), hi32(seed)): top_n = w0 % (H - height + 1), left_n = w1 % (W - width + 1),
//         mirrored_n = flip && w2 >= 2^31.  Bit for bit fastcnn.backend.reference.crop_windows.
//         pca_noise_forward: y[n, h, w, c] = x[n, h, w, c] + offset_n[c], offset_n = basis @ alpha_n,
//         alpha_n three N(0, 1) draws (Box-Muller in double) from Philox of counter
//         (first + n, 0, step[0], 0x5043414E 'PCAN'): fastcnn.backend.reference.pca_noise_offsets, the
//         double arithmetic in the reference's order with no contraction (cos, sin and log may
//         differ from NumPy's in the last bit of a double, which rounds away in float32 almost always).
//         Element type T of x, y, dy, dx: float or __nv_bfloat16 (bf16.cuh), one template
//         each: the crops move elements as they are; the colour noise adds in float32 to the
//         widened x and rounds a bfloat16 y once where it is stored.
// Launch: grid (rows, N): blockIdx.y is the image, blockIdx.x one row of the result
//         (crop_forward: height rows, crop_backward and pca_noise_forward: H rows); AUG_THREADS
//         threads walk that row's width * C (or W * C) floats, which are contiguous in memory on
//         both sides (a mirrored row reads its pixels in reverse, channels in order).  Thread 0
//         draws the image's window or offsets once per block into shared memory.  step is read
//         from device memory, so a captured CUDA graph draws anew on every replay.  first: the
//         global index of image 0 (data-parallel training: where this process's slice begins).
// Last measured: not yet run on a GPU (added after run 3).  Each kernel copies one batch of
//   input images (AlexNet: 128 x 227 x 227 x 3 floats = 79 MB) per step.  The bfloat16
//   instances: not measured on a GPU yet.

#include "common.cuh"
#include "bf16.cuh"
#include "philox.cuh"

#define AUG_THREADS 128

struct fc_crop_window {
    int top, left, mirrored;
};

// The window of image n (called by one thread of the block).
FC_DEVICE fc_crop_window fc_crop_window_of(int n, int H, int W, int height, int width,
                                           int random, int flip, unsigned int key0,
                                           unsigned int key1, const int* step) {
    fc_crop_window win;
    if (!random) {
        win.top = (H - height) / 2;
        win.left = (W - width) / 2;
        win.mirrored = 0;
        return win;
    }
    const fc_u32x4 w = fc_philox4x32_10((unsigned int)n, 0u, (unsigned int)step[0], 0x43524F50u,
                                        key0, key1);
    win.top = (int)(w.v[0] % (unsigned int)(H - height + 1));
    win.left = (int)(w.v[1] % (unsigned int)(W - width + 1));
    win.mirrored = flip && w.v[2] >= 0x80000000u;
    return win;
}

// The window of this block's image (blockIdx.y), drawn once by thread 0 into shared memory.
FC_DEVICE fc_crop_window fc_block_window(int H, int W, int height, int width, int random, int flip,
                                         unsigned int key0, unsigned int key1, const int* step,
                                         unsigned int first) {
    __shared__ fc_crop_window win;
    if (threadIdx.x == 0) {
        win = fc_crop_window_of(first + blockIdx.y, H, W, height, width, random, flip, key0, key1, step);
    }
    __syncthreads();
    return win;
}

// x (N, H, W, C) -> y (N, height, width, C).
template <class T>
__global__ void __launch_bounds__(AUG_THREADS)
crop_forward(const T* __restrict__ x, T* __restrict__ y, int H, int W, int C,
             int height, int width, int random, int flip, unsigned int key0,
             unsigned int key1, const int* __restrict__ step, unsigned int first) {
    const fc_crop_window win = fc_block_window(H, W, height, width, random, flip, key0, key1, step, first);
    const int n = blockIdx.y, i = blockIdx.x;
    const T* src = x + fc_nhwc(n, win.top + i, win.left, 0, H, W, C);
    T* dst = y + fc_nhwc(n, i, 0, 0, height, width, C);
    const int row = width * C;
    for (int e = threadIdx.x; e < row; e += AUG_THREADS) {
        const int j = e / C, c = e - j * C;
        dst[e] = src[(win.mirrored ? width - 1 - j : j) * C + c];
    }
}

// dy (N, height, width, C) -> dx (N, H, W, C).
template <class T>
__global__ void __launch_bounds__(AUG_THREADS)
crop_backward(const T* __restrict__ dy, T* __restrict__ dx, int H, int W, int C,
              int height, int width, int random, int flip, unsigned int key0,
              unsigned int key1, const int* __restrict__ step, unsigned int first) {
    const fc_crop_window win = fc_block_window(H, W, height, width, random, flip, key0, key1, step, first);
    const int n = blockIdx.y, h = blockIdx.x;
    T* dst = dx + fc_nhwc(n, h, 0, 0, H, W, C);
    const int row = W * C, i = h - win.top;
    const bool inside_rows = i >= 0 && i < height;
    const T* src = dy + fc_nhwc(n, inside_rows ? i : 0, 0, 0, height, width, C);
    for (int e = threadIdx.x; e < row; e += AUG_THREADS) {
        const int w = e / C, c = e - w * C, j = w - win.left;
        T v = fc_from_float<T>(0.0f);
        if (inside_rows && j >= 0 && j < width) {
            v = src[(win.mirrored ? width - 1 - j : j) * C + c];
        }
        dst[e] = v;
    }
}

// Three N(0, 1) draws from four uniform words (fastcnn.backend.reference._standard_normals):
// u = (w + 1) / 2^32 for the radius, v = w / 2^32 for the angle; __d*_rn keep the reference's
// rounding (no FMA contraction).
FC_DEVICE void fc_standard_normals(const fc_u32x4 w, double* z) {
    const double scale = 2.3283064365386963e-10;           // 2^-32
    const double two_pi = 6.283185307179586;               // float64(2 * pi), as NumPy's 2.0 * np.pi
    const double r01 = sqrt(__dmul_rn(-2.0, log(__dmul_rn(__dadd_rn((double)w.v[0], 1.0), scale))));
    const double r2 = sqrt(__dmul_rn(-2.0, log(__dmul_rn(__dadd_rn((double)w.v[2], 1.0), scale))));
    const double t1 = __dmul_rn(__dmul_rn(two_pi, (double)w.v[1]), scale);
    const double t3 = __dmul_rn(__dmul_rn(two_pi, (double)w.v[3]), scale);
    z[0] = __dmul_rn(r01, cos(t1));
    z[1] = __dmul_rn(r01, sin(t1));
    z[2] = __dmul_rn(r2, cos(t3));
}

// One channel's offset: (b0 * z0 + b1 * z1) + b2 * z2 in double, the reference's order.
FC_DEVICE float fc_rgb_offset(double b0, double b1, double b2, const double* z) {
    return (float)__dadd_rn(__dadd_rn(__dmul_rn(b0, z[0]), __dmul_rn(b1, z[1])), __dmul_rn(b2, z[2]));
}

// x, y (N, H, W, 3); y may be x (each element read, then written, by one thread).
// bCI = basis[c][i] = stddev * eigenvalue_i * eigenvector_i[c] (nine scalars: a captured graph keeps them).
template <class T>
__global__ void __launch_bounds__(AUG_THREADS)
pca_noise_forward(const T* x, T* y, int H, int W, double b00, double b01, double b02,
                  double b10, double b11, double b12, double b20, double b21, double b22,
                  unsigned int key0, unsigned int key1, const int* __restrict__ step,
                  unsigned int first) {
    __shared__ float offset[3];
    const int n = blockIdx.y, h = blockIdx.x;
    if (threadIdx.x == 0) {
        double z[3];
        fc_standard_normals(fc_philox4x32_10(first + (unsigned int)n, 0u, (unsigned int)step[0], 0x5043414Eu,
                                             key0, key1), z);
        offset[0] = fc_rgb_offset(b00, b01, b02, z);
        offset[1] = fc_rgb_offset(b10, b11, b12, z);
        offset[2] = fc_rgb_offset(b20, b21, b22, z);
    }
    __syncthreads();
    const fc_i64 base = fc_nhwc(n, h, 0, 0, H, W, 3);
    for (int e = threadIdx.x; e < W * 3; e += AUG_THREADS) {
        y[base + e] = fc_from_float<T>(__fadd_rn(fc_to_float(x[base + e]), offset[e % 3]));
    }
}

#ifdef FASTCNN_INSTANTIATE
// Keep in step with fastcnn/backend/cuda/step.py (NAME_EXPRESSIONS).
#define FC_AUG_TYPED(T) \
    template __global__ void crop_forward<T>(const T*, T*, int, int, int, int, int, int, int, unsigned int, \
                                             unsigned int, const int*, unsigned int); \
    template __global__ void crop_backward<T>(const T*, T*, int, int, int, int, int, int, int, unsigned int, \
                                              unsigned int, const int*, unsigned int); \
    template __global__ void pca_noise_forward<T>(const T*, T*, int, int, double, double, double, double, double, \
                                                  double, double, double, double, unsigned int, unsigned int, \
                                                  const int*, unsigned int);
FC_AUG_TYPED(float)
FC_AUG_TYPED(__nv_bfloat16)
#endif
