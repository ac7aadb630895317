"""A run is never lost and a resume is exact: TerminateOnNaN, whole-state checkpoints (mid-epoch
after Ctrl-C too), run folders (refused, locked), stale save temporaries, strict history.json,
a full disk named.  CPU reference backend."""
import errno
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastcnn
import fastcnn._paths
from fastcnn import callbacks as cb
from fastcnn import cli, saving
from fastcnn.models import lenet5

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--device", "cpu", "--limit", "300", "--batch-size", "100", "--verbose", "2"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def sample(n_train, n_val):
    data = np.load(fastcnn._paths.DATA_DIR / "mnist-10k.npz")
    order = np.random.default_rng(0).permutation(len(data["labels"]))   # the file is sorted by label
    x = data["images"][order][..., None].astype(np.float32) / 255.0
    y = np.eye(10, dtype=np.float32)[data["labels"][order]]
    return (x[:n_train], y[:n_train]), (x[-n_val:], y[-n_val:])


def compiled(seed=0, optimizer="adam"):
    fastcnn.manual_seed(seed)
    model = lenet5()
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    return model


def arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_same_arrays(a, b):
    a, b = arrays(a), arrays(b)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def history_of(folder):
    h = json.loads((Path(folder) / "history.json").read_text())
    return h["epoch"], h["history"]


# ---------------------------------------------------------------------------- TerminateOnNaN
def poison_after(monkeypatch, calls):
    """Make the weights NaN after the given number of training steps of this process."""
    original, count = fastcnn.Sequential.train_step, [0]

    def train_step(self, x, y):
        original(self, x, y)
        count[0] += 1
        if count[0] == calls:
            self.backend.to_host(self.training_state.params)[:] = np.nan   # the CPU reference: host memory itself
    monkeypatch.setattr(fastcnn.Sequential, "train_step", train_step)


def test_fit_stops_at_the_first_non_finite_loss(tmp_path, monkeypatch):
    (x, y), val = sample(400, 100)
    model = compiled()
    poison_after(monkeypatch, 6)                    # epoch 2 (4 batches an epoch), its 2nd batch
    saves = []

    class Saves(cb.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saves.append(epoch)
    history = model.fit(x, y, epochs=3, batch_size=100, validation_data=val, verbose=0,
                        callbacks=[Saves(), cb.TerminateOnNaN()])
    # the loss of batch 3 of epoch 2 is the first one computed from the NaN weights
    assert model.stop_reason == "the loss became nan in epoch 2, batch 3"
    assert history.epoch == [0] and saves == [0]     # the broken epoch never ended: nothing saved it
    assert all(math.isfinite(v[0]) for v in history.history.values())


def test_terminate_on_nan_reads_every_n_batches_on_the_gpu():
    """The GPU's rule, on the CPU: the running loss read every N batches (and at an epoch's
    last), a bad batch found through the running total, the window named."""
    reads = []
    stop = cb.TerminateOnNaN()
    stop.on_train_begin({"device": "cuda"})
    assert stop._every == cb.TerminateOnNaN.GPU_EVERY
    stop = cb.TerminateOnNaN(every=4)
    stop.on_train_begin({"device": "cuda"})
    stop.on_epoch_begin(0)
    total = 0.0
    for batch in range(10):
        total += math.nan if batch == 5 else 1.0
        logs = cb.BatchLogs({"batch": batch, "steps": 10}, {"loss": lambda t=total: reads.append(1) or t})
        if batch < 7:
            stop.on_batch_end(batch, logs)
        else:
            with pytest.raises(cb.Diverged, match=r"epoch 1, one of batches 5-8 \(the loss is read every 4\)"):
                stop.on_batch_end(batch, logs)
            break
    assert len(reads) == 2                            # after batches 4 and 8 only
    with pytest.raises(cb.Diverged, match="end of epoch 3"):   # the last update broke the weights
        stop.on_epoch_end(2, {"loss": 0.5, "val_loss": math.nan})


def test_train_diverging_keeps_the_last_good_run(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", run_dir, *QUICK)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    poison_after(monkeypatch, 1)
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "3", "--resume", "--out", run_dir, *QUICK)
    assert code == 1
    assert "the loss became nan in epoch 2, batch 2" in err and "after epoch 1" in err
    assert "Traceback" not in err and "RuntimeWarning" not in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before   # every file as it was
    monkeypatch.undo()
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "2", "--resume", "--out", run_dir, *QUICK)
    assert code == 0 and "1 epoch(s) done" in out


