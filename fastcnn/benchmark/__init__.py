"""`fastcnn bench`: every fastcnn kernel variant and both networks beside their baselines.

One run measures, on one card and in one process:

* ceilings: device-to-device copy bandwidth (bytes read + written), cuBLAS SGEMM
  (``cupy.matmul``, TF32 off) and cuBLAS TF32 rates;
* GEMM 4096^3, 8192^3, 200x400x120, 128x9216x4096, 128x4096x4096 (M x K x N):
  every ``matmul`` variant vs ``cupy.matmul`` with TF32 off and on (the TF32 variants,
  ``tc_tf32``, timed under precision "high" in every run and compared with TF32 on);
* convolution forward / backward-data / backward-weights of every LeNet-5 (batch
  200) and AlexNet (batch 128) layer: every variant vs cuDNN through PyTorch,
  NCHW and channels_last, TF32 off and on, ``cudnn.benchmark = True`` (TF32 variants
  against the faster TF32 layout);
* max-pool forward / backward of every pooling layer vs PyTorch's max_pool2d
  (ATen's CUDA kernels), GB/s and percent of the copy bandwidth;
* whole networks, images/s: LeNet-5 train (batch 200, Adam), AlexNet train (batch
  128, SGD momentum 0.9) and inference; fastcnn eager and graph vs PyTorch eager
  and PyTorch whole-step CUDA graph;
* CPU: the NumPy reference's LeNet-5 train (batch 200, Adam) vs PyTorch's CPU build.

Every fastcnn row carries a ratio to a baseline measured in the same run (the
report refuses figures from another run) and, where one applies, the percent of
the ceiling measured in the same run.  Figures: TFLOP/s counts 2*M*N*K (a
convolution pass counts 2*N*P*Q*K*R*S*C, the forward's, for all three passes);
GB/s counts each input read once and each output written once (pool forward:
x + y, backward: dy + dx); img/s is batch / step time.  Higher is better for all.

GPU times: CUDA events after warm-up, median of repeats, L2 flushed before each
repeat or inputs rotated across sets larger than twice the L2 (fastcnn.gputime).
Kernel-level groups (``BLOCKED_GROUPS``) hold the GPU with a blocking kernel until
every timed call is queued, so they compare GPU time; network cases time as the host
queues (host time counted, as a user sees a step).  The header's ``timing`` field
says so; a kernel case that had to fall back says why in its note, and the report's
notes count them.  Data is always random.
"""

# Layout: report (results, the report and its writers, the environment header), workloads
# (shapes, layers, input sets), baselines (cuBLAS, cuDNN, PyTorch), cases (the case tables,
# fastcnn's side), runner (checking and timing a run), cli (``fastcnn bench``), distributed
# (the distributed group, under mpirun). The names below are this package's interface.
from .report import (  # noqa: F401
    UNITS, Result, Row, CEILINGS, Report, _num, _md, _json_default, load_json, _try,
    _openblas_threads, environment,
)
from .workloads import (  # noqa: F401
    GROUPS, BLOCKED_GROUPS, GEMM_SHAPES, ConvLayer, CONV_LAYERS, CONV_PASSES, CONV_OPS,
    PoolLayer, POOL_LAYERS, LENET_BATCH, ALEXNET_BATCH, LENET_INFER_BATCH, _rel_err, _randn,
    _gemm_sets, _conv_sets, _pool_sets, NETS,
)
from .baselines import (  # noqa: F401
    _torch_tf32_state, _set_torch_tf32, torch_tf32, _torch_ok, _make_cupy_gemm, _conv_torch_ref,
    _make_torch_conv, _pool_torch_ref, _make_torch_pool, torch_lenet5, torch_alexnet,
    _torch_optimizer, _make_torch_net, _make_torch_cpu_lenet,
)
from .cases import (  # noqa: F401
    Spec, _figure, cupy_tf32, _variants, _variant_impl, _in_precision, _tf32_registered,
    ceiling_specs, _make_fastcnn_gemm, gemm_specs, _make_fastcnn_conv, conv_specs,
    _make_fastcnn_pool, registry_fn, pool_specs, _fastcnn_model, _infer_fn, _make_fastcnn_net,
    network_specs, _reference_primitive_step, _make_reference_lenet, cpu_specs, SPEC_BUILDERS,
    GPU_GROUPS, TARGETS, specs,
)
from .runner import (  # noqa: F401
    QUICK_BUDGET_S, Options, _select, run_spec, CPU_BLOCK, run_cpu_specs, _free_memory,
    _priority_patterns, run_benchmarks,
)
from .cli import (  # noqa: F401
    add_arguments, run, emit, main,
)
