"""The fastcnn command end to end, in temporary directories, on the CPU reference backend."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fastcnn import cli

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--device", "cpu", "--limit", "300", "--batch-size", "100", "--verbose", "2"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_lenet5(capsys):
    code, out, _ = run(capsys, "summary", "lenet5")
    assert code == 0
    assert "Total params: 61,706" in out and "(None, 28, 28, 6)" in out and "(None, 400)" in out


def test_summary_alexnet_original(capsys):
    code, out, _ = run(capsys, "summary", "alexnet", "--variant", "original")
    assert code == 0 and "Total params: 60,965,224" in out


def test_info_runs_without_gpu(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    for word in ("fastcnn", "numpy", "torch", "CPU", "GPU", "backends:"):
        assert word in out
    assert "reference  usable" in out
    assert "cuda" in out.split("backends:")[1]


def test_kernels_lists_every_variant_and_the_one_used(capsys):
    code, out, _ = run(capsys, "kernels", "conv2d_forward", "maxpool_forward")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "conv2d_forward"
    from fastcnn.backend import availability
    mark = "*" if availability()["cuda"] is None else "-"  # in use; without a GPU, none runs
    assert any(line.split()[:3] == [mark, "auto", "cuda"] for line in lines)     # the default, marked
    if mark == "-":
        assert "none of these runs here" in out and "NumPy reference runs instead" in out
        assert not any(line.split()[:1] == ["*"] for line in lines)
    import importlib.util
    numba = ("numba_implicit_gemm", "numba_lanes") if importlib.util.find_spec("numba") else ()  # not in a CPU install
    for name in ("implicit_gemm96", "winograd4", "vec8") + numba:
        assert any(line.split()[0] == name for line in lines), name
    import fastcnn
    with fastcnn.kernels.using("maxpool_forward", "vec4"):
        _, out, _ = run(capsys, "kernels", "maxpool_forward")
    assert any(line.split()[:2] == [mark, "vec4"] for line in out.splitlines())
    code, _, err = run(capsys, "kernels", "conv3d")
    assert code == 2 and "no kernel variants for conv3d" in err and "conv2d_forward" in err


def test_train_kernel_choices_are_checked(capsys, tmp_path):
    base = ("train", "lenet5", "--epochs", "1", "--limit", "200", "--verbose", "0", "--out", str(tmp_path))
    for bad, message in (("conv2d_forward", "expected OP=VARIANT"),
                         ("conv3d=direct", "no kernel variants for conv3d"),
                         ("conv2d_forward=nope", "its variants: ")):
        code, _, err = run(capsys, *base, "--kernel", bad)
        assert code == 2 and message in err, (bad, err)
    code, out, _ = run(capsys, *base, "--device", "cpu", "--kernel", "conv2d_forward=implicit_gemm96")
    assert code == 0 and "--kernel ignored" in out       # the CPU reference has no variants
    assert json.loads((tmp_path / "history.json").read_text())["kernels"] == {}


@pytest.mark.gpu
def test_train_with_a_chosen_kernel_on_the_gpu(capsys, tmp_path):
    import fastcnn
    code, out, _ = run(capsys, "train", "lenet5", "--epochs", "1", "--limit", "400", "--verbose", "0",
                       "--device", "cuda", "--kernel", "conv2d_forward=implicit_gemm96",
                       "--kernel", "maxpool_forward=numba_lanes", "--out", str(tmp_path))
    assert code == 0, out
    assert "kernels: conv2d_forward=implicit_gemm96, maxpool_forward=numba_lanes" in out
    assert json.loads((tmp_path / "history.json").read_text())["kernels"] == {
        "conv2d_forward": "implicit_gemm96", "maxpool_forward": "numba_lanes"}
    assert fastcnn.kernels.selected("conv2d_forward") == "auto"     # the choice ends with the run


def test_python_dash_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "fastcnn", "summary", "lenet5"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Total params: 61,706" in proc.stdout


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "train" in out


def test_train_then_resume(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", str(out_dir), *QUICK)
    assert code == 0, err
    assert "device: cpu, backend: reference" in out
    assert "validation accuracy:" in out and "Epoch 1/1" in out
    for name in ("history.json", "weights.npz", "checkpoint.npz", "curves.png"):
        assert (out_dir / name).stat().st_size > 0, name
    assert (out_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h = json.loads((out_dir / "history.json").read_text())
    assert h["epoch"] == [1] and h["train_images"] == 300 and h["data"] == "mnist-sample"
    assert set(h["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert 0 <= h["validation_accuracy"] <= 1
    first_loss = h["history"]["loss"][0]
    with np.load(out_dir / "weights.npz") as w:
        assert sum(w[k].size for k in w.files) == 61706

    code, out, err = run(capsys, "train", "lenet5", "--epochs", "3", "--resume", "--out", str(out_dir), *QUICK)
    assert code == 0, err
    assert "resuming from" in out and "1 epoch(s) done" in out
    assert "Epoch 2/3" in out and "Epoch 3/3" in out and "Epoch 1/3" not in out
    h = json.loads((out_dir / "history.json").read_text())
    assert h["epoch"] == [1, 2, 3]
    assert h["history"]["loss"][0] == first_loss  # the first run's epoch is kept, not redone
    assert h["history"]["loss"][2] < first_loss  # and training went on from there

    code, out, _ = run(capsys, "train", "lenet5", "--epochs", "3", "--resume", "--out", str(out_dir), *QUICK)
    assert code == 0 and "nothing to train" in out


def test_evaluate_saved_weights_reproduces_the_training_run(capsys, tmp_path):
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", str(tmp_path), *QUICK)
    assert code == 0, err
    accuracy = json.loads((tmp_path / "history.json").read_text())["validation_accuracy"]
    code, out, err = run(capsys, "evaluate", "lenet5", "--weights", str(tmp_path / "weights.npz"),
                         "--device", "cpu", "--limit", "300")
    assert code == 0, err
    assert f"validation accuracy: {accuracy:.4f}" in out and "on 300 images" in out
    top5 = float(out.split("validation top-5 accuracy: ")[1].split()[0])
    assert accuracy <= top5 <= 1.0
    rows = out.split("columns: predicted):\n")[1].splitlines()[1:]
    assert len(rows) == 10 and sum(int(r.split("of ")[-1]) for r in rows) == 300
    code, _, err = run(capsys, "evaluate", "lenet5", "--weights", str(tmp_path / "missing.npz"))
    assert code == 2 and "weights file not found" in err
    code, _, err = run(capsys, "evaluate", "lenet5", "--weights", str(tmp_path / "history.json"))
    assert code == 2 and "is not an .npz weights file" in err


def test_confusion_matrix_counts():
    counts = cli.confusion_matrix([0, 1, 1, 2, 2, 2], [0, 1, 0, 2, 2, 1], 3)
    assert counts.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]


def test_top_k_accuracy():
    scores = np.array([[0.1, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    assert cli.top_k_accuracy(scores, np.array([1, 3, 2]), 1) == pytest.approx(2 / 3)   # a tie goes to the label
    assert cli.top_k_accuracy(scores, np.array([2, 3, 0]), 2) == pytest.approx(2 / 3)   # 0.2 ties 0.2: second
    assert cli.top_k_accuracy(scores, np.array([0, 3, 1]), 4) == 1.0


def test_ctrl_c_saves_checkpoint(capsys, tmp_path, monkeypatch):
    import fastcnn
    from fastcnn.callbacks import Callback

    class Interrupt(Callback):
        def on_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                raise KeyboardInterrupt

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    original = fastcnn.Sequential.fit

    def fit(self, *args, callbacks=None, **kwargs):
        return original(self, *args, callbacks=list(callbacks or []) + [Interrupt()], **kwargs)

    out_dir = tmp_path / "run"
    monkeypatch.setattr(fastcnn.Sequential, "fit", fit)
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "3", "--out", str(out_dir), *QUICK)
    assert code == 130
    assert "interrupted: saved" in err and "--resume" in err
    with np.load(out_dir / "checkpoint.npz") as ck:
        assert int(ck["__epoch__"]) == 1
    monkeypatch.setattr(fastcnn.Sequential, "fit", original)
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "2", "--resume", "--out", str(out_dir), *QUICK)
    assert code == 0, err
    assert "1 epoch(s) done" in out and "Epoch 2/2" in out
    assert json.loads((out_dir / "history.json").read_text())["epoch"] == [1, 2]


def test_train_without_matplotlib(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for name in [m for m in sys.modules if m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", str(tmp_path), *QUICK)
    assert code == 0
    assert "no plot" in err and "pip install" in err and "matplotlib" in err
    assert not (tmp_path / "curves.png").exists() and (tmp_path / "weights.npz").exists()


def test_train_synthetic_lenet5(capsys, tmp_path):
    code, out, err = run(capsys, "train", "lenet5", "--data", "synthetic", "--epochs", "1",
                         "--out", str(tmp_path), *QUICK)
    assert code == 0, err
    assert "synthetic" in out.lower() and "mean nothing" in out
    assert json.loads((tmp_path / "history.json").read_text())["synthetic"] is True


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FASTCNN_SLOW_TESTS"),
                    reason="AlexNet on the CPU reference holds ~1 GB of parameters and optimizer state "
                           "and takes minutes on 2 cores: set FASTCNN_SLOW_TESTS=1 to run it")
def test_train_alexnet_synthetic(capsys, tmp_path):
    code, out, err = run(capsys, "train", "alexnet", "--epochs", "1", "--limit", "4", "--batch-size", "4",
                         "--device", "cpu", "--verbose", "0", "--out", str(tmp_path))
    assert code == 0, err
    h = json.loads((tmp_path / "history.json").read_text())
    assert h["data"] == "synthetic" and h["train_images"] == 4 and h["variant"] == "single"


def test_alexnet_rejects_mnist(capsys, tmp_path):
    code, _, err = run(capsys, "train", "alexnet", "--data", "mnist-sample", "--out", str(tmp_path))
    assert code == 2 and "227x227x3" in err and "--data synthetic" in err


def test_resume_without_checkpoint(capsys, tmp_path):
    code, _, err = run(capsys, "train", "lenet5", "--resume", "--out", str(tmp_path / "none"))
    assert code == 2 and "no checkpoint" in err


def test_missing_data_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTCNN_NO_DOWNLOAD", "1")
    code, _, err = run(capsys, "train", "lenet5", "--data", "mnist", "--out", str(tmp_path / "o"))
    assert code == 1
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path / "cache" / "mnist") in err


def test_cuda_without_gpu(capsys, tmp_path):
    from fastcnn.backend import availability
    if availability()["cuda"] is None:
        pytest.skip("a usable GPU is present")
    code, _, err = run(capsys, "train", "lenet5", "--device", "cuda", "--limit", "10", "--out", str(tmp_path))
    assert code == 1 and "unavailable" in err


def test_bench_and_check_delegate(capsys, monkeypatch):
    fake = types.ModuleType("fastcnn.check")
    fake.add_arguments = lambda parser: parser.add_argument("--quick", action="store_true")
    fake.run = lambda args: 7 if args.quick else 0
    monkeypatch.setitem(sys.modules, "fastcnn.check", fake)
    assert cli.main(["check", "--quick"]) == 7
    assert cli.main(["check"]) == 0
    monkeypatch.setitem(sys.modules, "fastcnn.benchmark", None)  # as if the file were absent
    code, _, err = run(capsys, "bench")
    assert code == 1 and "fastcnn.benchmark is not part of this installation" in err


def test_plot_history_forms(tmp_path):
    pytest.importorskip("matplotlib")
    from fastcnn.callbacks import History
    from fastcnn.plotting import plot_history
    h = History()
    h.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})
    h.on_epoch_end(1, {"loss": 0.5, "accuracy": 0.7})
    assert plot_history(h, tmp_path / "a.png") == str(tmp_path / "a.png")
    resumed = {"epoch": [1, 2, 3], "history": {"loss": [1, 0.5, 0.4], "accuracy": [0.5, 0.7, 0.8],
                                               "val_loss": [None, 0.6, 0.5], "val_accuracy": [None, 0.6, 0.7]}}
    plot_history(resumed, tmp_path / "b.png", title="resumed")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="no epochs"):
        plot_history({"loss": []}, tmp_path / "c.png")


def test_learning_rate_schedule_and_early_stop(capsys, tmp_path):
    code, out, err = run(capsys, "train", "lenet5", *QUICK, "--optimizer", "sgd", "--lr", "0.5", "--momentum", "0.9",
                         "--weight-decay", "0.001", "--epochs", "6", "--reduce-lr", "0", "--early-stop", "1",
                         "--out", str(tmp_path))
    assert code == 0, err
    history = json.loads((tmp_path / "history.json").read_text())
    assert "weight_decay=0.001" in history["optimizer"]
    rates = history["history"]["learning_rate"]   # the rate each epoch trained with
    assert rates[0] == 0.5 and all(b in (a, pytest.approx(a / 10)) for a, b in zip(rates, rates[1:]))
    assert len(rates) < 6 or rates[-1] < 0.5        # an epoch without a better accuracy: 10x less, or a stop
    with np.load(tmp_path / "checkpoint.npz") as ckpt:  # the rate in force is kept for --resume
        rate = json.loads(str(ckpt["__state__"]))["optimizer_config"]["learning_rate"]
        assert rate in (pytest.approx(rates[-1]), pytest.approx(rates[-1] / 10))
    code, _, err = run(capsys, "train", "lenet5", *QUICK, "--weight-decay", "0.001", "--out", str(tmp_path / "b"))
    assert code == 2 and "--weight-decay applies to --optimizer sgd" in err


@pytest.mark.parametrize("command", ["info", "kernels", "summary", "train", "evaluate", "predict", "profile"])
def test_help_of_every_command(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0 and "usage: fastcnn" in capsys.readouterr().out
