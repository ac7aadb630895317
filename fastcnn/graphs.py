"""A whole training step (forward, backward, optimizer update) as one CUDA graph.

CuPy captures our RawKernel and Numba launches and its own allocations, but not
cuBLAS; fastcnn's step uses none.  Recipe: static input buffers; one eager
warm-up step (compiles every kernel and fills a private memory pool) whose
effect on the training state is undone (TrainingState.snapshot/restore); then capture; then per batch fill the
static buffers and launch (fit() picks each shuffled batch from the data set on
the device with the gather_rows kernel, straight into them: no copy, no CuPy
indexing kernel; ``step(x, y)`` copies arrays in).  The private pool keeps the graph's intermediate
buffers away from every other allocation for the graph's lifetime.  Values that
change per step (Adam's t, dropout's step) are read from device memory by the
kernels, so replays stay correct.
"""
from __future__ import annotations

import numpy as np


class GraphCaptureError(RuntimeError):
    """Something in the training step cannot be captured into a CUDA graph."""


class GraphTrainStep:
    def __init__(self, model, x_shape, y_shape, y_dtype):
        import cupy as cp
        if model.device != "cuda":
            raise ValueError("CUDA graphs need the model on the GPU (model.to('cuda'))")
        self.model = model
        self.x = cp.zeros(x_shape, np.float32)
        self.y = cp.zeros(y_shape, y_dtype)  # zeros are valid labels for the warm-up step
        self.pool = cp.cuda.MemoryPool()
        self.stream = cp.cuda.Stream(non_blocking=True)
        state = model.training_state
        saved = state.snapshot()
        cp.cuda.Device().synchronize()
        try:
            with cp.cuda.using_allocator(self.pool.malloc), self.stream:
                model.train_step(self.x, self.y)  # warm-up: compile kernels, fill the private pool
                self.stream.synchronize()
                state.restore(saved)
                self.stream.synchronize()
                self.stream.begin_capture()
                try:
                    model.train_step(self.x, self.y)
                finally:
                    graph = self.stream.end_capture()
        except Exception as exc:
            state.restore(saved)
            raise GraphCaptureError(f"could not capture the training step as a CUDA graph: "
                                    f"{type(exc).__name__}: {exc}. Train with fit(..., graph=False).") from exc
        self.graph = graph
        cp.cuda.Device().synchronize()

    @property
    def inputs(self) -> tuple:
        """The static (x, y) buffers the graph reads: fill them, then replay()."""
        return self.x, self.y

    def replay(self) -> None:
        """Launch the captured step on the current stream (after the inputs were written there)."""
        self.graph.launch()

    def __call__(self, x, y) -> None:
        """Copy one batch (host or device arrays of the captured shapes) in and replay the step."""
        import cupy as cp
        for name, dst, src in (("x", self.x, x), ("y", self.y, y)):
            if tuple(src.shape) != dst.shape:
                raise ValueError(f"graph step {name} must have shape {dst.shape}, got {tuple(src.shape)}")
            if isinstance(src, cp.ndarray):
                self.model.backend.copy(dst, src.astype(dst.dtype, copy=False))
            else:
                dst.set(np.ascontiguousarray(src, dtype=dst.dtype))
        self.replay()  # on the current stream: ordered with the copies above
