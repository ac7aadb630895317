"""The 'numba' backend: every primitive as a Numba CUDA kernel written in Python.

Two roles:
  * a whole backend (``fastcnn.backend.get('numba')``): module-level functions
    for every name in ``fastcnn.backend.PRIMITIVES``, plus name/device/xp/
    asarray/to_host/synchronize/unavailable_reason;
  * a source of kernel variants: each kernel is registered in
    ``fastcnn.kernels`` as ``numba_<algorithm>`` (source='numba', never the
    default), so the 'cuda' backend can run it in place of a CUDA C variant.

Arrays.  On a real GPU the functions take and return CuPy arrays; they wrap
them for Numba with ``numba.cuda.as_cuda_array(a, sync=False)`` (no
synchronisation per launch) and launch on CuPy's current stream through
``numba.cuda.external_stream``, so the launches can be captured in a CuPy CUDA
graph; outputs come from ``cupy.empty``.  Under ``NUMBA_ENABLE_CUDASIM=1``
(no GPU) the same kernels run in Numba's CUDA simulator on NumPy arrays.
Every kernel sees its arrays flattened to 1-D float32/int32/uint8 and its
geometry as an int64 tuple, so one signature per kernel covers all shapes
(each module's ``ptx_kernels()`` lists them beside the kernels, for the offline
sm_90 PTX/ptxas check).

Kernels:
  GEMM engine   one shared-memory tiled, register-blocked kernel body
                (BM x BN tile, BK deep, TM x TN outputs per thread; tiles
                64x64/4x4, 128x128/8x8 and 64x16/4x2 for narrow outputs), made
                per operand loader: matmul (any transposes), conv forward as an
                implicit GEMM (A gathered from NHWC input, no im2col buffer),
                conv backward-data (gather from dy, strided taps skipped),
                conv backward-weights (split over K when the output is small),
                dense; bias + ReLU fused in the epilogue.  Large matmuls
                (config 128x128) run a dedicated generated kernel per transpose
                pair: 8x8 scalar accumulators, register prefetch, unguarded
                interior tiles, vectorised shared loads (see _gemm_big_source).
  max-pool      one thread per output (forward, uint8 argmax r*pool_w+s, first
                max wins, padding never wins) / per input (backward, gather:
                deterministic, no atomics); numba_vec: 4 channels a thread
                when C % 4 == 0, 2-D grid; numba_lanes (forward): channel
                lanes x output columns x output rows, no division per output.
  the rest      elementwise grid-stride kernels; bias_grad as a two-pass column
                reduction (deterministic); softmax and softmax-xent one block
                per row with shared-memory reductions, totals by
                cuda.atomic.add; dropout with an in-kernel Philox 4x32-10
                (uint32 arithmetic done in uint64 with explicit masks); crop
                (augmentation) and the colour noise with the same Philox per
                image; LRN across
                channels; SGD, Adam (AdamW) and RMSprop over flat buffers.

Modules: _launch.py (numba import, arrays, checks, streams, launches, the PTX
helpers), gemm.py (the GEMM engine, matmul, dense), conv.py (implicit-GEMM
convolutions), pool.py (max-pool), step.py (elementwise, bias, softmax, LRN,
optimisers), philox.py (dropout, crops, colour noise).  This module is the
backend table and registers the variants.
"""
from __future__ import annotations

# _launch first: it applies fastcnn._numba_compat before importing numba.cuda.
from ._launch import (SIMULATOR, THREADS, _compile_ptx, asarray, cuda, device, name, synchronize,  # noqa: F401
                      to_host, unavailable_reason, xp)
from .. import registry
from . import gemm, conv, pool, step, philox
from .gemm import (TILE_CONFIGS, dense_forward, matmul, pick_config, simulator_cost,  # noqa: F401
                   tile_config)
from .conv import conv2d_backward_data, conv2d_backward_weights, conv2d_forward  # noqa: F401
from .pool import (LANES_WINDOWS, maxpool_backward, maxpool_backward_vec, maxpool_forward,  # noqa: F401
                   maxpool_forward_lanes, maxpool_forward_vec)
from .step import (adam_update, add, bias_grad, cast, copy, copy_channels, gather_rows,  # noqa: F401
                   increment, leaky_relu_backward, leaky_relu_forward, lrn_backward, lrn_forward,
                   relu_backward, relu_forward,
                   rmsprop_update, sgd_update, softmax, softmax_cross_entropy)
from .philox import (crop_backward, crop_forward, dropout_backward, dropout_forward,  # noqa: F401
                     pca_noise_forward)


# ---------------------------------------------------------------------------
# variants for the GPU backend, and the PTX signatures of every kernel
# ---------------------------------------------------------------------------