def test_train_diverging_from_the_start_saves_nothing(capsys, tmp_path):
    code, _, err = run(capsys, "train", "lenet5", "--limit", "1000", "--epochs", "2", "--lr", "1e4",
                       "--optimizer", "sgd", "--device", "cpu", "--verbose", "0", "--out", tmp_path / "x")
    assert code == 1
    assert "the loss became nan in epoch 1, batch" in err and "nothing was saved" in err
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == []


def test_history_json_is_strict(tmp_path):
    log = cb.JSONLogger(tmp_path / "h.json", meta={"final": math.inf})
    log.on_epoch_end(0, {"loss": 0.5})
    log.on_epoch_end(1, {"loss": math.nan})
    text = (tmp_path / "h.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["history"]["loss"] == [0.5, None] and data["final"] is None


@pytest.mark.parametrize("content, why", [
    ('{"epoch": [1, 2], "history": {"loss": [0.5', "truncated or not JSON"),
    ("\x00\x01garbage", "truncated or not JSON"),
    ('[1, 2]', "a JSON object"),
    ('{"epoch": [1, 2], "history": {"loss": [0.5]}}', "one list of 2 numbers"),
    ('{"epoch": ["1"], "history": {}}', "not a list of epoch numbers"),
])
def test_read_history_refuses_garbage(tmp_path, content, why):
    path = tmp_path / "history.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=why) as info:
        cb.read_history(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=why):
        cb.JSONLogger(path, resume_from=1)


# ---------------------------------------------------------------------------- exact resume
def test_api_resume_is_exact_with_callback_states(tmp_path):
    (x, y), val = sample(300, 100)

    def schedule():   # depend on the states carried over: never 'improving' after the first epoch
        return [cb.ReduceLROnPlateau(monitor="val_loss", min_delta=1e9, patience=2, verbose=0),
                cb.EarlyStopping(monitor="val_loss", min_delta=1e9, patience=4, restore_best_weights=True,
                                 verbose=0)]

    model = compiled()
    straight = model.fit(x, y, epochs=7, batch_size=64, validation_data=val, verbose=0, callbacks=schedule())
    assert straight.epoch == [0, 1, 2, 3, 4]          # stopped by EarlyStopping's counter
    assert model.optimizer.learning_rate < 1e-3        # reduced by ReduceLROnPlateau's counter

    first = compiled()
    first.fit(x, y, epochs=2, batch_size=64, validation_data=val, verbose=0,
              callbacks=schedule() + [cb.ModelCheckpoint(tmp_path / "ck.npz")])
    resumed = compiled(seed=5)                        # other initial weights, other generator state
    fastcnn.manual_seed(123)
    epoch = resumed.load_checkpoint(tmp_path / "ck.npz")
    assert epoch == 2
    history = resumed.fit(x, y, epochs=7, batch_size=64, validation_data=val, verbose=0,
                          callbacks=schedule(), initial_epoch=epoch)
    assert history.epoch == straight.epoch and history.history == straight.history
    for a, b in zip(model.get_weights(), resumed.get_weights()):
        assert np.array_equal(a, b)


def test_cli_resume_is_exact(capsys, tmp_path):
    options = [*QUICK, "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9",
               "--reduce-lr", "1"]
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "4", "--out", tmp_path / "straight", *options)
    assert code == 0, err
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "2", "--out", tmp_path / "resumed", *options)
    assert code == 0, err
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "4", "--resume", "--out", tmp_path / "resumed",
                         *options)
    assert code == 0, err
    assert history_of(tmp_path / "straight") == history_of(tmp_path / "resumed")
    for name in ("weights.npz", "checkpoint.npz"):
        assert_same_arrays(tmp_path / "straight" / name, tmp_path / "resumed" / name)


