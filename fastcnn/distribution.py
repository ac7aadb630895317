"""Data-parallel training across processes, on the engines clusters already run: MPI (mpi4py)
starts and connects the processes and reduces host buffers, NCCL (CuPy's ``cupy.cuda.nccl``)
reduces device buffers, its unique id broadcast over MPI (as ChainerMN does).  Keras's API::

    from fastcnn import distribution
    distribution.set_distribution(distribution.DataParallel())   # reads the MPI world
    model.fit(x, y, batch_size=256, epochs=10)   # 256 is the global batch: 256 / N per process

and launch N processes with ``mpirun -n N python3 train.py`` (or srun).  ``batch_size`` is the
global batch: each of the N processes takes its 1/N slice of every batch (a batch size that N
does not divide is refused; a short last batch is split as evenly as it goes, the gradients
weighted by each slice's share).  Before the first step rank 0's weights, optimizer state,
random layers' seeds and random generator are broadcast; after each backward pass the flat
gradient buffer is averaged in one all-reduce (MPI on the CPU reference, NCCL on the GPU, inside
the captured step graph), so every process runs the same update.  Dropout masks, crops, flips
and colour noise are keyed by the global sample index (``Layer.offset``) and the shuffle is the
same everywhere, so N processes train what one process trains with the same global batch, up to
the order of the gradient sums.  Loss sums and correct counts are summed across processes: the
History is the one a single process would record.  evaluate() is sharded the same way;
predict() runs whole on every process.  See docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import numpy as np

# Variables a launcher sets in each process it starts (Open MPI, MPICH/Hydra and PMIx, Slurm).
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the processes MPI started."""
    rank: int
    size: int
    local_rank: int          # rank among the processes on this node (picks the GPU)
    local_size: int
    node: str
    comm: object = dataclasses.field(repr=False, compare=False)
    gpu: int | None = None   # the CUDA device this process uses, when there is one

    def __str__(self):
        gpu = f", GPU {self.gpu}" if self.gpu is not None else ""
        return (f"rank {self.rank} of {self.size}, local rank {self.local_rank} of {self.local_size} "
                f"on {self.node}{gpu}")


_state = {"world": None, "current": None}


def launched() -> bool:
    """True when an MPI launcher (mpirun, mpiexec, srun) started this process."""
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def initialize(select_gpu: bool = True) -> World:
    """Join the MPI world (once; later calls return the same World): rank, size, and the local
    rank among the processes of this node (MPI_COMM_TYPE_SHARED); with ``select_gpu``, make
    GPU local_rank % (GPUs visible) the current device.  In a world of more than one process an
    uncaught exception aborts every process (MPI_Abort) instead of leaving them waiting."""
    if _state["world"] is not None:
        return _state["world"]
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("fastcnn.distribution needs mpi4py and an MPI library (Debian: apt-get install "
                          "openmpi-bin libopenmpi-dev; then pip install 'fastcnn[mpi]')") from exc
    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    local_rank, local_size = local.Get_rank(), local.Get_size()
    local.Free()
    gpu = _select_gpu(local_rank) if select_gpu else None
    world = World(comm.Get_rank(), comm.Get_size(), local_rank, local_size, MPI.Get_processor_name(), comm, gpu)
    if world.size > 1:
        _abort_on_uncaught_exception(world)
    _state["world"] = world
    return world


