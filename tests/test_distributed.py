"""Data-parallel training on the CPU reference: N processes started by mpirun train what one
process trains with the same global batch (tests/distributed_worker.py does the training).

Tolerance: the processes sum their gradients in another order than one process does (each
averages its slice, then MPI sums the averages), so float32 weights after the 10 SGD steps of
two epochs (momentum 0.9) may differ by a few units in the last place of the largest weight:
|w_N - w_1| <= 1e-5 * max|w_1| (measured: below 1e-6); losses within 1e-6 absolute, accuracies
equal.  Each launch is a few seconds on 2 cores (--oversubscribe)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
MPIRUN = shutil.which("mpirun")

try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None

pytestmark = pytest.mark.skipif(MPIRUN is None or mpi4py is None, reason="needs mpirun (Open MPI) and mpi4py")

TIMEOUT = 240   # seconds for one mpirun launch; the slowest (3 processes, 2 models) takes ~12 s


def launch(n, *args, timeout=TIMEOUT):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [MPIRUN, "--oversubscribe", "--allow-run-as-root", "-n", str(n), sys.executable, str(WORKER), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def train(n, out, *args):
    run = launch(n, "train", out, *args)
    assert run.returncode == 0, f"mpirun -n {n} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return dict(np.load(out))


def assert_same_training(got, want, what):
    weights = [k for k in want if "/w" in k]
    assert weights and sorted(got) == sorted(want)
    for k in weights:
        scale = np.abs(want[k]).max()
        diff = np.abs(got[k] - want[k]).max()
        assert diff <= 1e-5 * scale, f"{what}: {k} differs by {diff} (largest weight {scale})"
    for k in (k for k in want if k.endswith("/history")):
        h_got, h_want = json.loads(str(got[k])), json.loads(str(want[k]))
        assert sorted(h_got) == sorted(h_want) == ["accuracy", "loss", "val_accuracy", "val_loss"]
        for metric in h_want:
            tol = 1e-6 if "loss" in metric else 0.0
            np.testing.assert_allclose(h_got[metric], h_want[metric], rtol=0, atol=tol, err_msg=f"{what}: {k} {metric}")
    for k in (k for k in want if k.endswith("/evaluate")):
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6, err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return train(1, tmp_path_factory.mktemp("dist") / "one.npz")


@pytest.mark.parametrize("n", [2, 3])
def test_n_processes_train_what_one_process_trains(one_process, tmp_path, n):
    """LeNet-5 and a small AlexNet (random crops, flips, colour noise, dropout), 52 samples in
    batches of 12 (the last batch of 4 split 2+2 or 1+1+2), SGD with momentum and weight decay,
    2 epochs with validation, then evaluate in batches of 7 (split unevenly too)."""
    got = train(n, tmp_path / f"n{n}.npz")
    assert_same_training(got, one_process, f"{n} processes")


def test_resume_in_another_world_size(tmp_path):
    """A checkpoint written by rank 0 of 2 processes resumes in 3 processes as in 1."""
    prefix = tmp_path / "ck"
    train(2, tmp_path / "first.npz", "--models", "alexnet", "--epochs", "1", "--checkpoint", prefix)
    assert (tmp_path / "ck-alexnet.npz").is_file()
    args = ("--models", "alexnet", "--epochs", "1", "--checkpoint", prefix)
    run = launch(3, "resume", tmp_path / "three.npz", *args)
    assert run.returncode == 0, run.stderr
    run = launch(1, "resume", tmp_path / "one.npz", *args)
    assert run.returncode == 0, run.stderr
    assert_same_training(dict(np.load(tmp_path / "three.npz")), dict(np.load(tmp_path / "one.npz")), "resumed")


def test_resume_inside_an_epoch_in_another_world_size(tmp_path):
    """Every rank of 2 interrupted inside the second epoch, rank 0's checkpoint of that step
    resumed in 3 processes: as in 1 (the epoch's running totals so far counted once)."""
    prefix = tmp_path / "ck"
    run = launch(2, "interrupt", tmp_path / "first.npz", "--models", "alexnet", "--checkpoint", prefix)
    assert run.returncode == 0, run.stderr
    args = ("--models", "alexnet", "--epochs", "1", "--checkpoint", prefix)
    for n, name in ((3, "three"), (1, "one")):
        run = launch(n, "resume", tmp_path / f"{name}.npz", *args)
        assert run.returncode == 0, run.stderr
    assert_same_training(dict(np.load(tmp_path / "three.npz")), dict(np.load(tmp_path / "one.npz")), "resumed")


def test_a_batch_the_world_does_not_divide_is_refused(tmp_path):
    run = launch(2, "train", tmp_path / "x.npz", "--models", "lenet5", "--batch-size", "13", timeout=120)
    assert run.returncode != 0
    assert "batch_size 13 does not split over 2 processes: give a multiple of 2" in run.stderr
    assert not (tmp_path / "x.npz").exists()


def test_a_failing_rank_stops_every_rank_and_names_itself(tmp_path):
    """Rank 1 raises in the second epoch: every process stops (MPI_Abort) well within the
    timeout, the error names rank 1, and rank 0's checkpoint of the first epoch is intact."""
    run = launch(2, "fail", tmp_path / "x.npz", "--models", "alexnet", "--checkpoint", tmp_path / "ck",
                 "--epochs", "3", timeout=120)
    assert run.returncode != 0
    assert "rank 1 of 2" in run.stderr and "injected failure at epoch 1 batch 2" in run.stderr, run.stderr
    assert not (tmp_path / "x.npz").exists()
    from distributed_worker import build
    model, _ = build("alexnet")
    assert model.load_checkpoint(tmp_path / "ck-alexnet.npz") == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())


