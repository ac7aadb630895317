// kernels/crop.cu: crop (AlexNet's data augmentation: random windows, mirrored at random).
//
// What:   crop_forward:  y[n, i, j, c] = x[n, top_n + i, left_n + (mirrored_n ? width-1-j : j), c]
//         crop_backward: dx[n, h, w, c] = dy[n, h - top_n, j, c] inside image n's window
//                        (j = w - left_n, mirrored back where mirrored_n), 0 outside;
//                        every dx element written once: no atomics, no memset.
//         random = 0: the centre window ((H - height) / 2, (W - width) / 2), not mirrored.
//         random = 1: Philox4x32-10 (philox.cuh) of counter (n, 0, step[0], 0x43524F50 'CROP'),
//         key (lo32(seed), hi32(seed)): top_n = w0 % (H - height + 1), left_n = w1 % (W - width + 1),
//         mirrored_n = flip && w2 >= 2^31.  Bit for bit fastcnn.backend.reference.crop_windows.
// Launch: grid (rows, N): blockIdx.y is the image, blockIdx.x one row of the result
//         (crop_forward: height rows, crop_backward: H rows); CROP_THREADS threads walk that row's
//         width * C (or W * C) floats, which are contiguous in memory on both sides of the copy
//         (a mirrored row reads its pixels in reverse, channels in order).  Thread 0 draws the
//         window once per block into shared memory.  step is read from device memory, so a
//         captured CUDA graph draws new windows on every replay.
// Last measured: not yet run on a GPU (added after run 3).  It copies one batch of input
//   images (AlexNet: 128 x 227 x 227 x 3 floats = 79 MB) per step.

#include "common.cuh"
#include "philox.cuh"

#define CROP_THREADS 128

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
                                         unsigned int key0, unsigned int key1, const int* step) {
    __shared__ fc_crop_window win;
    if (threadIdx.x == 0) {
        win = fc_crop_window_of(blockIdx.y, H, W, height, width, random, flip, key0, key1, step);
    }
    __syncthreads();
    return win;
}

// x (N, H, W, C) -> y (N, height, width, C).
extern "C" __global__ void __launch_bounds__(CROP_THREADS)
crop_forward(const float* __restrict__ x, float* __restrict__ y, int H, int W, int C,
             int height, int width, int random, int flip, unsigned int key0,
             unsigned int key1, const int* __restrict__ step) {
    const fc_crop_window win = fc_block_window(H, W, height, width, random, flip, key0, key1, step);
    const int n = blockIdx.y, i = blockIdx.x;
    const float* src = x + fc_nhwc(n, win.top + i, win.left, 0, H, W, C);
    float* dst = y + fc_nhwc(n, i, 0, 0, height, width, C);
    const int row = width * C;
    for (int e = threadIdx.x; e < row; e += CROP_THREADS) {
        const int j = e / C, c = e - j * C;
        dst[e] = src[(win.mirrored ? width - 1 - j : j) * C + c];
    }
}

// dy (N, height, width, C) -> dx (N, H, W, C).
extern "C" __global__ void __launch_bounds__(CROP_THREADS)
crop_backward(const float* __restrict__ dy, float* __restrict__ dx, int H, int W, int C,
              int height, int width, int random, int flip, unsigned int key0,
              unsigned int key1, const int* __restrict__ step) {
    const fc_crop_window win = fc_block_window(H, W, height, width, random, flip, key0, key1, step);
    const int n = blockIdx.y, h = blockIdx.x;
    float* dst = dx + fc_nhwc(n, h, 0, 0, H, W, C);
    const int row = W * C, i = h - win.top;
    const bool inside_rows = i >= 0 && i < height;
    const float* src = dy + fc_nhwc(n, inside_rows ? i : 0, 0, 0, height, width, C);
    for (int e = threadIdx.x; e < row; e += CROP_THREADS) {
        const int w = e / C, c = e - w * C, j = w - win.left;
        float v = 0.0f;
        if (inside_rows && j >= 0 && j < width) {
            v = src[(win.mirrored ? width - 1 - j : j) * C + c];
        }
        dst[e] = v;
    }
}