def _select_gpu(local_rank: int):
    """Make GPU local_rank % count current; None where CuPy or a GPU is absent."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device: the CPU reference
        return None
    if count < 1:
        return None
    device = local_rank % count
    cupy.cuda.Device(device).use()
    return device


def _abort_on_uncaught_exception(world: World) -> None:
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            previous(kind, value, tb)
        finally:
            abort(value, world=world)

    sys.excepthook = hook


def abort(exc, code: int = 1, world: World | None = None) -> None:
    """Say which rank failed and why on stderr, then stop every process of the world
    (MPI_Abort: the launcher ends them all, in bounded time)."""
    world = world or _state["world"]
    what = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    print(f"fastcnn: rank {world.rank} of {world.size} ({world.node}) failed: {what}; stopping all "
          f"{world.size} processes", file=sys.stderr, flush=True)
    sys.stdout.flush()
    world.comm.Abort(code)


class DataParallel:
    """Every process holds the whole model and trains on its 1/N slice of every batch; the
    gradients are averaged across processes after each backward pass (keras.distribution's
    DataParallel, run by MPI).  ``world`` defaults to ``initialize()``."""

    def __init__(self, world: World | None = None):
        self.world = world if world is not None else initialize()
        self.rank, self.size = self.world.rank, self.world.size
        self.share = (0, 0, 0)   # this training batch: (offset, rows here, rows in all)
        self._nccl = None

    def __repr__(self):
        return f"DataParallel({self.world})"

    @contextlib.contextmanager
    def scope(self):
        """``with dist.scope():`` fit and evaluate in the block run data-parallel (predict runs
        whole on every process)."""
        previous = _state["current"]
        _state["current"] = self
        try:
            yield self
        finally:
            _state["current"] = previous

    # ---- what fastcnn.model asks --------------------------------------------------------
    def local_batch(self, batch_size: int) -> int:
        """This process's rows of a full batch; a batch the world does not divide is refused."""
        if batch_size % self.size:
            raise ValueError(f"batch_size {batch_size} does not split over {self.size} processes: give a "
                             f"multiple of {self.size} (batch_size is the global batch; each process takes "
                             f"batch_size / {self.size} of it)")
        return batch_size // self.size

    def rows(self, start: int, stop: int) -> tuple[int, int]:
        """This process's rows [lo, hi) of the batch of rows [start, stop): the r-th of N
        near-equal slices (equal where N divides the batch)."""
        m = stop - start
        return start + m * self.rank // self.size, start + m * (self.rank + 1) // self.size

    def take(self, start: int, stop: int) -> tuple[int, int]:
        """rows() of a training batch, remembered for its random layers (offset) and for the
        weight of this process's gradient."""
        lo, hi = self.rows(start, stop)
        self.share = (lo - start, hi - lo, stop - start)
        return lo, hi

    def begin_fit(self, model, batches) -> None:
        """Before the first step: the processes agree on the model and the number of steps, and
        take rank 0's weights, optimizer state, step count, learning rate, random layers' seeds
        and random generator (the shuffle)."""
        from .seeding import generator
        B, state = model.backend, model.training_state
        mine = (int(state.params.size), int(batches.steps), batches.samples)
        seen = self.world.comm.allgather(mine)
        if any(s != seen[0] for s in seen):
            raise ValueError("the processes disagree on (parameters, steps per epoch, samples): "
                             + ", ".join(f"rank {r}: {s}" for r, s in enumerate(seen))
                             + "; every process must build the same model and read the same data")
        for a in state.shared_arrays():
            host = np.ascontiguousarray(B.to_host(a))
            self.world.comm.Bcast(host.view(np.uint8), root=0)   # as bytes: MPI has no bfloat16 type
            B.copy(a, B.asarray(host))
        random_layers = [layer for layer in model.layers if hasattr(layer, "seed")]
        shared = self.world.comm.bcast((model.optimizer.learning_rate, [l.seed for l in random_layers],
                                        generator().bit_generator.state), root=0)
        model.optimizer.learning_rate = shared[0]
        for layer, seed in zip(random_layers, shared[1]):
            layer.seed = seed
        generator().bit_generator.state = shared[2]
        resume = state.resume
        if self.rank and resume is not None and resume["batch"]:
            # a checkpoint taken inside an epoch holds rank 0's running totals: counted once
            state.resume = dict(resume, totals=np.zeros(2), seen=0)
        self.full_batch(batches)

    def full_batch(self, batches) -> None:
        """Take a full batch's share (what a captured step is recorded with): at the start of
        fit and after each epoch, whose last batch may have been short."""
        local = batches.batch_size // self.size
        self.share = (self.rank * local, local, batches.batch_size)

    def all_reduce_gradients(self, model) -> None:
        """Average the flat gradient buffer across processes (weighted by each process's share of
        the batch where the slices differ): MPI Allreduce on the host, NCCL on the device."""
        _, count, total = self.share
        grads = model.training_state.grads
        if total and count * self.size != total:      # a short last batch split unevenly
            grads *= grads.dtype.type(count * self.size / total)
        self.average(grads, model.device)

    def average(self, buf, device: str = "cpu") -> None:
        """Average a flat float32 buffer across processes, in place: MPI Allreduce (sum, then
        1/N) of a host buffer, or ncclAllReduce(avg) of a device buffer (``device="cuda"``)."""
        if device == "cuda":
            self._nccl_all_reduce(buf)
        else:
            from mpi4py import MPI
            self.world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            buf *= buf.dtype.type(1.0 / self.size)

    def _nccl_all_reduce(self, grads) -> None:
        """ncclAllReduce(avg) of the float32 buffer on the current stream: inside a CUDA graph
        capture it becomes a node of the graph, replayed with the step."""
        import cupy
        from cupy.cuda import nccl
        if self._nccl is None:
            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.world.comm.bcast(uid, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        ptr = grads.__cuda_array_interface__["data"][0]
        self._nccl.allReduce(ptr, ptr, grads.size, nccl.NCCL_FLOAT32, nccl.NCCL_AVG,
                             cupy.cuda.get_current_stream().ptr)

    def sum(self, values) -> np.ndarray:
        """Element-wise sum over the processes of a few host numbers (float64)."""
        from mpi4py import MPI
        values = np.array(values, np.float64)
        self.world.comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)
        return values


