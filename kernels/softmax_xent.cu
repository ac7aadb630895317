// kernels/softmax_xent.cu: row softmax, and softmax + cross-entropy + accuracy fused.
//
// What:   softmax_rows       y[r, :] = exp(x[r, :] - max) / sum(exp(x[r, :] - max))
//         xent_index         labels int32 (N,) class indices
//         xent_onehot        labels float32 (N, K), one-hot (or any weights)
//             dlogits[r, j] = (p[r, j] - t[r, j]) * float32(1 / N), p = softmax(logits[r, :])
//             totals[0] += sum over rows of  logsumexp(x_r) - sum_j t[r, j] * x[r, j]
//                          (= -sum_j t_j log p_j when the label row sums to 1; its gradient
//                          is exactly p - t), computed in float64 from m = max_j x_j and
//                          s = sum_j exp(x_j - m) as log s - sum_j t_j (x_j - m) + m (1 - sum_j t_j)
//             totals[1] += number of rows whose logits argmax equals the label
//                          (first maximum wins in both; for one-hot labels the label
//                          is the argmax of the label row)
//         An int32 label outside [0, K) gives that row a NaN loss, no correct count and
//         dlogits = p * float32(1 / N) (the host cannot check labels without a device sync).
//         Element type T of x / logits and dlogits: float or __nv_bfloat16 (bf16.cuh), one
//         template each: the logits are widened exactly, everything is computed in float32
//         (the loss in float64) as for float logits, and a bfloat16 dlogits is rounded once
//         where it is stored; softmax_rows' y is float32 either way.
// Launch: one warp per row, rows walked grid-stride; xent_* need exactly 512 threads
//         per block (16 warps), softmax_rows any multiple of 32.  Any grid.
// Algorithm: per row, three passes over the K logits by the 32 lanes: (max, argmax) with
//         a shuffle reduction (ties to the smaller index), sum of exp(x - max) with a
//         shuffle reduction, then the writes.  The totals: each warp keeps its rows' loss
//         and count in float64 registers, the block adds its 16 warps in a fixed order
//         in shared memory, and thread 0 does one atomicAdd (double) per total.
//         With one block (the backend launches one whenever N*K <= 2^18, which covers
//         training batches of LeNet-5 and AlexNet) the sum is deterministic; with several
//         blocks the order of the atomicAdds varies, so totals[0] may differ from run to
//         run in its last bits (totals[1] is an exact integer either way).
// Last measured: H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19): not timed on its own; the whole LeNet-5 training step that
//   runs it (batch 200, Adam, one CUDA graph) takes 333 us = 1.36x PyTorch's whole-step graph.
//   The bfloat16 instances: not measured on a GPU yet.

#include "common.cuh"
#include "bf16.cuh"

#define FC_SX_WARPS 16            // warps per block; blockDim.x must be 32 * FC_SX_WARPS
#define FC_FULL_MASK 0xffffffffu
#define FC_BIG_INDEX 0x7fffffff

__device__ __forceinline__ float fc_neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ double fc_nan_d() { return __longlong_as_double(0x7ff8000000000000ll); }

__device__ __forceinline__ float fc_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FC_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double fc_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FC_FULL_MASK, v, o);
    return v;
}

// Maximum of row[0..K) and the first index holding it, on every lane of the warp.
template <class T>
__device__ __forceinline__ void fc_row_argmax(const T* row, int K, int lane,
                                              float& best, int& best_j) {
    best = fc_neg_inf();
    best_j = FC_BIG_INDEX;
    for (int j = lane; j < K; j += 32) {
        float v = fc_to_float(row[j]);
        if (v > best || best_j == FC_BIG_INDEX) {  // lane's first element always taken
            best = v;
            best_j = j;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FC_FULL_MASK, best, o);
        int oj = __shfl_xor_sync(FC_FULL_MASK, best_j, o);
        if (ov > best || (ov == best && oj < best_j)) {
            best = ov;
            best_j = oj;
        }
    }
}

// Row maximum m, its first index am and s = sum_j exp(row[j] - m), on every lane.
template <class T>
__device__ __forceinline__ float fc_row_exp_sum(const T* row, int K, int lane, float& m, int& am) {
    fc_row_argmax(row, K, lane, m, am);
    float s = 0.0f;
    for (int j = lane; j < K; j += 32) s += expf(fc_to_float(row[j]) - m);
    return fc_warp_sum(s);
}

