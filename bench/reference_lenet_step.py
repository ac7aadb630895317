"""Time one LeNet-5 training step (batch 200, Adam) on the NumPy reference and in PyTorch CPU.

The reference step is built straight from the backend primitives (no autograd,
no layers), so it measures the primitives alone.  PyTorch runs the same net in
the same process with its default thread count.  Prints img/s for both, the
ratio, and where the reference's time goes (per primitive, summed over a step).

    python bench/reference_lenet_step.py [--batch 200] [--steps 20] [--no-torch]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from fastcnn.backend import reference as ref

# (name, shape) of LeNet-5's parameters, Keras layouts: conv HWIO, dense (in, out).
PARAMS = [("c1w", (5, 5, 1, 6)), ("c1b", (6,)), ("c2w", (5, 5, 6, 16)), ("c2b", (16,)),
          ("d1w", (400, 120)), ("d1b", (120,)), ("d2w", (120, 84)), ("d2b", (84,)),
          ("d3w", (84, 10)), ("d3b", (10,))]
SAME = (2, 2, 2, 2)
VALID = (0, 0, 0, 0)
ONE = (1, 1)
POOL = (2, 2)


class Timed:
    """Wraps the backend so that each primitive's time is added to ``spent``."""

    def __init__(self, backend, enabled):
        self.backend, self.enabled, self.spent = backend, enabled, defaultdict(float)

    def __getattr__(self, op):
        fn = getattr(self.backend, op)

        def timed(*args, tag="", **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.spent[f"{op}{tag}"] += time.perf_counter() - t0
            return out
        return timed


class ReferenceLeNet:
    def __init__(self, rng):
        sizes = [int(np.prod(s)) for _, s in PARAMS]
        self.flat = np.empty(sum(sizes), np.float32)
        self.grad = np.zeros_like(self.flat)
        self.m, self.v = np.zeros_like(self.flat), np.zeros_like(self.flat)
        self.step = np.zeros(1, np.int32)
        self.p, self.g, start = {}, {}, 0
        for (name, shape), size in zip(PARAMS, sizes):
            self.p[name] = self.flat[start:start + size].reshape(shape)
            self.g[name] = self.grad[start:start + size].reshape(shape)
            start += size
        for name, shape in PARAMS:  # Glorot-uniform-like kernels, small random biases (never zeros)
            fan = np.prod(shape[:-1]) + shape[-1]
            self.p[name][...] = rng.uniform(-1, 1, shape) * np.sqrt(6 / fan)

    def train_step(self, B, x, y_onehot, totals):
        p, g = self.p, self.g
        a1 = B.conv2d_forward(x, p["c1w"], p["c1b"], ONE, SAME, True, tag=" conv1")
        m1, i1 = B.maxpool_forward(a1, POOL, POOL, VALID, tag=" pool1")
        a2 = B.conv2d_forward(m1, p["c2w"], p["c2b"], ONE, VALID, True, tag=" conv2")
        m2, i2 = B.maxpool_forward(a2, POOL, POOL, VALID, tag=" pool2")
        f = m2.reshape(len(x), 400)
        h1 = B.dense_forward(f, p["d1w"], p["d1b"], True)
        h2 = B.dense_forward(h1, p["d2w"], p["d2b"], True)
        logits = B.dense_forward(h2, p["d3w"], p["d3b"], False)
        d = B.softmax_cross_entropy(logits, y_onehot, totals)

        g["d3w"][...] = B.matmul(h2, d, True, False)
        g["d3b"][...] = B.bias_grad(d)
        d = B.relu_backward(B.matmul(d, p["d3w"], False, True), h2)
        g["d2w"][...] = B.matmul(h1, d, True, False)
        g["d2b"][...] = B.bias_grad(d)
        d = B.relu_backward(B.matmul(d, p["d2w"], False, True), h1)
        g["d1w"][...] = B.matmul(f, d, True, False)
        g["d1b"][...] = B.bias_grad(d)
        d = B.matmul(d, p["d1w"], False, True).reshape(m2.shape)

        d = B.maxpool_backward(d, i2, a2.shape, POOL, POOL, VALID, tag=" pool2")
        d = B.relu_backward(d, a2)
        g["c2w"][...] = B.conv2d_backward_weights(m1, d, p["c2w"].shape, ONE, VALID, tag=" conv2")
        g["c2b"][...] = B.bias_grad(d)
        d = B.conv2d_backward_data(d, p["c2w"], m1.shape, ONE, VALID, tag=" conv2")
        d = B.maxpool_backward(d, i1, a1.shape, POOL, POOL, VALID, tag=" pool1")
        d = B.relu_backward(d, a1)
        g["c1w"][...] = B.conv2d_backward_weights(x, d, p["c1w"].shape, ONE, SAME, tag=" conv1")
        g["c1b"][...] = B.bias_grad(d)
        B.adam_update(self.flat, self.grad, self.m, self.v, self.step, 1e-3, 0.9, 0.999, 1e-7)
        B.increment(self.step)


def reference_step(batch, rng):
    """A closure running one reference training step on fixed random data, and its net."""
    net = ReferenceLeNet(rng)
    x = rng.standard_normal((batch, 28, 28, 1)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    totals = np.zeros(2)
    plain = Timed(ref, enabled=False)
    return lambda backend=plain: net.train_step(backend, x, y, totals)


def torch_step(batch, rng):
    """A closure running one PyTorch CPU training step of the same net (NCHW, as torch wants)."""
    import torch
    from torch import nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    x = torch.from_numpy(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    return step


def seconds(step):
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, Python {platform.python_version()}, "
          f"NumPy {np.__version__}")
    ours = reference_step(args.batch, rng)
    theirs = None
    if not args.no_torch:
        try:
            theirs = torch_step(args.batch, rng)
        except ImportError:
            print("torch is not installed: no baseline")
    for _ in range(3):  # warm-up: allocator, BLAS threads, torch's lazy init
        ours()
        if theirs:
            theirs()
    # Interleaved, so that both see the same load on a shared machine; medians.
    t_ours, t_theirs = [], []
    for _ in range(args.steps):
        t_ours.append(seconds(ours))
        if theirs:
            t_theirs.append(seconds(theirs))
    t_ref = float(np.median(t_ours))
    print(f"reference: {t_ref * 1e3:8.2f} ms/step  {args.batch / t_ref:9.0f} img/s "
          f"(median of {args.steps} steps, batch {args.batch})")
    if theirs:
        import torch
        t_torch = float(np.median(t_theirs))
        print(f"torch {torch.__version__} ({torch.get_num_threads()} threads): {t_torch * 1e3:8.2f} ms/step  "
              f"{args.batch / t_torch:9.0f} img/s")
        print(f"ratio reference/torch: {t_torch / t_ref:.2f}x (must reach 0.5x)")
    profiled = Timed(ref, enabled=True)
    for _ in range(args.steps):
        ours(profiled)
    total = sum(profiled.spent.values())
    print(f"where the reference's time goes (per step, {args.steps} profiled steps):")
    for op, t in sorted(profiled.spent.items(), key=lambda kv: -kv[1]):
        print(f"    {op:36s} {t / args.steps * 1e3:7.2f} ms  {100 * t / total:5.1f}%")


if __name__ == "__main__":
    main()