def set_distribution(dist: DataParallel | None) -> None:
    """Make ``dist`` the distribution fit/evaluate/predict use from now on (None: one process)."""
    if dist is not None and not isinstance(dist, DataParallel):
        raise TypeError(f"set_distribution takes a DataParallel or None, got {type(dist).__name__}")
    _state["current"] = dist


def distribution() -> DataParallel | None:
    """The distribution in force (keras.distribution.distribution()), or None."""
    return _state["current"]


# ---- hooks of fastcnn.model: no-ops without a distribution -------------------------------------
def is_main() -> bool:
    """True on rank 0, and without a distribution: the process that prints and writes files."""
    return _state["current"] is None or _state["current"].rank == 0


def sample_offset() -> int:
    """The global index of this process's first sample of the training batch (0 alone)."""
    return _state["current"].share[0] if _state["current"] is not None else 0


def rows(start: int, stop: int) -> tuple[int, int]:
    """This process's rows of the evaluation batch [start, stop) (all of them alone)."""
    return _state["current"].rows(start, stop) if _state["current"] is not None else (start, stop)


def graph_key():
    """What a captured step depends on here: the distribution (its all-reduce) and the share of
    the batch (the random layers' offset); None alone."""
    d = _state["current"]
    return None if d is None else (d, d.share)


def reduce_gradients(model) -> None:
    if _state["current"] is not None:
        _state["current"].all_reduce_gradients(model)


def reduce_totals(totals, count):
    """(loss sum, correct count) and the number of samples, summed over the processes."""
    if _state["current"] is None:
        return totals, count
    summed = _state["current"].sum([totals[0], totals[1], count])
    return summed[:2], int(summed[2])


def describe() -> str:
    """One line on the MPI world this process sees (for ``fastcnn info``)."""
    try:
        import mpi4py
    except ImportError:
        return "not available (pip install 'fastcnn[mpi]' and an MPI library)"
    if not launched():
        return f"one process (not started by mpirun/srun; mpi4py {mpi4py.__version__})"
    from mpi4py import MPI
    world = initialize()
    library = MPI.Get_library_version().split(",")[0].strip()
    return f"{world} (mpi4py {mpi4py.__version__}, {library})"
