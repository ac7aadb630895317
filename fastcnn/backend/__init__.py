"""Backends: one table of named primitives per backend, same names and signatures.

A backend is a module (``reference``, ``cuda``, ``numba``) exposing

    name        str, e.g. 'reference'
    xp          the array module (numpy or cupy)
    device      'cpu' or 'cuda'
    asarray(a, dtype=None)   host or device array -> this backend's contiguous array
    to_host(a)               this backend's array -> numpy array

and every primitive in ``PRIMITIVES`` below.  Arrays are C-contiguous, float32
(float64 accepted by the reference), layout NHWC, conv weights HWIO
``(R, S, C, K)``, dense weights ``(in, out)``.  ``stride`` is ``(sh, sw)``,
``padding`` is explicit ``(top, bottom, left, right)`` (the functional layer
turns 'valid' / 'same' into numbers, Keras's rules).  Output spatial size:
``P = (H + top + bottom - R) // sh + 1``.

Primitives (what each returns; "in place" ones return None):

  conv2d_forward(x, w, b, stride, padding, relu)          -> y (N,P,Q,K); b may be None; relu fused
  conv2d_backward_data(dy, w, x_shape, stride, padding)   -> dx (N,H,W,C)
  conv2d_backward_weights(x, dy, w_shape, stride, padding)-> dw (R,S,C,K)
  maxpool_forward(x, pool, stride, padding)               -> (y, argmax)   argmax uint8 (N,P,Q,C):
        index r*pool_w + s of the max inside the window (first max wins, padding never wins)
  maxpool_backward(dy, argmax, x_shape, pool, stride, padding) -> dx  (deterministic gather)
  matmul(a, b, trans_a, trans_b)                          -> op(a) @ op(b), 2-D
  dense_forward(x, w, b, relu)                            -> x @ w + b (b may be None), relu fused
  bias_grad(dy)                                           -> sum of dy over every axis but the last
  relu_forward(x)                                         -> max(x, 0)
  relu_backward(dy, y)                                    -> dy * (y > 0)
  leaky_relu_forward(x, negative_slope)                   -> x where x >= 0, else negative_slope * x
  leaky_relu_backward(dy, x, negative_slope)              -> dy * (1 where x >= 0, else negative_slope)
        (Keras's LeakyReLU; negative_slope a real number >= 0, rounded to x's dtype; NaN propagates)
  softmax(x)                                              -> row softmax over the last axis (2-D)
  softmax_cross_entropy(logits, labels, totals)           -> dlogits = (softmax - onehot) / N
        labels: int32 class indices (N,) or float one-hot (N, classes);
        totals: float64 array (2,), in place: totals[0] += sum of per-row losses,
        totals[1] += number of rows whose argmax equals the label (first max wins)
  dropout_forward(x, rate, seed, step, offset=0)          -> x * keep / (1 - rate)
  dropout_backward(dy, rate, seed, step, offset=0)        -> dy * keep / (1 - rate)
        keep is ``dropout_keep(x.size, rate, seed, step, offset * x.size // N)`` of ``reference``
        (Philox 4x32-10); seed a Python int, step an int32 array (1,) on the backend's device;
        offset (every random primitive) the global index of x's first sample: a data-parallel
        process's slice of a batch draws what one process draws for those samples of the batch
  crop_forward(x, height, width, random, flip, seed, step, offset=0) -> y (N, height, width, C): image n's
        window at (top_n, left_n), mirrored left-right where mirrored_n; the windows are
        ``crop_windows(N, (H, W), (height, width), random, flip, seed, step, offset)`` of ``reference``:
        random=False the centre, never mirrored; random=True from Philox 4x32-10 (data augmentation)
  crop_backward(dy, x_shape, random, flip, seed, step, offset=0) -> dx: dy put back in the window, zeros elsewhere
  pca_noise_forward(x, basis, seed, step, offset=0)       -> x + each image's RGB offset basis @ alpha,
        alpha three N(0, 1) draws per image and step: ``pca_noise_offsets`` of ``reference``
        (AlexNet's colour noise; x (N, H, W, 3); the backward is dy itself)
  lrn_forward(x, size, alpha, beta, k)                    -> (y, scale)
        scale = k + alpha * sum of x^2 over ``size`` neighbouring channels
        (AlexNet paper: no division by size), y = x * scale**-beta
  lrn_backward(dy, x, y, scale, size, alpha, beta, k)     -> dx
  sgd_update(p, g, v, lr, momentum, nesterov, weight_decay=0.0, *, p_bf16=None)  in place, flat 1-D arrays; v None if
        momentum == 0.  Keras: v = momentum*v - lr*g; p += v  (nesterov: p += momentum*v - lr*g);
        weight_decay != 0: g + weight_decay*p in place of g (the AlexNet paper's rule, PyTorch's)
  adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay=0.0, *, p_bf16=None)  in place, flat 1-D arrays;
        t = step[0] + 1 (step is not changed here), Keras's rule:
        m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
        p -= lr * sqrt(1-b2**t)/(1-b1**t) * m / (sqrt(v) + eps);
        adam_update(..., weight_decay) != 0: AdamW, p -= p * weight_decay * lr first (Keras's order)
  rmsprop_update(p, g, v, mom, avg, lr, rho, momentum, eps, *, p_bf16=None)  in place, flat 1-D arrays; Keras's rule:
        v = rho*v + (1-rho)*g*g; d = v + eps (centered: avg = rho*avg + (1-rho)*g, d = v - avg^2 + eps);
        inc = lr*g/sqrt(d); momentum: mom = momentum*mom + inc, p -= mom; else p -= inc
        (mom None when momentum == 0, avg None unless centered)
        p_bf16 (the three updates): None, or a flat bfloat16 array the size of p (float32, the
        master weights): the updated p rounded to nearest even is written there in the same pass
  increment(step)                                         in place: step[0] += 1
  add(a, b)                                               -> a + b (same shape)
  copy(dst, src)                                          in place: dst[...] = src
  copy_channels(dst, src, dst_start, src_start, width)    in place: dst[..., dst_start:dst_start+width]
        = src[..., src_start:src_start+width]; one float dtype, same leading shape (group convolution)
  gather_rows(dst, src, rows)                             in place: dst[i] = src[rows[i]]; rows int32 (n,),
        dst (n, ...) and src (m, ...) with the same trailing shape and dtype, float32, bfloat16 or int32
        (a training batch picked from the data set on the device; rows must lie in [0, m): the
        reference raises, the GPU kernels fill such a row with all-ones bits, NaN or -1)
  cast(x, dtype)                                          -> x converted to dtype, 'float32' or 'bfloat16'
        (a new array): float32 -> bfloat16 rounds to nearest even, bfloat16 -> float32 is exact

``matmul``, ``conv2d_backward_weights`` and ``bias_grad`` also take ``out=`` (keyword):
the result is written there (the model passes views of its flat gradient buffer, so
parameter gradients need no extra copy); the GPU variants take it on every op.

bfloat16 (the mixed_bfloat16 policy): ``conv2d_forward``, ``dense_forward`` and ``matmul`` take
bfloat16 x and w (the bfloat16 copy of the weights) with a float32 bias, multiply the exactly
widened values with float32 accumulation, add the bias, apply ReLU and round the output once
(to nearest even) to bfloat16; ``conv2d_backward_data`` gives bfloat16 dx; weight gradients stay
float32: ``conv2d_backward_weights`` of bfloat16 x and dy, and ``matmul`` into a float32 ``out=``.
The other ops follow their input's dtype (max-pool forward and backward, ReLU, dropout, crop,
colour noise, LRN with its scale, add, copy, copy_channels, gather_rows): the arrays of one
call share one dtype, the math is float32 on the exactly widened values and each bfloat16
result is rounded once, to nearest even: result == float32 result rounded.  ``bias_grad`` and
``softmax`` of bfloat16 give float32 (float32 accumulation); ``softmax_cross_entropy`` of
bfloat16 logits computes in float32, adds to the totals as before and gives bfloat16 dlogits.

Scalars (rates, lr) are Python floats; backends convert them to the kernel's C type.
Every backend checks dtype, device, contiguity and shapes before it launches anything
and raises ``ValueError``/``TypeError`` naming the argument; the rules all backends share
(window geometry, LRN and dropout arguments, seeds, offsets, crop sizes ...) live in
``checks.py``, so that a bad argument gets the same message whichever backend runs.
"""
from __future__ import annotations

