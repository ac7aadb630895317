"""Helpers shared by the tests: random inputs, NaN-poisoned outputs, scaled tolerances."""
import numpy as np

from fastcnn.functional import resolve_padding

RTOL_FP32 = {"elementwise": 1e-6, "gemm": 1e-4, "tf32": 1e-3}


def rand(rng, *shape, dtype=np.float32, scale=1.0):
    """Fresh random data (never zeros: zeros hide unwritten outputs)."""
    return (rng.standard_normal(shape) * scale).astype(dtype)


def same4(H, W, R, S, sh, sw):
    """Keras 'same' padding (top, bottom, left, right), by the layers' own rule."""
    return resolve_padding("same", (H, W), (R, S), (sh, sw))


def poison(a):
    """Fill with NaN so that any element a kernel forgets to write fails the comparison."""
    a.fill(np.nan)
    return a


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        return float("inf")
    denom = np.linalg.norm(ref) or 1.0
    return float(np.linalg.norm(out - ref) / denom)


def assert_close(out, ref, rtol=1e-4, name="output"):
    assert np.shape(out) == np.shape(ref), f"{name}: shape {np.shape(out)} != {np.shape(ref)}"
    err = rel_err(out, ref)
    assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol:.1g}"


def numeric_grad(f, x, eps=1e-6):
    """d f / d x by central differences, one element at a time (x is changed and restored)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        up = f()
        flat[i] = keep - eps
        down = f()
        flat[i] = keep
        gflat[i] = (up - down) / (2 * eps)
    return grad