template <class T>
__global__ void softmax_rows(const T* x, float* y, long long rows, int K) {
    const int lane = threadIdx.x & 31;
    const long long warp = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long r = warp; r < rows; r += warps) {  // r is the same on every lane
        const T* xr = x + r * K;
        float* yr = y + r * K;
        float m;
        int am;
        const float s = fc_row_exp_sum(xr, K, lane, m, am);
        for (int j = lane; j < K; j += 32) yr[j] = expf(fc_to_float(xr[j]) - m) / s;
    }
}

// ONEHOT false: labels (N,) int32 used, onehot unused.  ONEHOT true: the reverse.
template <class T, bool ONEHOT>
__device__ __forceinline__ void fc_xent(const T* logits, const int* labels,
                                        const float* onehot, T* dlogits, double* totals,
                                        long long rows, int K, float inv_n) {
    __shared__ double block_loss[FC_SX_WARPS];
    __shared__ double block_correct[FC_SX_WARPS];
    const int lane = threadIdx.x & 31;
    const int warp_in_block = threadIdx.x >> 5;
    const long long warp = (long long)blockIdx.x * FC_SX_WARPS + warp_in_block;
    const long long warps = (long long)gridDim.x * FC_SX_WARPS;

    double loss_sum = 0.0;     // identical on every lane of the warp
    double correct_sum = 0.0;
    for (long long r = warp; r < rows; r += warps) {  // r is the same on every lane
        const T* xr = logits + r * K;
        T* dr = dlogits + r * K;
        float m;
        int am;
        const float s = fc_row_exp_sum(xr, K, lane, m, am);
        const double log_s = log((double)s);

        int label;
        bool valid;
        double loss;
        if (ONEHOT) {
            const float* tr = onehot + r * K;
            float tmax;
            fc_row_argmax(tr, K, lane, tmax, label);
            valid = true;
            double dot = 0.0, tsum = 0.0;
            for (int j = lane; j < K; j += 32) {
                double t = (double)tr[j];
                tsum += t;
                dot += t * (double)(fc_to_float(xr[j]) - m);
            }
            dot = fc_warp_sum_d(dot);
            tsum = fc_warp_sum_d(tsum);
            loss = log_s - dot + (double)m * (1.0 - tsum);
            for (int j = lane; j < K; j += 32) {
                float p = expf(fc_to_float(xr[j]) - m) / s;
                dr[j] = fc_from_float<T>((p - tr[j]) * inv_n);
            }
        } else {
            label = labels[r];
            valid = label >= 0 && label < K;
            loss = valid ? log_s - (double)(fc_to_float(xr[label]) - m) : fc_nan_d();
            for (int j = lane; j < K; j += 32) {
                float p = expf(fc_to_float(xr[j]) - m) / s;
                dr[j] = fc_from_float<T>((p - (j == label ? 1.0f : 0.0f)) * inv_n);
            }
        }
        loss_sum += loss;
        correct_sum += (valid && am == label) ? 1.0 : 0.0;
    }

    if (lane == 0) {
        block_loss[warp_in_block] = loss_sum;
        block_correct[warp_in_block] = correct_sum;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double l = 0.0, c = 0.0;
        for (int w = 0; w < FC_SX_WARPS; ++w) {  // fixed order: deterministic per block
            l += block_loss[w];
            c += block_correct[w];
        }
        atomicAdd(totals + 0, l);
        atomicAdd(totals + 1, c);
    }
}

template <class T>
__global__ void xent_index(const T* logits, const int* labels, T* dlogits,
                           double* totals, long long rows, int K, float inv_n) {
    fc_xent<T, false>(logits, labels, (const float*)0, dlogits, totals, rows, K, inv_n);
}

template <class T>
__global__ void xent_onehot(const T* logits, const float* onehot,
                            T* dlogits, double* totals, long long rows, int K,
                            float inv_n) {
    fc_xent<T, true>(logits, (const int*)0, onehot, dlogits, totals, rows, K, inv_n);
}

#ifdef FASTCNN_INSTANTIATE
// Keep in step with fastcnn/backend/cuda/step.py (NAME_EXPRESSIONS).
#define FC_SX_TYPED(T) \
    template __global__ void softmax_rows<T>(const T*, float*, long long, int); \
    template __global__ void xent_index<T>(const T*, const int*, T*, double*, long long, int, float); \
    template __global__ void xent_onehot<T>(const T*, const float*, T*, double*, long long, int, float);
FC_SX_TYPED(float)
FC_SX_TYPED(__nv_bfloat16)
#endif