VARIANTS = {
    # op: (variant name, note)
    "matmul": ("numba_tiled", "Numba: shared-memory tiles, 4x4/8x8 register blocking (large: generated 128x128 kernel), split-K when the output is small"),
    "dense_forward": ("numba_tiled", "Numba: the tiled GEMM with bias + ReLU in the epilogue"),
    "conv2d_forward": ("numba_implicit_gemm", "Numba: implicit GEMM, A gathered from NHWC input into shared memory"),
    "conv2d_backward_data": ("numba_implicit_gemm", "Numba: implicit GEMM over the taps that land on an output"),
    "conv2d_backward_weights": ("numba_implicit_gemm", "Numba: implicit GEMM, split along N*P*Q (deterministic partial sums)"),
    "maxpool_forward": ("numba_direct", "Numba: one thread per output, uint8 argmax"),
    "maxpool_backward": ("numba_gather", "Numba: one thread per input gathers from the covering windows (no atomics)"),
    "bias_grad": ("numba_two_pass", "Numba: column partial sums then a final sum (deterministic)"),
    "relu_forward": ("numba", "Numba: grid-stride elementwise"),
    "relu_backward": ("numba", "Numba: grid-stride elementwise"),
    "leaky_relu_forward": ("numba", "Numba: grid-stride elementwise"),
    "leaky_relu_backward": ("numba", "Numba: grid-stride elementwise"),
    "softmax": ("numba_block_row", "Numba: one block per row, shared-memory reductions"),
    "softmax_cross_entropy": ("numba_block_row", "Numba: one block per row; totals by float64 atomics"),
    "dropout_forward": ("numba_philox", "Numba: Philox 4x32-10 in-kernel, one call per 4 elements"),
    "dropout_backward": ("numba_philox", "Numba: same mask as the forward"),
    "crop_forward": ("numba", "Numba: thread per output element, window from Philox 4x32-10 per element"),
    "crop_backward": ("numba", "Numba: thread per dx element: dy inside the window, else 0"),
    "pca_noise_forward": ("numba", "Numba: thread per element, the image's offset from Philox + Box-Muller"),
    "lrn_forward": ("numba_direct", "Numba: one thread per element, loop over the channel window"),
    "lrn_backward": ("numba_direct", "Numba: one thread per element, loop over the windows that cover it"),
    "sgd_update": ("numba", "Numba: one launch over a flat buffer"),
    "adam_update": ("numba", "Numba: one launch over a flat buffer (AdamW's decay fused)"),
    "rmsprop_update": ("numba", "Numba: one launch over a flat buffer"),
    "increment": ("numba", "Numba: one thread"),
    "add": ("numba", "Numba: grid-stride elementwise"),
    "copy": ("numba", "Numba: grid-stride elementwise"),
    "copy_channels": ("numba", "Numba: lanes over a row's channels, rows grid-stride"),
    "gather_rows": ("numba", "Numba: lanes over a row's words, picked rows grid-stride"),
    "cast": ("numba", "Numba: float32 to float32 is a grid-stride copy; bfloat16 is refused (float32 only)"),
}


# further variants of an op: (op, variant name, function, note)
EXTRA_VARIANTS = [
    ("maxpool_forward", "numba_vec", "maxpool_forward_vec",
     "Numba: 4 consecutive channels a thread (C % 4 == 0, else numba_direct's kernel), 2-D grid"),
    ("maxpool_forward", "numba_lanes", "maxpool_forward_lanes",
     "Numba: a warp reads 32 consecutive channels per tap; 3-D grid, no division per output"),
    ("maxpool_backward", "numba_vec", "maxpool_backward_vec",
     "Numba: gather, 4 channels a thread (C % 4 == 0, else numba_gather's kernel), 2-D grid"),
]


def _register() -> None:
    if cuda is None:
        return   # no numba: no numba variants (the registry copes with their absence)
    # Never a default whatever the import order: fastcnn.backend.preferences names CUDA C
    # variants, and the registry's fallback skips Numba ones.
    module = globals()
    for op, (variant, note) in VARIANTS.items():
        registry.register(op, variant, module[op], source="numba", note=note)
    for op, variant, function, note in EXTRA_VARIANTS:
        registry.register(op, variant, module[function], source="numba", note=note)


_register()


def ptx_kernels():
    """[(label, python function, explicit signature[, compile options])] of every kernel.

    For compile_ptx; the optional fourth item holds the kernel's cuda.jit options
    that change its code (launch_bounds).  Each module lists its own kernels.
    """
    return [k for module in (gemm, conv, pool, step, philox) for k in module.ptx_kernels()]


def compile_ptx_all(cc=(9, 0)):
    """{label: PTX text} for every kernel, compiled for compute capability ``cc``.

    Needs numba-cuda's NVVM, not a GPU; it does not work under the simulator.
    """
    return _compile_ptx(ptx_kernels(), cc)