def fastcnn_cli(*args, n=None, timeout=TIMEOUT, output_dir=None):
    """``python -m fastcnn ARGS``, under ``mpirun -n n`` when n is given; with ``output_dir`` each
    rank's stdout goes to a file of its own there (mpirun merges the ranks' lines otherwise, and two
    lines written at once can run together)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "fastcnn", *map(str, args)]
    if n is not None:
        split = ["--output-filename", str(output_dir)] if output_dir is not None else []
        cmd = [MPIRUN, "--oversubscribe", "--allow-run-as-root", *split, "-n", str(n)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_distributed_train_equals_one_process(tmp_path):
    """fastcnn train --distributed under mpirun -n 2: the history and weights of the plain run;
    rank 0 alone prints and writes the run's files."""
    args = ("train", "lenet5", "--limit", 120, "--epochs", 2, "--batch-size", 30, "--device", "cpu", "--verbose", 2)
    plain = fastcnn_cli(*args, "--out", tmp_path / "one")
    assert plain.returncode == 0, plain.stderr
    two = fastcnn_cli(*args, "--out", tmp_path / "two", "--distributed", n=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("wrote ") == 1 and two.stdout.count("Epoch 2/2") == 1, two.stdout
    one_h, two_h = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    assert two_h["processes"] == 2 and "processes" not in one_h
    for metric, values in one_h["history"].items():
        np.testing.assert_allclose(two_h["history"][metric], values, rtol=0, atol=1e-6 if "loss" in metric else 0)
    with np.load(tmp_path / "one" / "weights.npz") as a, np.load(tmp_path / "two" / "weights.npz") as b:
        for k in a.files:
            assert np.abs(a[k] - b[k]).max() <= 1e-5 * np.abs(a[k]).max(), k


def test_cli_distributed_train_under_bf16(tmp_path):
    """--precision bf16 under mpirun -n 2: rank 0's weights and their bfloat16 copy reach every rank
    (broadcast as bytes); the run goes as the plain one, up to float32 sums over half batches."""
    args = ("train", "lenet5", "--limit", 120, "--epochs", 2, "--batch-size", 30, "--device", "cpu",
            "--verbose", 0, "--precision", "bf16")
    plain = fastcnn_cli(*args, "--out", tmp_path / "one")
    assert plain.returncode == 0, plain.stderr
    two = fastcnn_cli(*args, "--out", tmp_path / "two", "--distributed", n=2)
    assert two.returncode == 0, two.stderr
    one_h, two_h = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    assert one_h["precision"] == two_h["precision"] == "bf16"
    np.testing.assert_allclose(two_h["history"]["loss"], one_h["history"]["loss"], rtol=1e-2)


def test_cli_distributed_refuses_a_batch_the_world_does_not_divide(tmp_path):
    run = fastcnn_cli("train", "lenet5", "--limit", 60, "--epochs", 1, "--batch-size", 45, "--device", "cpu",
                      "--out", tmp_path / "x", "--distributed", n=2, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("--batch-size 45 does not split over 2 processes: give a multiple of 2") == 1, run.stderr
    assert not (tmp_path / "x").exists()


def test_info_shows_the_world(tmp_path):
    run = fastcnn_cli("info", n=2, timeout=120, output_dir=tmp_path)
    assert run.returncode == 0, run.stderr
    outputs = sorted(tmp_path.rglob("stdout"))
    assert len(outputs) == 2, outputs
    lines = sorted(line for path in outputs for line in path.read_text().splitlines() if line.startswith("MPI "))
    assert [line.split("(")[0].split()[1:6] for line in lines] == [["rank", "0", "of", "2,", "local"],
                                                                   ["rank", "1", "of", "2,", "local"]], lines


def test_bench_distributed_two_ranks(tmp_path):
    """fastcnn bench --group distributed under mpirun -n 2: rank 0 alone prints and writes the
    JSON; the all-reduce rows (algbw, busbw = algbw * 2(N-1)/N) and the data-parallel step beside
    two processes alone, all measured, with world size 2."""
    out = tmp_path / "dist.json"
    run = fastcnn_cli("bench", "--group", "distributed", "--quick", "--json", out, n=2, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(f"written: {out}") == 1 and run.stdout.count("-- distributed") == 1, run.stdout
    data = json.loads(out.read_text())
    assert data["header"]["world_size"] == 2 and data["header"]["world"].startswith("2 ranks")
    rows = {(r["case"], r["impl"]): r for r in data["rows"]}
    assert all(r["error"] is None and r["time_us"] > 0 and r["figure"] > 0 for r in rows.values()), rows
    for net, count in (("lenet5", 61_706), ("alexnet", 62_378_344)):
        alg, bus = rows[(f"all-reduce {net} grads", "mpi host algbw")], rows[(f"all-reduce {net} grads", "mpi host busbw")]
        assert alg["time_us"] == bus["time_us"]
        assert alg["figure"] == pytest.approx(4 * count / alg["time_us"] / 1e3)
        assert bus["figure"] == pytest.approx(alg["figure"] * 2 * (2 - 1) / 2)
    dp = rows[("lenet5 train data-parallel", "fastcnn 2 ranks eager")]
    alone = rows[("lenet5 train data-parallel", "2 x one process")]
    assert dp["figure"] == pytest.approx(400 / (dp["time_us"] * 1e-6))     # the global batch, 2 x 200
    assert dp["baseline"] == "2 x one process" and dp["ratio"] == pytest.approx(dp["figure"] / alone["figure"])


def test_bench_distributed_outside_mpirun_says_world_size_one(tmp_path):
    out = tmp_path / "one.json"
    run = fastcnn_cli("bench", "--group", "distributed", "--quick", "--filter", "lenet5", "--json", out, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "one process (world size 1, not started by mpirun/srun)" in run.stdout
    data = json.loads(out.read_text())
    assert data["header"]["world_size"] == 1
    assert {r["case"] for r in data["rows"]} == {"all-reduce lenet5 grads", "lenet5 train data-parallel"}
