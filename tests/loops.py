"""Direct nested-loop forms of the reference primitives: an independent check on tiny shapes.

Plain Python loops over every index with explicit bounds tests for padding (no
padded copies, no im2col, no BLAS), so they share no code or trick with
fastcnn.backend.reference.  Slow by design: keep shapes tiny.
"""
import math

import numpy as np


def conv2d(x, w, b, stride, padding, relu):
    N, H, W, C = x.shape
    R, S, _, K = w.shape
    (sh, sw), (top, bottom, left, right) = stride, padding
    P = (H + top + bottom - R) // sh + 1
    Q = (W + left + right - S) // sw + 1
    y = np.zeros((N, P, Q, K), dtype=np.float64)
    for n in range(N):
        for p in range(P):
            for q in range(Q):
                for k in range(K):
                    acc = 0.0 if b is None else float(b[k])
                    for r in range(R):
                        h = p * sh + r - top
                        if not 0 <= h < H:
                            continue
                        for s in range(S):
                            col = q * sw + s - left
                            if not 0 <= col < W:
                                continue
                            for c in range(C):
                                acc += float(x[n, h, col, c]) * float(w[r, s, c, k])
                    y[n, p, q, k] = max(acc, 0.0) if relu else acc
    return y


def maxpool(x, pool, stride, padding):
    """(y, argmax) with the first maximum in row-major window order; padding skipped."""
    N, H, W, C = x.shape
    (ph, pw), (sh, sw), (top, bottom, left, right) = pool, stride, padding
    P = (H + top + bottom - ph) // sh + 1
    Q = (W + left + right - pw) // sw + 1
    y = np.zeros((N, P, Q, C), dtype=np.float64)
    argmax = np.zeros((N, P, Q, C), dtype=np.uint8)
    for n in range(N):
        for p in range(P):
            for q in range(Q):
                for c in range(C):
                    best, where = None, None
                    for r in range(ph):
                        for s in range(pw):
                            h, col = p * sh + r - top, q * sw + s - left
                            if 0 <= h < H and 0 <= col < W:
                                v = float(x[n, h, col, c])
                                if best is None or v > best:
                                    best, where = v, r * pw + s
                    y[n, p, q, c], argmax[n, p, q, c] = best, where
    return y, argmax


def dense(x, w, b, relu):
    N, I = x.shape
    O = w.shape[1]
    y = np.zeros((N, O), dtype=np.float64)
    for n in range(N):
        for o in range(O):
            acc = 0.0 if b is None else float(b[o])
            for i in range(I):
                acc += float(x[n, i]) * float(w[i, o])
            y[n, o] = max(acc, 0.0) if relu else acc
    return y


def lrn(x, size, alpha, beta, k):
    N, H, W, C = x.shape
    y = np.zeros(x.shape, dtype=np.float64)
    half = size // 2
    for n in range(N):
        for h in range(H):
            for col in range(W):
                for c in range(C):
                    total = sum(float(x[n, h, col, j]) ** 2
                                for j in range(max(0, c - half), min(C, c + half + 1)))
                    y[n, h, col, c] = float(x[n, h, col, c]) / (k + alpha * total) ** beta
    return y


def softmax_cross_entropy(logits, label_rows):
    """(mean of per-row losses, correct count) from -sum(y * log softmax(z)) per row."""
    total, correct = 0.0, 0
    for z, t in zip(logits.tolist(), label_rows.tolist()):
        top = max(z)
        log_sum = top + math.log(sum(math.exp(v - top) for v in z))
        total += sum(ti * (log_sum - zi) for ti, zi in zip(t, z))
        correct += z.index(max(z)) == t.index(max(t))
    return total, correct