def test_ctrl_c_in_a_real_process_resumes_exactly(tmp_path):
    """SIGINT to `python -m fastcnn train` in the middle of epoch 2: it stops after the step in
    flight, checkpoints that step, exits 130; --resume then gives the uninterrupted run bit for bit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    options = ["--device", "cpu", "--limit", "400", "--batch-size", "8", "--epochs", "3"]
    cmd = [sys.executable, "-m", "fastcnn", "train", "lenet5", *options]
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut"), "--verbose", "1"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, marked = [], threading.Event()

    def read():
        while (chunk := proc.stdout.read(1)) != "":
            seen.append(chunk)
            if not marked.is_set() and "Epoch 2/3: " in "".join(seen[-400:]) and "|" in "".join(seen[-40:]):
                marked.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert marked.wait(120), "no progress bar of epoch 2 within 120 s:\n" + "".join(seen)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    reader.join(10)
    assert proc.returncode == 130, err
    assert "interrupted: saved" in err and "batch(es) of the next" in err and "Traceback" not in err
    state = json.loads(str(arrays(tmp_path / "cut" / "checkpoint.npz")["__state__"]))
    assert state["epoch"] == 1 and 0 < state["batch"] < 50   # inside epoch 2: 50 batches of 8
    assert not (tmp_path / "cut" / "train.lock").exists()

    done = subprocess.run(cmd + ["--out", str(tmp_path / "cut"), "--resume", "--verbose", "0"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"1 epoch(s) done and {state['batch']} batch(es) of the next" in done.stdout
    whole = subprocess.run(cmd + ["--out", str(tmp_path / "whole"), "--verbose", "0"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert history_of(tmp_path / "cut") == history_of(tmp_path / "whole")
    for name in ("weights.npz", "checkpoint.npz"):
        assert_same_arrays(tmp_path / "cut" / name, tmp_path / "whole" / name)


def test_interrupt_inside_a_step_keeps_the_last_checkpoint(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", run_dir, *QUICK)
    assert code == 0, err
    before = (run_dir / "checkpoint.npz").read_bytes()

    def cut(self, params, grads, step):   # as a second Ctrl-C would, in the middle of a step
        raise KeyboardInterrupt
    monkeypatch.setattr(fastcnn.optimizers.Adam, "apply", cut)
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "3", "--resume", "--out", run_dir, *QUICK)
    assert code == 130 and "no checkpoint taken" in err and "after epoch 1" in err
    assert (run_dir / "checkpoint.npz").read_bytes() == before


def test_checkpoint_of_another_optimizer_or_without_its_state_is_refused(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", run_dir, *QUICK)
    assert code == 0, err
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "2", "--resume", "--optimizer", "sgd",
                       "--out", run_dir, *QUICK)
    assert code == 2 and "saved training with the Adam optimizer" in err and "SGD" in err
    model = compiled(optimizer=fastcnn.optimizers.SGD(momentum=0.9))
    with pytest.raises(ValueError, match="Adam optimizer; this model is compiled with SGD"):
        model.load_checkpoint(run_dir / "checkpoint.npz")
    sgd = compiled(optimizer=fastcnn.optimizers.SGD(momentum=0.5))
    with pytest.raises(ValueError, match=r"SGD\(momentum=0.9\); this model's has momentum=0.5"):
        sgd.load_checkpoint((model.save_checkpoint(tmp_path / "m.npz", 1), tmp_path / "m.npz")[1])
    saved = arrays(run_dir / "checkpoint.npz")
    np.savez(tmp_path / "no_state.npz", **{k: v for k, v in saved.items() if k != "__optimizer__/v"})
    with pytest.raises(ValueError, match=r"lacks the Adam optimizer's state \(v\)"):
        compiled().load_checkpoint(tmp_path / "no_state.npz")
    np.savez(tmp_path / "old.npz", **{k: v for k, v in saved.items() if k != "__state__"})
    with pytest.raises(ValueError, match="older fastcnn"):
        compiled().load_checkpoint(tmp_path / "old.npz")
    refused = compiled(seed=3)
    weights = refused.get_weights()
    with pytest.raises(ValueError):
        refused.load_checkpoint(tmp_path / "no_state.npz")
    assert all(np.array_equal(a, b) for a, b in zip(weights, refused.get_weights()))  # left untouched


def test_checkpoint_of_another_precision_is_refused(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "1", "--precision", "tf32", "--out", run_dir, *QUICK)
    assert code == 0, err
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "2", "--resume", "--out", run_dir, *QUICK)
    assert code == 2 and "precision 'high'" in err and "--precision tf32" in err
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "2", "--resume", "--precision", "tf32",
                       "--out", run_dir, *QUICK)
    assert code == 0, err
    model = compiled()
    model.save_checkpoint(tmp_path / "fp32.npz", 1)
    with fastcnn.config.float32_matmul_precision("high"):
        with pytest.raises(ValueError, match="precision 'highest'; it is 'high' now"):
            model.load_checkpoint(tmp_path / "fp32.npz")


def test_resume_rewrites_a_garbage_history_from_the_checkpoint(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "2", "--out", run_dir, *QUICK)
    assert code == 0, err
    epochs, history = history_of(run_dir)
    (run_dir / "history.json").write_text('{"epoch": [1, 2], "hist')
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "2", "--resume", "--out", run_dir, *QUICK)
    assert code == 0 and "nothing to train" in out
    assert "history.json is not a readable history file" in err and "written anew" in err
    assert history_of(run_dir) == (epochs, history)


# ---------------------------------------------------------------------------- run folders
def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "2", "--out", run_dir, *QUICK)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", run_dir, *QUICK)
    assert code == 2 and "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1 and "device:" not in out
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    code, _, err = run(capsys, "train", "lenet5", "--resume", "--overwrite", "--out", run_dir, *QUICK)
    assert code == 2 and "give one of them" in err
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "1", "--overwrite", "--out", run_dir, *QUICK)
    assert code == 0, err
    assert "--overwrite: removed the run" in out and history_of(run_dir)[0] == [1]


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_epochs_must_be_positive(capsys, tmp_path, epochs):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "lenet5", "--epochs", epochs, "--out", str(tmp_path)])
    assert info.value.code == 2 and "--epochs" in capsys.readouterr().err


def test_out_among_the_class_folders_is_refused(capsys, tmp_path):
    for out in (tmp_path / "images" / "run", tmp_path / "images"):
        code, _, err = run(capsys, "train", "lenet5", "--data", "folder", "--data-dir", tmp_path / "images",
                           "--out", out)
        assert code == 2 and "among the class folders of --data-dir" in err, err
    assert not (tmp_path / "images").exists()     # refused before anything was made
    (tmp_path / "split" / "train").mkdir(parents=True)
    (tmp_path / "split" / "val").mkdir()
    code, _, err = run(capsys, "train", "lenet5", "--data", "folder", "--data-dir", tmp_path / "split",
                       "--out", tmp_path / "split" / "train" / "run")
    assert code == 2 and "among the class folders" in err, err
    # beside train/ and val/ a run folder is no class: that is not refused (the empty folder is, later)
    code, _, err = run(capsys, "train", "lenet5", "--data", "folder", "--data-dir", tmp_path / "split",
                       "--out", tmp_path / "split" / "run")
    assert "among the class folders" not in err


def test_unwritable_out_is_refused_before_training(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, out, err = run(capsys, "train", "lenet5", "--out", tmp_path / "file", *QUICK)
    assert code == 2 and "is a file, not a folder" in err and "device:" not in out
    code, out, err = run(capsys, "train", "lenet5", "--out", tmp_path / "file" / "run", *QUICK)
    assert code == 2 and "cannot write there" in err and "device:" not in out
    assert len(err.strip().splitlines()) == 1
    if os.geteuid() != 0:   # root writes into read-only folders
        (tmp_path / "ro").mkdir(mode=0o555)
        code, _, err = run(capsys, "train", "lenet5", "--out", tmp_path / "ro", *QUICK)
        assert code == 2 and "cannot write there" in err


def test_a_second_training_into_a_folder_is_refused(capsys, tmp_path):
    with saving.RunLock(tmp_path):
        code, out, err = run(capsys, "train", "lenet5", "--out", tmp_path, *QUICK)
    assert code == 2 and f"process {os.getpid()}" in err and "train.lock" in err and "device:" not in out


def test_a_lock_left_by_a_killed_process_is_taken_over(capsys, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fastcnn.saving import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(tmp_path)], env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", tmp_path, *QUICK)
    assert code == 2 and f"process {holder.pid}" in err
    holder.kill()
    holder.wait()
    assert (tmp_path / "train.lock").exists()
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", tmp_path, *QUICK)
    assert code == 0, err
    assert f"took over {tmp_path / 'train.lock'}, left by process {holder.pid}" in err
    assert not (tmp_path / "train.lock").exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_on_the_next_save(tmp_path, capsys):
    me = os.getpid()
    dead = tmp_path / f".tmp-{dead_pid()}-12345-abcdefgh.npz"
    recycled = tmp_path / f".tmp-{me}-{saving.process_start(me) + 1}-abcdefgh.npz"   # our pid, not our start
    mine = tmp_path / f".tmp-{me}-{saving.process_start(me)}-ijklmnop.npz"            # a save of ours, running
    old = tmp_path / ".tmp-qrstuvwx.npz"                                               # an older fastcnn's
    young_old = tmp_path / ".tmp-yzabcdef.npz"
    other = tmp_path / ".tmp-notours.txt"
    for p in (dead, recycled, mine, old, young_old, other):
        p.write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 2 * saving.OLD_TEMP_AGE,) * 2)
    lenet5().save_weights(tmp_path / "weights.npz")
    err = capsys.readouterr().err
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([mine.name, young_old.name, other.name, "weights.npz"])
    for p in (dead, recycled, old):
        assert f"removed {p}" in err and "interrupted save" in err


def test_process_alive_tells_a_recycled_pid():
    me = os.getpid()
    assert saving.process_alive(me) and saving.process_alive(me, saving.process_start(me))
    assert not saving.process_alive(dead_pid())
    if saving.process_start(me):
        assert not saving.process_alive(me, saving.process_start(me) + 1)


def test_a_full_disk_names_the_path(capsys, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(saving.WriteError) as info:
        lenet5().save_weights(tmp_path / "w.npz")
    assert str(info.value) == f"cannot write {tmp_path / 'w.npz'}: No space left on device"
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []              # no temporary left
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "1", "--out", tmp_path / "run", *QUICK)
    assert code == 1
    assert f"fastcnn train: error: cannot write {tmp_path / 'run' / 'checkpoint.npz'}: No space left" in err
    assert "Traceback" not in err


def test_resume_inside_an_epoch_of_a_streamed_folder_is_exact(tmp_path):
    """A batch source's order (ImageFolderBatches: its own generator) is part of the checkpoint."""
    Image = pytest.importorskip("PIL.Image")
    from fastcnn import datasets
    (x, y), _ = sample(60, 1)
    for i, (image, label) in enumerate(zip(x, y.argmax(1))):
        (tmp_path / "img" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[..., 0] * 255).astype(np.uint8), mode="L").save(tmp_path / "img" / str(label) / f"{i}.png")
    folder = datasets.image_folder(tmp_path / "img", validation=0.0)
    classes = len(folder.class_names)

    def source():
        return datasets.ImageFolderBatches(folder.train, 8, (28, 28), "grayscale", num_classes=classes, seed=4)

    def model():
        fastcnn.manual_seed(0)
        m = lenet5(num_classes=classes)
        m.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        return m

    class Stop(cb.Callback):   # Ctrl-C as fit sees it: between two steps of epoch 2
        def on_batch_end(self, batch, logs=None):
            if self.model.history.epoch == [0] and batch == 3:
                raise KeyboardInterrupt

    whole, data = model(), source()
    straight = whole.fit(data, epochs=3, verbose=0)
    data.close()
    cut, data = model(), source()
    with pytest.raises(KeyboardInterrupt):
        cut.fit(data, epochs=3, verbose=0, callbacks=[Stop()])
    cut.save_checkpoint(tmp_path / "ck.npz")
    data.close()
    resumed, data = model(), source()
    assert resumed.load_checkpoint(tmp_path / "ck.npz") == 1
    history = resumed.fit(data, epochs=3, verbose=0, initial_epoch=1)
    data.close()
    assert history.history == straight.history
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        assert np.array_equal(a, b)


