// kernels/timing.cu: the "blocking kernel" that fastcnn.gputime queues before a timed region
// (nvbench's blocking_kernel, with a timeout that cannot be switched off).
//
// What:   fc_block_stream(release, status, held_ns, timeout_ns) keeps its stream busy until
//         the host writes a non-zero word to *release, or until timeout_ns nanoseconds have
//         passed, whichever comes first.  On exit it writes *held_ns = nanoseconds it waited
//         and *status = 0 (released by the host) or 1 (timed out).  The host sets *status to
//         another value (2) before the launch, so it can also tell "never ran".
// How:    one thread polls *release through a volatile pointer, so every poll is a real load;
//         the word lives in pinned, device-mapped host memory (cudaHostAlloc with the mapped
//         flag; under unified addressing the host pointer is the device pointer), so the
//         host's plain store reaches the GPU with no CUDA call and no stream operation.  The
//         clock is the %globaltimer register (nanoseconds, read by inline PTX: no header).
//         __threadfence_system() makes the two results visible to the host before the
//         kernel's completion is signalled.
// Why:    a CUDA event recorded by the host starts timing as soon as the GPU reaches it; if
//         the timed calls take longer to queue on the host (Python, argument checks, ~100 us
//         per Numba launch) than the work ahead of them takes on the GPU, the host's launch
//         latency is counted as kernel time.  With this kernel ahead of the start event, the
//         host queues the start event, every timed call and the end event while the GPU
//         waits, then writes *release: the GPU runs the timed calls back to back from a full
//         queue and the events measure GPU time only.  The timeout guarantees the kernel
//         never hangs: if the host cannot reach its release (it synchronised on this stream
//         inside the timed region, or the launch queue filled and the launch call blocked),
//         the kernel gives up, the stream drains, and *status = 1 tells the host to discard
//         that measurement and time it again without blocking.
// Launch: grid (1), block (1), no shared memory, on the stream to be held.  The three
//         pointers are host addresses of pinned mapped memory (64-byte apart in practice);
//         held_ns must be 8-byte aligned.
//
// Self-contained (no #include): NVRTC has no system headers.

__device__ __forceinline__ unsigned long long fc_globaltimer_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

extern "C" __global__ void fc_block_stream(const volatile unsigned int* release,
                                           volatile unsigned int* status,
                                           volatile unsigned long long* held_ns,
                                           unsigned long long timeout_ns) {
    const unsigned long long start = fc_globaltimer_ns();
    unsigned long long now = start;
    unsigned int timed_out = 0u;
    while (*release == 0u) {
        now = fc_globaltimer_ns();
        if (now - start >= timeout_ns) {
            timed_out = 1u;
            break;
        }
    }
    *held_ns = fc_globaltimer_ns() - start;
    *status = timed_out;
    __threadfence_system();
}
