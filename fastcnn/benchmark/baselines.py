"""The baselines: cuBLAS through CuPy, cuDNN and PyTorch (GPU and CPU)."""
from __future__ import annotations

import contextlib

from .. import gputime
from .report import _try
from .workloads import ConvLayer, NETS, PoolLayer, _conv_sets, _gemm_sets, _pool_sets, _randn


def _torch_tf32_state():
    import torch
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def _set_torch_tf32(matmul: bool, cudnn: bool) -> None:
    """The legacy switches only (mixing them with ``fp32_precision`` makes PyTorch >= 2.9
    raise); the new ones where the legacy ones are refused."""
    import warnings
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch >= 2.9 warns that the legacy switches will go
        try:
            torch.backends.cuda.matmul.allow_tf32 = matmul
            torch.backends.cudnn.allow_tf32 = cudnn
        except (RuntimeError, AttributeError):
            torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
            torch.backends.cudnn.conv.fp32_precision = "tf32" if cudnn else "ieee"


@contextlib.contextmanager
def torch_tf32(enabled: bool, cudnn_benchmark: bool = True):
    """PyTorch matmul and cuDNN: TF32 on or off; cudnn.benchmark on (restored afterwards)."""
    import warnings
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = _try(_torch_tf32_state, (False, True))
    bench_before = torch.backends.cudnn.benchmark
    _set_torch_tf32(enabled, enabled)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        yield
    finally:
        _set_torch_tf32(*before)
        torch.backends.cudnn.benchmark = bench_before


def _torch_ok() -> bool:
    return gputime.torch_cuda_available()


def _make_cupy_gemm(M, K, N):
    def make():
        import cupy as cp
        sets = _gemm_sets(M, K, N)
        A, B = _randn(cp, (M, K), sets), _randn(cp, (K, N), sets)
        return (lambda i: cp.matmul(A[i], B[i])), sets, None
    return make


