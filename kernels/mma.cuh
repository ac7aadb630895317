// kernels/mma.cuh: the warp-level matrix instructions, one small __device__ helper per
// inline-PTX instruction, and nothing else.  Include after common.cuh.
//
//   fc_mma_tf32(d, a, b, c)      mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32:
//                                D (16x8) = A (16x8, tf32) @ B (8x8, tf32) + C, fp32 accumulate.
//                                Fragments (PTX ISA, g = lane >> 2, t = lane & 3):
//                                A a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
//                                B b0 (k=t, n=g), b1 (k=t+4, n=g);
//                                C/D c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
//   fc_mma_bf16(d, a, b, c)      mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32:
//                                D (16x8) = A (16x16, bf16) @ B (16x8, bf16) + C, fp32 accumulate.
//                                Each .b32 register holds two bf16, the lower column (A) or
//                                k (B) in the lower half:
//                                A a0 (g, 2t..2t+1), a1 (g+8, 2t..2t+1), a2 (g, 2t+8..2t+9),
//                                a3 (g+8, 2t+8..2t+9); B b0 (k=2t..2t+1, n=g),
//                                b1 (k=2t+8..2t+9, n=g); C/D as for tf32.
//   fc_cvt_rn_bf16x2(hi, lo)     cvt.rn.bf16x2.f32 d, hi, lo: both rounded to bf16 (nearest,
//                                ties to even), the FIRST source in the upper half of d.
//   fc_cvt_rna_tf32(x)           cvt.rna.tf32.f32: fp32 -> tf32 bits (10 mantissa bits, round
//                                to nearest, ties away from zero), returned in a .b32.
//   fc_ldmatrix_x1/x2/x4(r, p)   ldmatrix.sync.aligned.m8n8.xN.shared.b16: N 8x8 matrices of
//   fc_ldmatrix_x4_trans(r, p)   16-bit elements; lane 8i + j hands in the address of row j
//                                of matrix i (16 bytes, 16-byte aligned); lane l receives,
//                                per matrix, the 32-bit word l % 4 of row l / 4 (.trans: the
//                                elements (2(l%4), l/4) and (2(l%4)+1, l/4)).  On 32-bit data
//                                (tf32) a "row" is 4 floats and lane l gets float (l/4, l%4):
//                                exactly the A fragment, and B's when B is stored n-major.
//                                On bf16 data a row is 8 elements: the bf16 A and B
//                                fragments (.trans: from k-major storage).
//   fc_cp_async16/8/4(dst, src, n)  cp.async.{cg,ca}.shared.global with src-size n: copies
//                                n bytes from global to shared memory and zero-fills the rest
//                                of the 16/8/4 (n = 0: nothing is read, src must still be a
//                                valid address).
//   fc_cp_async_commit()         cp.async.commit_group
//   fc_cp_async_wait<N>()        cp.async.wait_group N: all but the N most recent groups of
//                                this thread's copies have landed (other threads' copies are
//                                visible after a __syncthreads that follows).
//
// Every helper is the only place its instruction appears, so that the CPU emulator
// (tests/cuda_emu.py, which defines FASTCNN_EMULATOR) swaps each one for a C++
// implementation that exchanges the fragments between the lanes of the warp.
#ifndef FASTCNN_MMA_CUH
#define FASTCNN_MMA_CUH

#ifdef FASTCNN_EMULATOR

FC_DEVICE void fc_mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], const float (&c)[4]) {
    fc_emu_mma_m16n8k8_tf32(d, a, b, c);
}
FC_DEVICE void fc_mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], const float (&c)[4]) {
    fc_emu_mma_m16n8k16_bf16(d, a, b, c);
}
FC_DEVICE unsigned fc_cvt_rna_tf32(float x) { return fc_emu_cvt_rna_tf32(x); }
FC_DEVICE unsigned fc_cvt_rn_bf16x2(float hi, float lo) { return fc_emu_cvt_rn_bf16x2(hi, lo); }
FC_DEVICE void fc_ldmatrix_x1(unsigned (&r)[1], const void* p) { fc_emu_ldmatrix(r, 1, false, p); }
FC_DEVICE void fc_ldmatrix_x2(unsigned (&r)[2], const void* p) { fc_emu_ldmatrix(r, 2, false, p); }
FC_DEVICE void fc_ldmatrix_x4(unsigned (&r)[4], const void* p) { fc_emu_ldmatrix(r, 4, false, p); }
FC_DEVICE void fc_ldmatrix_x1_trans(unsigned (&r)[1], const void* p) { fc_emu_ldmatrix(r, 1, true, p); }
FC_DEVICE void fc_ldmatrix_x2_trans(unsigned (&r)[2], const void* p) { fc_emu_ldmatrix(r, 2, true, p); }
FC_DEVICE void fc_ldmatrix_x4_trans(unsigned (&r)[4], const void* p) { fc_emu_ldmatrix(r, 4, true, p); }
FC_DEVICE void fc_cp_async16(void* dst, const void* src, int n) { fc_emu_cp_async(dst, src, 16, n, true); }
FC_DEVICE void fc_cp_async8(void* dst, const void* src, int n) { fc_emu_cp_async(dst, src, 8, n, false); }
FC_DEVICE void fc_cp_async4(void* dst, const void* src, int n) { fc_emu_cp_async(dst, src, 4, n, false); }
FC_DEVICE void fc_cp_async_commit() { fc_emu_cp_async_commit(); }
template <int N> FC_DEVICE void fc_cp_async_wait() { fc_emu_cp_async_wait(N); }

#else

FC_DEVICE void fc_mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], const float (&c)[4]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
FC_DEVICE void fc_mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], const float (&c)[4]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
FC_DEVICE unsigned fc_cvt_rn_bf16x2(float hi, float lo) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
FC_DEVICE unsigned fc_cvt_rna_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}
FC_DEVICE unsigned fc_smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
FC_DEVICE void fc_ldmatrix_x1(unsigned (&r)[1], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(fc_smem_addr(p)) : "memory");
}
FC_DEVICE void fc_ldmatrix_x2(unsigned (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(fc_smem_addr(p)) : "memory");
}
FC_DEVICE void fc_ldmatrix_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(fc_smem_addr(p)) : "memory");
}
FC_DEVICE void fc_ldmatrix_x1_trans(unsigned (&r)[1], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(fc_smem_addr(p)) : "memory");
}
FC_DEVICE void fc_ldmatrix_x2_trans(unsigned (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(fc_smem_addr(p)) : "memory");
}
FC_DEVICE void fc_ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(fc_smem_addr(p)) : "memory");
}
FC_DEVICE void fc_cp_async16(void* dst, const void* src, int n) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(fc_smem_addr(dst)), "l"(src), "r"(n) : "memory");
}
FC_DEVICE void fc_cp_async8(void* dst, const void* src, int n) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n"
                 :: "r"(fc_smem_addr(dst)), "l"(src), "r"(n) : "memory");
}
FC_DEVICE void fc_cp_async4(void* dst, const void* src, int n) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(fc_smem_addr(dst)), "l"(src), "r"(n) : "memory");
}
FC_DEVICE void fc_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> FC_DEVICE void fc_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

#endif  // FASTCNN_EMULATOR
#endif  // FASTCNN_MMA_CUH
