"""The workloads: GEMM shapes, AlexNet/LeNet-5 layers and networks, random input sets, the error measure."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import gputime


GROUPS = ("ceiling", "gemm", "conv", "pool", "network", "cpu")
# Groups timed with gputime's blocking kernel (one op per call: GPU time, kernel vs kernel).
# 'network' keeps plain events (a step's host time is what a user waits for); 'cpu' is host time.
BLOCKED_GROUPS = ("ceiling", "gemm", "conv", "pool")

# ------------------------------------------------------------------ workloads
GEMM_SHAPES = [  # (name, M, K, N, skipped in --quick)
    ("gemm 4096^3", 4096, 4096, 4096, False),
    ("gemm 8192^3", 8192, 8192, 8192, True),
    ("lenet.fc1 200x400x120", 200, 400, 120, False),
    ("alexnet.fc6 128x9216x4096", 128, 9216, 4096, False),
    ("alexnet.fc7 128x4096x4096", 128, 4096, 4096, False),
]


@dataclass(frozen=True)
class ConvLayer:
    name: str
    N: int
    H: int
    W: int
    C: int
    K: int
    R: int
    S: int
    stride: int
    pad: int

    @property
    def P(self):
        return (self.H + 2 * self.pad - self.R) // self.stride + 1

    @property
    def Q(self):
        return (self.W + 2 * self.pad - self.S) // self.stride + 1

    @property
    def flops(self) -> float:
        return 2.0 * self.N * self.P * self.Q * self.K * self.R * self.S * self.C

    @property
    def shape(self) -> str:
        return (f"N{self.N} {self.H}x{self.W}x{self.C} -> {self.K} "
                f"{self.R}x{self.S}/{self.stride} pad {self.pad}")


CONV_LAYERS = [
    ConvLayer("lenet.conv1", 200, 28, 28, 1, 6, 5, 5, 1, 2),
    ConvLayer("lenet.conv2", 200, 14, 14, 6, 16, 5, 5, 1, 0),
    ConvLayer("alexnet.conv1", 128, 227, 227, 3, 96, 11, 11, 4, 0),
    ConvLayer("alexnet.conv2", 128, 27, 27, 96, 256, 5, 5, 1, 2),
    ConvLayer("alexnet.conv3", 128, 13, 13, 256, 384, 3, 3, 1, 1),
    ConvLayer("alexnet.conv4", 128, 13, 13, 384, 384, 3, 3, 1, 1),
    ConvLayer("alexnet.conv5", 128, 13, 13, 384, 256, 3, 3, 1, 1),
]
CONV_PASSES = ("fwd", "dgrad", "wgrad")
CONV_OPS = {"fwd": "conv2d_forward", "dgrad": "conv2d_backward_data",
            "wgrad": "conv2d_backward_weights"}


@dataclass(frozen=True)
class PoolLayer:
    name: str
    N: int
    H: int
    W: int
    C: int
    pool: int
    stride: int

    @property
    def P(self):
        return (self.H - self.pool) // self.stride + 1

    @property
    def Q(self):
        return (self.W - self.pool) // self.stride + 1

    @property
    def bytes(self) -> int:
        """Input read once + output written once (float32), for either pass."""
        return 4 * self.N * self.C * (self.H * self.W + self.P * self.Q)

    @property
    def shape(self) -> str:
        return f"N{self.N} {self.H}x{self.W}x{self.C} {self.pool}x{self.pool}/{self.stride}"


POOL_LAYERS = [
    PoolLayer("lenet.pool1", 200, 28, 28, 6, 2, 2),
    PoolLayer("lenet.pool2", 200, 10, 10, 16, 2, 2),
    PoolLayer("alexnet.pool1", 128, 55, 55, 96, 3, 2),
    PoolLayer("alexnet.pool2", 128, 27, 27, 256, 3, 2),
    PoolLayer("alexnet.pool5", 128, 13, 13, 256, 3, 2),
]

LENET_BATCH = 200
ALEXNET_BATCH = 128
LENET_INFER_BATCH = 10_000


def _rel_err(out, ref) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return float("inf")
    if not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.linalg.norm(out - ref) / (np.linalg.norm(ref) or 1.0))


def _randn(cp, shape, n_sets):
    return [cp.random.standard_normal(shape, dtype=cp.float32) for _ in range(n_sets)]


# ---- GEMM
def _gemm_sets(M, K, N):
    return gputime.rotation_count(4 * (M * K + K * N + M * N), max_sets=16)


# ---- convolution
def _conv_sets(L: ConvLayer):
    per_set = 4 * (L.N * L.H * L.W * L.C + L.R * L.S * L.C * L.K + L.N * L.P * L.Q * L.K)
    return gputime.rotation_count(per_set, max_sets=16)


# ---- max-pool
def _pool_sets(L: PoolLayer):
    return gputime.rotation_count(L.bytes + L.N * L.P * L.Q * L.C, max_sets=32)


NETS = {  # name: (input HWC, classes, train batch, optimizer)
    "lenet5": ((28, 28, 1), 10, LENET_BATCH, "adam"),
    "alexnet": ((227, 227, 3), 1000, ALEXNET_BATCH, "sgd"),
}