import contextlib
import importlib

PRIMITIVES = (
    "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights",
    "maxpool_forward", "maxpool_backward",
    "matmul", "dense_forward", "bias_grad",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "softmax", "softmax_cross_entropy",
    "dropout_forward", "dropout_backward",
    "crop_forward", "crop_backward", "pca_noise_forward",
    "lrn_forward", "lrn_backward",
    "sgd_update", "adam_update", "rmsprop_update", "increment",
    "add", "copy", "copy_channels", "gather_rows", "cast",
)

BACKENDS = {"reference": "fastcnn.backend.reference",
            "cuda": "fastcnn.backend.cuda",
            "numba": "fastcnn.backend.numba"}

_current = ["reference"]
_checked: dict = {}  # name -> module, once it has been found usable (checked once per process)


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (no GPU, a package missing); the message says why."""


def get(name: str):
    """Return the backend module called ``name`` ('reference', 'cuda' or 'numba')."""
    module = _checked.get(name)
    if module is not None:
        return module
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    why = getattr(module, "unavailable_reason", lambda: None)()
    if why:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {why}")
    _checked[name] = module
    return module


def loaded() -> list:
    """The backend modules found usable so far in this process."""
    return list(_checked.values())


def current():
    """The backend that Functions call now."""
    return get(_current[0])


def set_backend(name: str) -> None:
    get(name)  # fail now, with the reason, rather than at the first op
    _current[0] = name


@contextlib.contextmanager
def using(name: str):
    """``with using('cuda'): ...`` runs the block on another backend."""
    previous = _current[0]
    set_backend(name)
    try:
        yield get(name)
    finally:
        _current[0] = previous


def availability() -> dict:
    """{backend name: None if usable, else the reason it is not}."""
    status = {}
    for name, path in BACKENDS.items():
        try:
            module = importlib.import_module(path)
            status[name] = getattr(module, "unavailable_reason", lambda: None)()
        except Exception as exc:  # an import failure is a reason, not a crash of `fastcnn info`
            status[name] = f"{type(exc).__name__}: {exc}"
    return status
