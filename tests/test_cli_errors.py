"""Every user mistake gets one clear line, never a traceback: --help of every command, numbers
checked by the parser (and batch_size by the API), files the commands write, weights files,
the run's history.json, images predict cannot read, no GPU for check / info / kernels."""
import json
import os

import numpy as np
import pytest

from fastcnn import cli, datasets, models

QUICK = ["--device", "cpu", "--limit", "200", "--batch-size", "100", "--verbose", "0"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch LeNet-5 run on 200 digits of the bundled sample: weights.npz + history.json."""
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "lenet5", "--epochs", "1", "--out", str(out), *QUICK]) == 0
    return out


# ---------------------------------------------------------------- --help
@pytest.mark.parametrize("command", ["info", "kernels", "summary", "train", "evaluate", "predict",
                                     "profile", "bench", "check"])
def test_every_command_has_a_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0 and f"usage: fastcnn {command}" in out and not err
    if command in ("train", "evaluate"):
        assert "(80%/20%)" in out  # the split help's percent signs, printed as such


def test_an_unknown_command_or_a_missing_argument_is_one_line(capsys):
    for argv, why in ((["trian"], "invalid choice: 'trian'"), (["train"], "required: model"),
                      (["evaluate", "lenet5"], "required: --weights")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        line = one_error_line(capsys.readouterr().err)
        assert exit_.value.code == 2 and why in line and line.endswith("--help)")


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("argv, option, why", [
    (["train", "lenet5", "--lr", "-1"], "--lr", "must be > 0"),
    (["train", "lenet5", "--lr", "0"], "--lr", "must be > 0"),
    (["train", "lenet5", "--lr", "nan"], "--lr", "must be > 0"),
    (["train", "lenet5", "--lr", "fast"], "--lr", "expected a number"),
    (["train", "lenet5", "--batch-size", "-5"], "--batch-size", "must be >= 1"),
    (["train", "lenet5", "--batch-size", "0"], "--batch-size", "must be >= 1"),
    (["train", "lenet5", "--batch-size", "2.7"], "--batch-size", "expected an integer"),
    (["train", "lenet5", "--momentum", "1.5"], "--momentum", "in [0, 1)"),
    (["train", "lenet5", "--weight-decay", "-0.1"], "--weight-decay", "must be >= 0"),
    (["train", "lenet5", "--limit", "-1"], "--limit", "must be >= 1"),
    (["train", "lenet5", "--limit", "0"], "--limit", "must be >= 1"),
    (["train", "lenet5", "--seed", "-3"], "--seed", "must be >= 0"),
    (["train", "lenet5", "--split-seed", "-1"], "--split-seed", "must be >= 0"),
    (["train", "lenet5", "--reduce-lr", "-2"], "--reduce-lr", "must be >= 0"),
    (["train", "lenet5", "--early-stop", "-2"], "--early-stop", "must be >= 0"),
    (["evaluate", "lenet5", "--weights", "w.npz", "--batch-size", "-1"], "--batch-size", "must be >= 1"),
    (["evaluate", "lenet5", "--weights", "w.npz", "--limit", "0"], "--limit", "must be >= 1"),
    (["predict", "lenet5", "a.png", "--weights", "w.npz", "--top", "0"], "--top", "must be >= 1"),
    (["predict", "lenet5", "a.png", "--weights", "w.npz", "--batch-size", "0"], "--batch-size", "must be >= 1"),
    (["profile", "lenet5", "--steps", "0"], "--steps", "must be >= 1"),
    (["profile", "lenet5", "--warmup", "-1"], "--warmup", "must be >= 0"),
    (["bench", "--repeats", "0"], "--repeats", "must be >= 1"),
    (["bench", "--budget", "-5"], "--budget", "must be > 0"),
    (["check", "--total", "0"], "--total", "must be > 0"),
])
def test_bad_numbers_are_refused_by_the_parser(argv, option, why, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    _, err = capsys.readouterr()
    assert exit_.value.code == 2
    line = one_error_line(err)
    assert line.startswith(f"fastcnn {argv[0]}: error: argument {option}") and why in line


def test_options_of_another_optimizer_are_refused(capsys):
    for option in (["--momentum", "0.5"], ["--nesterov"], ["--weight-decay", "0.01"]):
        code, _, err = run(capsys, "train", "lenet5", "--optimizer", "adam", *option)
        assert code == 2 and f"{option[0]} applies to --optimizer sgd" in one_error_line(err)


def test_the_api_checks_batch_size_in_one_place():
    model = models.lenet5()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    x = np.zeros((4, 28, 28, 1), np.float32)
    y = datasets.to_categorical(np.arange(4) % 10, 10)
    for bad in (-5, 0, 2.7, "8", True):
        for call in (lambda b: model.evaluate(x, y, batch_size=b, verbose=0),
                     lambda b: model.predict(x, batch_size=b),
                     lambda b: model.fit(x, y, batch_size=b, verbose=0)):
            with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got"):
                call(bad)
        with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got"):
            datasets.ImageFolderBatches([("a.png", 0)], bad, (28, 28), "grayscale")  # the same rule
    assert len(model.evaluate(x, y, batch_size=np.int64(3), verbose=0)) == 2
    assert model.predict(x).shape == (4, 10)  # None: Keras's 32


def test_model_to_auto_falls_back_to_the_cpu_with_the_reason():
    from fastcnn.backend import availability
    model = models.lenet5().to("auto")
    why = availability()["cuda"]
    assert model.device == ("cpu" if why else "cuda")
    assert (model.auto_reason is None) == (why is None)
    with pytest.raises(ValueError, match="'auto'"):
        model.to("tpu")


# ---------------------------------------------------------------- files the commands write
def test_output_files_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for argv in (["bench", "--json", a_file / "b.json"], ["bench", "--markdown", a_file / "b.md"],
                 ["bench", "--plot", a_file / "sub" / "b.png"], ["profile", "lenet5", "--json", a_file / "p.json"],
                 ["bench", "--json", tmp_path], ["check", "--out", a_file]):
        with pytest.raises(SystemExit) as exit_:
            cli.main([str(a) for a in argv])
        _, err = capsys.readouterr()
        line = one_error_line(err)
        assert exit_.value.code == 2 and f"argument {argv[-2]}" in line, line
        assert "is a file, not a folder" in line or "is a folder" in line
    assert not list(a_file.parent.glob("tmp*"))  # the write probe leaves nothing behind
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SystemExit):
            cli.main(["bench", "--plot", str(locked / "b.png")])
        assert "is not writable" in one_error_line(capsys.readouterr().err)


def test_an_os_error_of_a_command_is_one_line(tmp_path, capsys, monkeypatch):
    import sys
    main_module = sys.modules["fastcnn.cli.main"]

    def fails(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.json"))
    monkeypatch.setattr(main_module, "cmd_info", fails)
    code, _, err = run(capsys, "info")
    assert code == 1 and one_error_line(err) == f"fastcnn info: error: {tmp_path / 'x.json'}: Permission denied"


# ---------------------------------------------------------------- weights files
def test_files_that_are_not_weights_are_named(tmp_path, capsys):
    np.save(tmp_path / "array.npy", np.zeros(3))
    np.savez(tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_text("not weights\n")
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    (tmp_path / "nothing.npz").write_bytes(b"")
    expected = {"array.npy": "is a single NumPy array (.npy), not an .npz weights file",
                "empty.npz": "holds no arrays",
                "text.npz": "is not an .npz weights file",
                "objects.npz": "holds pickled Python objects",
                "nothing.npz": "is not an .npz weights file (empty)",
                ".": "is a folder, not a weights file"}
    for name, why in expected.items():
        for argv in (["evaluate", "lenet5"], ["predict", "lenet5", tmp_path / "x.png"]):
            code, _, err = run(capsys, *argv, "--weights", tmp_path / name, "--device", "cpu")
            line = one_error_line(err)
            assert code == 2 and why in line and "allow_pickle" not in line, line
        with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
            models.lenet5().load_weights(tmp_path / name)


# ---------------------------------------------------------------- history.json beside the weights
def test_evaluate_takes_the_data_set_from_the_run_and_refuses_another(trained, tmp_path, capsys):
    code, out, err = run(capsys, "evaluate", "lenet5", "--weights", trained / "weights.npz", "--device", "cpu",
                         "--limit", "50")
    assert code == 0, err
    assert "as trained" in out and "--data mnist-sample" in out and "bundled 10,000-digit MNIST sample" in out
    for argv, why in ((["--data", "fashion-mnist"], "trained on mnist-sample"),
                      (["--data", "synthetic"], "trained on mnist-sample"),
                      (["--split-seed", "3"], "trained with --split-seed 0")):
        code, _, err = run(capsys, "evaluate", "lenet5", "--weights", trained / "weights.npz", *argv)
        assert code == 2 and why in one_error_line(err)
    code, out, err = run(capsys, "evaluate", "lenet5", "--weights", trained / "weights.npz", "--device", "cpu",
                         "--limit", "50", "--data", "mnist-sample", "--split-seed", "0")
    assert code == 0, err

    # weights of a Fashion-MNIST run: never scored on MNIST digits (refused before any data is read)
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    (fashion / "weights.npz").write_bytes((trained / "weights.npz").read_bytes())
    record = json.loads((trained / "history.json").read_text())
    (fashion / "history.json").write_text(json.dumps(dict(record, data="fashion-mnist")))
    for data in ("mnist", "mnist-sample"):
        code, _, err = run(capsys, "evaluate", "lenet5", "--weights", fashion / "weights.npz", "--data", data)
        line = one_error_line(err)
        assert code == 2 and "trained on fashion-mnist" in line and "leave --data out" in line
    (fashion / "history.json").write_text(json.dumps(dict(record, model="alexnet")))
    code, _, err = run(capsys, "evaluate", "lenet5", "--weights", fashion / "weights.npz")
    assert code == 2 and "trained for alexnet" in one_error_line(err)


def test_evaluate_uses_the_synthetic_seed_of_the_run(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert cli.main(["train", "lenet5", "--data", "synthetic", "--seed", "5", "--epochs", "1",
                     "--out", str(out), *QUICK]) == 0
    accuracy = json.loads((out / "history.json").read_text())["validation_accuracy"]
    code, text, err = run(capsys, "evaluate", "lenet5", "--weights", out / "weights.npz", "--device", "cpu",
                          "--limit", "200")
    assert code == 0, err
    assert "--data synthetic --seed 5" in text and f"accuracy: {accuracy:.4f}" in text


@pytest.mark.parametrize("content, why", [
    ('{"model": "lenet5", "data": "mnist-sa', "is not readable JSON"),
    ("[1, 2]", "holds no record of a run"),
    ('{"model": "lenet5", "data": "imagenet", "classes": 5, "augment": "yes"}', "malformed augment, data, classes"),
    (b"\xff\xfe\x00garbage", "is not readable JSON"),
])
def test_a_broken_history_json_is_said_and_not_used(trained, tmp_path, capsys, content, why):
    run_dir = tmp_path / "broken"
    run_dir.mkdir()
    (run_dir / "weights.npz").write_bytes((trained / "weights.npz").read_bytes())
    history = run_dir / "history.json"
    history.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = run(capsys, "evaluate", "lenet5", "--weights", run_dir / "weights.npz", "--device", "cpu",
                         "--limit", "50")
    assert code == 0 and "Traceback" not in err
    assert f"warning: {history}" in err and why in err
    assert "validation accuracy" in out                      # the defaults: the sample, as train's
    image = tmp_path / "digit.png"
    datasets_image(image)
    code, out, err = run(capsys, "predict", "lenet5", image, "--weights", run_dir / "weights.npz", "--device", "cpu")
    assert code == 0 and why in err and f"{image}: " in out


def datasets_image(path):
    Image = pytest.importorskip("PIL.Image")
    (x, _), _ = datasets.load_mnist_sample()
    Image.fromarray(x[0], mode="L").save(path)


# ---------------------------------------------------------------- predict goes on past a bad file
def test_predict_reports_an_undecodable_file_and_goes_on(trained, tmp_path, capsys):
    good = [tmp_path / "a.png", tmp_path / "c.png"]
    for path in good:
        datasets_image(path)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    code, out, err = run(capsys, "predict", "lenet5", good[0], bad, good[1], tmp_path / "absent.png",
                         "--weights", trained / "weights.npz", "--device", "cpu")
    assert code == 1
    printed = [line.split(":")[0] for line in out.splitlines() if line.startswith(str(tmp_path))]
    assert printed == [str(good[0]), str(good[1])]
    assert f"{bad}: cannot decode this image" in err and "absent.png: cannot decode" in err
    assert "2 of 4 image(s) could not be read" in err and "Traceback" not in err


# ---------------------------------------------------------------- no GPU
def test_no_driver_is_said_as_such(monkeypatch):
    from fastcnn.backend import cuda
    if cuda.xp is None:
        pytest.skip("CuPy is not installed")

    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")
    monkeypatch.setattr(cuda.xp.cuda.runtime, "getDeviceCount", no_driver)
    monkeypatch.setattr(cuda, "_driver_present", lambda: False)
    assert cuda.unavailable_reason().startswith("no NVIDIA driver / no GPU")
    monkeypatch.setattr(cuda, "_driver_present", lambda: True)  # a driver that fails: its own words
    assert "insufficient" in cuda.unavailable_reason()


def test_info_says_why_there_is_no_gpu(capsys):
    from fastcnn.backend import availability
    why = availability()["cuda"]
    if why is None:
        pytest.skip("a usable GPU is present")
    code, out, _ = run(capsys, "info")
    assert code == 0 and f"cuda       unavailable: {why}" in out
    if "no NVIDIA driver" in why:
        assert "insufficient" not in out
