// kernels/optimizers.cu: SGD (plain, momentum, Nesterov), Adam (AdamW) and RMSprop over one
// flat buffer.
//
// What (Keras's rules, in place, all parameters of a model in one launch):
//         sgd_plain     p -= lr * g
//         sgd_momentum  v = momentum * v - lr * g;  p += v
//                       (nesterov != 0: p += momentum * v - lr * g, with the new v)
//                       wd != 0 (weight decay, the AlexNet paper's rule, as PyTorch's): g is
//                       g + wd * p in both, so the decay enters the velocity
//                       (wd == 0: g as it is, bit for bit the rules above)
//         adam          t = step[0] + 1 read from device memory (a captured graph sees the
//                       step advance on every replay; step itself is not changed here)
//                       lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)   (float64, per thread)
//                       m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
//                       p -= lr_t * m / (sqrt(v) + eps)
//                       wd != 0 (AdamW, Keras's decoupled weight decay): first p -= (p * wd) * lr,
//                       with the learning rate itself, then the rule above on the decayed p
//                       (wd == 0: p as it is, bit for bit)
//         rmsprop       v = rho * v + (1 - rho) * g * g
//                       centered: a = rho * a + (1 - rho) * g;  d = (v - a * a) + eps
//                       else d = v + eps                          (Keras's: eps inside the root)
//                       inc = lr * g / sqrt(d)
//                       momentum: mom = momentum * mom + inc;  p -= mom    else p -= inc
//                       (mom and a are read only with their flag set; else any pointer)
//         p, g, m, v, mom, a: n float32 each.  float32 constants are rounded on the host exactly as
//         the reference rounds them (float32(1 - beta1), ...).
//         p_bf16 (every kernel; null: none): n bfloat16, the updated p rounded once to nearest
//         even (the bfloat16 copy of the weights that a mixed_bfloat16 step computes with),
//         written in the same pass.
// Launch: 1-D grid-stride, 256 threads per block, any grid (the backend caps the grid).
// Algorithm: one pass, each element read and written once; memory-bound.  The float32
//         arithmetic uses __fmul_rn/__fadd_rn/__fsub_rn/__fdiv_rn (never contracted into
//         FMAs), in the reference's order, so results match NumPy's float32 bit for bit
//         up to lr_t (pow in float64 here and in Python may differ in the last bit).
//         Every element is read only by its own thread, so p/g/m/v may not alias each
//         other (the backend gives them as separate buffers).
// Last measured: H200, 2026-11-28 (run 2 of bench/gpu_check.py; CUDA 13.0 driver 580.159.04, CuPy 14.2.0, PyTorch 2.11.0+cu130, cuDNN 9.19): not timed on its own; the whole LeNet-5 training step that
//   runs it (batch 200, Adam, one CUDA graph) takes 333 us = 1.36x PyTorch's whole-step graph.
//   The weight decay (wd), AdamW's decay and RMSprop came later: not measured yet; p_bf16:
//   not measured on a GPU yet.

#include "common.cuh"
#include "bf16.cuh"

#define FC_OPT_LOOP(i, n)                                                       \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;        \
         i < (n); i += (long long)gridDim.x * blockDim.x)

// The gradient with the weight decay added (wd == 0: g[i] itself, never g[i] + 0 * p[i],
// which would turn -0 into +0 and an infinite p into NaN).
#define FC_DECAYED_GRAD(i) (wd != 0.0f ? __fadd_rn(g[i], __fmul_rn(wd, p[i])) : g[i])

// p[i] = v, and its bfloat16 copy when there is one.
FC_DEVICE void fc_store_p(float* p, __nv_bfloat16* p_bf16, long long i, float v) {
    p[i] = v;
    if (p_bf16 != nullptr) p_bf16[i] = __float2bfloat16_rn(v);
}

extern "C" __global__ void sgd_plain(float* p, const float* g, long long n, float lr, float wd,
                                     __nv_bfloat16* p_bf16) {
    FC_OPT_LOOP(i, n) {
        fc_store_p(p, p_bf16, i, __fsub_rn(p[i], __fmul_rn(lr, FC_DECAYED_GRAD(i))));
    }
}

extern "C" __global__ void sgd_momentum(float* p, const float* g, float* v, long long n,
                                        float lr, float momentum, int nesterov, float wd,
                                        __nv_bfloat16* p_bf16) {
    FC_OPT_LOOP(i, n) {
        const float gi = FC_DECAYED_GRAD(i);
        const float vi = __fsub_rn(__fmul_rn(momentum, v[i]), __fmul_rn(lr, gi));
        v[i] = vi;
        if (nesterov) {
            fc_store_p(p, p_bf16, i, __fadd_rn(p[i], __fsub_rn(__fmul_rn(momentum, vi), __fmul_rn(lr, gi))));
        } else {
            fc_store_p(p, p_bf16, i, __fadd_rn(p[i], vi));
        }
    }
}

extern "C" __global__ void adam(float* p, const float* g, float* m, float* v, const int* step,
                                long long n, double lr, double beta1, double beta2,
                                float beta1_f, float one_minus_beta1_f, float beta2_f,
                                float one_minus_beta2_f, float eps_f, float wd, float lr_f,
                                __nv_bfloat16* p_bf16) {
    const double t = (double)step[0] + 1.0;
    const float lr_t = (float)(lr * sqrt(1.0 - pow(beta2, t)) / (1.0 - pow(beta1, t)));
    FC_OPT_LOOP(i, n) {
        if (wd != 0.0f) {
            p[i] = __fsub_rn(p[i], __fmul_rn(__fmul_rn(p[i], wd), lr_f));
        }
        const float gi = g[i];
        const float mi = __fadd_rn(__fmul_rn(m[i], beta1_f), __fmul_rn(one_minus_beta1_f, gi));
        const float vi = __fadd_rn(__fmul_rn(v[i], beta2_f),
                                   __fmul_rn(one_minus_beta2_f, __fmul_rn(gi, gi)));
        m[i] = mi;
        v[i] = vi;
        const float denom = __fadd_rn(sqrtf(vi), eps_f);  // sqrtf: IEEE-rounded (no fast-math)
        fc_store_p(p, p_bf16, i, __fsub_rn(p[i], __fdiv_rn(__fmul_rn(lr_t, mi), denom)));
    }
}

extern "C" __global__ void rmsprop(float* p, const float* g, float* v, float* mom, float* a,
                                   long long n, float lr, float rho, float one_minus_rho,
                                   float momentum, float eps, int use_momentum, int centered,
                                   __nv_bfloat16* p_bf16) {
    FC_OPT_LOOP(i, n) {
        const float gi = g[i];
        const float vi = __fadd_rn(__fmul_rn(v[i], rho), __fmul_rn(one_minus_rho, __fmul_rn(gi, gi)));
        v[i] = vi;
        float d;
        if (centered) {
            const float ai = __fadd_rn(__fmul_rn(a[i], rho), __fmul_rn(one_minus_rho, gi));
            a[i] = ai;
            d = __fadd_rn(__fsub_rn(vi, __fmul_rn(ai, ai)), eps);
        } else {
            d = __fadd_rn(vi, eps);
        }
        const float inc = __fdiv_rn(__fmul_rn(lr, gi), sqrtf(d));
        if (use_momentum) {
            const float mi = __fadd_rn(__fmul_rn(mom[i], momentum), inc);
            mom[i] = mi;
            fc_store_p(p, p_bf16, i, __fsub_rn(p[i], mi));
        } else {
            fc_store_p(p, p_bf16, i, __fsub_rn(p[i], inc));
        }
    }
}