def _make_torch_gemm_bf16(M, K, N, dev: str = "cuda"):
    """cuBLAS BF16 GEMM through PyTorch (bfloat16 in and out, fp32 accumulation)."""
    def make():
        import torch
        sets = _gemm_sets(M, K, N) if dev == "cuda" else 1
        A = [torch.randn(M, K, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
        B = [torch.randn(K, N, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
        return (lambda i: torch.matmul(A[i], B[i])), sets, None
    return make


def _conv_torch_ref(L: ConvLayer, pas: str, x, w, dy):
    """float64 cuDNN-free reference through PyTorch (NHWC in, NHWC/HWIO out) for the check."""
    import torch
    tx = torch.from_dlpack(x).permute(0, 3, 1, 2).double()
    tw = torch.from_dlpack(w).permute(3, 2, 0, 1).double()
    tdy = torch.from_dlpack(dy).permute(0, 3, 1, 2).double() if dy is not None else None
    with torch.backends.cudnn.flags(enabled=False):
        if pas == "fwd":
            out = torch.nn.functional.conv2d(tx, tw, stride=L.stride, padding=L.pad)
            return out.permute(0, 2, 3, 1).cpu().numpy()
        dx, dw, _ = torch.ops.aten.convolution_backward(
            tdy, tx, tw, None, [L.stride] * 2, [L.pad] * 2, [1, 1], False, [0, 0], 1,
            [pas == "dgrad", pas == "wgrad", False])
        if pas == "dgrad":
            return dx.permute(0, 2, 3, 1).cpu().numpy()
        return dw.permute(2, 3, 1, 0).cpu().numpy()


def _make_torch_conv(L: ConvLayer, pas: str, channels_last: bool, dev: str = "cuda", bf16: bool = False):
    """cuDNN through PyTorch; ``bf16``: every tensor bfloat16 (cuDNN's BF16 kernels)."""
    def make():
        import torch
        sets = _conv_sets(L) if dev == "cuda" else 1
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        dt = torch.bfloat16 if bf16 else torch.float32
        xs = [torch.randn(L.N, L.C, L.H, L.W, device=dev, dtype=dt).contiguous(memory_format=fmt) for _ in range(sets)]
        ws = [torch.randn(L.K, L.C, L.R, L.S, device=dev, dtype=dt).contiguous(memory_format=fmt) for _ in range(sets)]
        dys = [torch.randn(L.N, L.K, L.P, L.Q, device=dev, dtype=dt).contiguous(memory_format=fmt)
               for _ in range(sets)]
        st, pd = [L.stride] * 2, [L.pad] * 2
        if pas == "fwd":
            def fn(i):
                return torch.nn.functional.conv2d(xs[i], ws[i], stride=L.stride, padding=L.pad)
        else:
            mask = [pas == "dgrad", pas == "wgrad", False]

            def fn(i):
                return torch.ops.aten.convolution_backward(
                    dys[i], xs[i], ws[i], None, st, pd, [1, 1], False, [0, 0], 1, mask)
        return fn, sets, None
    return make


def _pool_torch_ref(L: PoolLayer, pas: str, x, dy):
    """PyTorch's max-pool on NHWC arrays (any DLPack producer), NHWC NumPy result."""
    import torch
    tx = torch.from_dlpack(x).permute(0, 3, 1, 2).double()
    if pas == "fwd":
        return torch.nn.functional.max_pool2d(tx, L.pool, L.stride).permute(0, 2, 3, 1).cpu().numpy()
    tx = tx.detach().clone().requires_grad_(True)
    y = torch.nn.functional.max_pool2d(tx, L.pool, L.stride)
    y.backward(torch.from_dlpack(dy).permute(0, 3, 1, 2).double())
    return tx.grad.permute(0, 2, 3, 1).cpu().numpy()


def _make_torch_pool(L: PoolLayer, pas: str, channels_last: bool, dev: str = "cuda"):
    def make():
        import torch
        sets = _pool_sets(L) if dev == "cuda" else 1
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xs = [torch.randn(L.N, L.C, L.H, L.W, device=dev).contiguous(memory_format=fmt) for _ in range(sets)]
        if pas == "fwd":
            def fn(i):
                return torch.nn.functional.max_pool2d(xs[i], L.pool, L.stride)
        else:
            outs = [torch.ops.aten.max_pool2d_with_indices(x, [L.pool] * 2, [L.stride] * 2) for x in xs]
            dys = [torch.randn_like(y) for y, _ in outs]

            def fn(i):
                return torch.ops.aten.max_pool2d_with_indices_backward(
                    dys[i], xs[i], [L.pool] * 2, [L.stride] * 2, [0, 0], [1, 1], False, outs[i][1])
        return fn, sets, None
    return make


# ---- whole networks
def torch_lenet5():
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def torch_alexnet(num_classes: int = 1000):
    """Single-tower AlexNet, 62,378,344 parameters (no LRN), as fastcnn's 'single' variant."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, num_classes))


def _torch_optimizer(net, params, capturable):
    import torch
    if NETS[net][3] == "adam":
        return torch.optim.Adam(params, lr=1e-3, eps=1e-7, capturable=capturable)
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def _make_torch_net(net: str, mode: str, batch: int, device: str = "cuda", channels_last=False,
                    autocast_bf16=False):
    """mode: 'train eager', 'train graph', 'infer eager'.  ``autocast_bf16``: forward and loss under
    ``torch.autocast(dtype=torch.bfloat16)``, PyTorch's mixed precision (float32 weights)."""
    def make():
        import contextlib

        import torch
        # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture
        mixed = ((lambda: torch.autocast(device, dtype=torch.bfloat16, cache_enabled=False))
                 if autocast_bf16 else contextlib.nullcontext)
        hwc, classes, _, _ = NETS[net]
        model = (torch_lenet5() if net == "lenet5" else torch_alexnet(classes)).to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        sets = 4 if mode.startswith("train") else 2
        xs = [torch.randn(batch, hwc[2], hwc[0], hwc[1], device=device).contiguous(memory_format=fmt)
              for _ in range(sets)]
        ys = [torch.randint(0, classes, (batch,), device=device) for _ in range(sets)]
        loss_fn = torch.nn.CrossEntropyLoss()
        if mode == "infer eager":
            model.eval()

            def fn(i):
                with torch.no_grad(), mixed():
                    return model(xs[i])
            return fn, sets, None
        opt = _torch_optimizer(net, model.parameters(), capturable=(mode == "train graph"))

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            with mixed():
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss
        if mode == "train eager":
            return (lambda i: step(xs[i], ys[i])), sets, None
        # The standard whole-step capture: side-stream warm-up, static tensors, replay.
        static_x, static_y = xs[0].clone(), ys[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            with mixed():
                static_loss = loss_fn(model(static_x), static_y)
            static_loss.backward()
            opt.step()

        def fn(i):
            static_x.copy_(xs[i])
            static_y.copy_(ys[i])
            graph.replay()
        return fn, sets, None
    return make


def _make_torch_cpu_lenet(batch: int):
    return _make_torch_net("lenet5", "train eager", batch, device="cpu")
