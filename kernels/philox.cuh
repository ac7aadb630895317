// kernels/philox.cuh: Philox4x32-10, the counter-based generator of dropout.cu and crop.cu.
//
// Salmon et al., SC'11, with Random123's constants: 10 rounds of
// (hi0, lo0) = mulhilo(0xD2511F53, c0); (hi1, lo1) = mulhilo(0xCD9E8D57, c2);
// c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0), the key bumped by (0x9E3779B9, 0xBB67AE85)
// between rounds.  Bit for bit fastcnn.backend.reference.philox4x32_10.
//
// _launch.kernel_source() pastes this file in place of `#include "philox.cuh"` (so it is
// part of CuPy's cache key); nvcc finds it beside the including file.  No system headers
// (NVRTC has none).  fc_philox4x32_10 is __host__ __device__ so that a host program can
// check it against known answers (tests/test_gpu_step.py).
#ifndef FASTCNN_PHILOX_CUH
#define FASTCNN_PHILOX_CUH

struct fc_u32x4 {
    unsigned int v[4];
};

__host__ __device__ inline unsigned int fc_mulhi32(unsigned int a, unsigned int b) {
#ifdef __CUDA_ARCH__
    return __umulhi(a, b);
#else
    return (unsigned int)(((unsigned long long)a * b) >> 32);
#endif
}

__host__ __device__ inline fc_u32x4 fc_philox4x32_10(unsigned int c0, unsigned int c1,
                                                     unsigned int c2, unsigned int c3,
                                                     unsigned int k0, unsigned int k1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned int hi0 = fc_mulhi32(0xD2511F53u, c0);
        const unsigned int lo0 = 0xD2511F53u * c0;
        const unsigned int hi1 = fc_mulhi32(0xCD9E8D57u, c2);
        const unsigned int lo1 = 0xCD9E8D57u * c2;
        const unsigned int n0 = hi1 ^ c1 ^ k0;
        const unsigned int n1 = lo1;
        const unsigned int n2 = hi0 ^ c3 ^ k1;
        const unsigned int n3 = lo0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
    }
    fc_u32x4 out;
    out.v[0] = c0;
    out.v[1] = c1;
    out.v[2] = c2;
    out.v[3] = c3;
    return out;
}

#endif  // FASTCNN_PHILOX_CUH