def test_a_damaged_checkpoint_state_is_refused(tmp_path):
    model = compiled()
    model.save_checkpoint(tmp_path / "ck.npz", 1)
    saved = arrays(tmp_path / "ck.npz")
    for name, damage in [("garbage", {"__state__": np.array("{not json")}),
                         ("no step", {"__step__": None}),
                         ("keys", {"__state__": np.array('{"epoch": 1}')})]:
        damaged = {**saved, **damage}
        np.savez(tmp_path / f"{name}.npz", **{k: v for k, v in damaged.items() if v is not None})
        with pytest.raises(ValueError, match="not a readable checkpoint: its training state is damaged"):
            compiled().load_checkpoint(tmp_path / f"{name}.npz")


def test_resume_inside_an_epoch_needs_the_same_batches(capsys, tmp_path, monkeypatch):
    class Stop(cb.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt
    original = fastcnn.Sequential.fit
    monkeypatch.setattr(fastcnn.Sequential, "fit", lambda self, *a, callbacks=(), **k:
                        original(self, *a, callbacks=list(callbacks) + [Stop()], **k))
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "lenet5", "--epochs", "2", "--out", run_dir, *QUICK)
    assert code == 130 and "after epoch 0 and 2 batch(es) of the next" in err
    monkeypatch.undo()
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "2", "--resume", "--out", run_dir, *QUICK,
                         "--batch-size", "50")
    assert code == 2
    assert "--resume: the checkpoint was taken inside an epoch of 3 batches; this fit's epochs have 6" in err
    code, out, err = run(capsys, "train", "lenet5", "--epochs", "2", "--resume", "--out", run_dir, *QUICK)
    assert code == 0 and "0 epoch(s) done and 2 batch(es) of the next" in out
