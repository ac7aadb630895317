"""The NCCL path of fastcnn.distribution on one GPU, one rank (a multi-GPU world needs a machine
with several GPUs: docs/distributed.md says how to check it there)."""
import numpy as np
import pytest

import fastcnn
import fastcnn._paths
from fastcnn import distribution

pytestmark = pytest.mark.gpu
mpi4py = pytest.importorskip("mpi4py")


def nccl():
    from cupy.cuda import nccl
    if not nccl.available:
        pytest.skip("NCCL is not installed (pip install 'fastcnn[mpi]')")
    return nccl


def test_nccl_unique_id_over_mpi_and_all_reduce():
    import cupy
    lib = nccl()
    dist = distribution.DataParallel()
    assert dist.size == 1
    a = cupy.arange(1000, dtype=cupy.float32) - 300.5
    want = a.copy()
    dist._nccl_all_reduce(a)          # builds the communicator from rank 0's id, then ncclAvg
    cupy.cuda.get_current_stream().synchronize()
    assert isinstance(dist._nccl, lib.NcclCommunicator) and dist._nccl.size() == 1
    np.testing.assert_array_equal(a.get(), want.get())


def test_captured_step_holds_the_all_reduce_and_equals_the_single_process_step():
    import cupy
    nccl()
    data = np.load(fastcnn._paths.DATA_DIR / "mnist-10k.npz")
    x = data["images"][:6 * 64, ..., None].astype(np.float32) / 255.0
    y = np.eye(10, dtype=np.float32)[data["labels"][:6 * 64]]

    def trained(dist):
        fastcnn.manual_seed(3)
        model = fastcnn.models.lenet5()
        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        model.to("cuda")
        if dist is None:
            return model.fit(x, y, epochs=2, batch_size=64, verbose=0, graph=True).history, model.get_weights()
        with dist.scope():
            return model.fit(x, y, epochs=2, batch_size=64, verbose=0, graph=True).history, model.get_weights()

    dist = distribution.DataParallel()
    captured = []
    reduce = dist._nccl_all_reduce

    def recording(grads):
        captured.append(cupy.cuda.get_current_stream().is_capturing())
        reduce(grads)

    dist._nccl_all_reduce = recording
    h_dist, w_dist = trained(dist)
    h_one, w_one = trained(None)
    assert True in captured, "the all-reduce was not called inside the graph capture"
    for a, b in zip(w_one, w_dist):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(h_dist["loss"], h_one["loss"], rtol=1e-6)
