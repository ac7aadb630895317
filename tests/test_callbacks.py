"""Callbacks driven by hand, the way fit() drives them (no model needed)."""
import io
import json
import sys

import pytest

from fastcnn import callbacks as cb


class Counter:
    """A lazy batch-log value that counts how often it is read (each read is a GPU sync)."""

    def __init__(self, value):
        self.value, self.reads = value, 0

    def __call__(self):
        self.reads += 1
        return self.value


def run_epochs(callback, epochs=2, steps=50, batch=20, val=True, model=None):
    callback.set_model(model)
    loss, acc = Counter(0.5), Counter(0.75)
    callback.on_train_begin({})
    for epoch in range(epochs):
        callback.on_epoch_begin(epoch, {})
        for b in range(steps):
            logs = cb.BatchLogs({"batch": b, "size": batch, "seen": (b + 1) * batch, "steps": steps},
                                {"loss": loss, "accuracy": acc})
            callback.on_batch_end(b, logs)
        end = {"loss": 0.5 - epoch / 10, "accuracy": 0.75 + epoch / 10}
        if val:
            end.update(val_loss=0.6, val_accuracy=0.7)
        callback.on_epoch_end(epoch, end)
    callback.on_train_end({})
    return loss, acc


def test_progress_bar_tqdm():
    pytest.importorskip("tqdm")
    out = io.StringIO()
    bar = cb.ProgressBar(epochs=2, file=out, min_interval=1000.0)
    loss, acc = run_epochs(bar, epochs=2, steps=50)
    text = out.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text
    assert "50/50" in text and "img/s" in text
    assert "loss=0.4000" in text and "acc=0.8500" in text and "val_acc=0.7000" in text
    # Lazy values read at the first and the last batch of each epoch only, not 50 times.
    assert loss.reads <= 4 and acc.reads <= 4


def test_progress_bar_reads_at_most_every_interval():
    pytest.importorskip("tqdm")
    bar = cb.ProgressBar(epochs=1, file=io.StringIO(), min_interval=0.0)
    loss, _ = run_epochs(bar, epochs=1, steps=30)
    assert loss.reads == 30  # with no interval, every batch; the throttle is the interval


def test_progress_plain_lines_verbose_2():
    out = io.StringIO()
    bar = cb.ProgressBar(epochs=3, verbose=2, file=out)
    loss, _ = run_epochs(bar, epochs=3, steps=10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("Epoch 1/3 - ") and "img/s" in lines[0]
    assert "loss: 0.5000 - accuracy: 0.7500 - val_loss: 0.6000 - val_accuracy: 0.7000" in lines[0]
    assert loss.reads == 0  # plain lines never read the lazy batch values


def test_progress_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = io.StringIO()
    bar = cb.ProgressBar(verbose=1, file=out)
    bar.set_params({"epochs": 2})
    run_epochs(bar, epochs=2, steps=5, val=False)
    lines = out.getvalue().splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    assert "val_loss" not in lines[0]


class FakeModel:
    def __init__(self):
        self.saved = []

    def save_checkpoint(self, path, epoch):
        self.saved.append((path, epoch))


def test_model_checkpoint_saves_completed_epochs(tmp_path):
    model = FakeModel()
    ck = cb.ModelCheckpoint(tmp_path / "ck.npz")
    run_epochs(ck, epochs=3, steps=2, model=model)
    assert model.saved == [(str(tmp_path / "ck.npz"), 1), (str(tmp_path / "ck.npz"), 2),
                           (str(tmp_path / "ck.npz"), 3)]
    assert ck.completed == 3
    model2 = FakeModel()
    run_epochs(cb.ModelCheckpoint(tmp_path / "x.npz", every=2), epochs=5, steps=1, model=model2)
    assert [e for _, e in model2.saved] == [2, 4]


def test_json_logger_writes_and_resumes(tmp_path):
    path = tmp_path / "h.json"
    log = cb.JSONLogger(path, meta={"model": "lenet5"})
    run_epochs(log, epochs=3, steps=1)
    data = json.loads(path.read_text())
    assert data["epoch"] == [1, 2, 3] and data["model"] == "lenet5"
    assert data["history"]["loss"] == pytest.approx([0.5, 0.4, 0.3])
    assert data["history"]["val_accuracy"] == [0.7, 0.7, 0.7]
    # Resuming after epoch 2: epoch 3 is dropped and the new epochs follow.
    log2 = cb.JSONLogger(path, resume_from=2)
    log2.set_model(None)
    log2.on_epoch_end(2, {"loss": 0.1, "accuracy": 0.9})
    data = json.loads(path.read_text())
    assert data["epoch"] == [1, 2, 3]
    assert data["history"]["loss"] == pytest.approx([0.5, 0.4, 0.1])
    assert data["history"]["val_loss"] == [0.6, 0.6]  # no validation on the new epoch
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]  # no temporary files left


def test_csv_logger(tmp_path):
    path = tmp_path / "log.csv"
    run_epochs(cb.CSVLogger(path), epochs=2, steps=1)
    run_epochs(cb.CSVLogger(path, append=True), epochs=1, steps=1)
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,loss,accuracy,val_loss,val_accuracy"
    assert lines[1].startswith("1,0.5,0.75,") and len(lines) == 4


def test_atomic_write_text(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    cb.atomic_write_text(p, "one")
    cb.atomic_write_text(p, "two")
    assert p.read_text() == "two" and [q.name for q in p.parent.iterdir()] == ["a.txt"]


def test_history_unchanged():
    h = cb.History()
    run_epochs(h, epochs=2, steps=1)
    assert h.epoch == [0, 1] and h.history["accuracy"] == pytest.approx([0.75, 0.85])


class PlateauModel:
    """What ReduceLROnPlateau and EarlyStopping touch: the optimizer's rate, weights, stop_training."""

    def __init__(self):
        import fastcnn
        self.optimizer = fastcnn.optimizers.SGD(0.01, momentum=0.9)
        self.weights, self.stop_training = [0], False

    def get_weights(self):
        return list(self.weights)

    def set_weights(self, weights):
        self.weights = list(weights)


def drive(callback, values, monitor="val_loss", model=None):
    """Epoch ends with ``monitor`` = each value in turn (model weights = [epoch]); stops like fit."""
    model = model or PlateauModel()
    callback.set_model(model)
    callback.on_train_begin({})
    logs_seen = []
    for epoch, value in enumerate(values):
        model.weights = [epoch]
        logs = {"loss": 1.0, monitor: value}
        callback.on_epoch_end(epoch, logs)
        logs_seen.append(logs)
        if model.stop_training:
            break
    return model, logs_seen


def test_reduce_lr_on_plateau_divides_by_ten_after_patience(capsys):
    callback = cb.ReduceLROnPlateau(patience=2, factor=0.1)
    model, logs = drive(callback, [1.0, 0.9, 0.95, 0.92, 0.91, 0.8, 0.85, 0.86])
    # 0.95 and 0.92 do not improve on 0.9: the rate drops at the end of epoch 4 (logged before it
    # drops); 0.91 does not improve either, 0.8 does, then 0.85 and 0.86 do not: a second drop.
    assert [round(log["learning_rate"], 6) for log in logs] == [0.01, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001]
    assert model.optimizer.learning_rate == pytest.approx(1e-4)
    assert "learning rate now 0.001" in capsys.readouterr().err


def test_reduce_lr_cooldown_min_lr_and_accuracy_mode():
    model, _ = drive(cb.ReduceLROnPlateau(patience=1, cooldown=2, min_lr=5e-4), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],)
    # drop after epoch 2 (to 0.001), cool 2 epochs, drop after epoch 5 (to the floor 5e-4)
    assert model.optimizer.learning_rate == pytest.approx(5e-4)
    model, _ = drive(cb.ReduceLROnPlateau(monitor="val_accuracy", patience=1), [0.5, 0.6, 0.7], "val_accuracy")
    assert model.optimizer.learning_rate == 0.01                       # higher accuracy is better
    with pytest.raises(ValueError, match="factor must be in"):
        cb.ReduceLROnPlateau(factor=1.0)


def test_early_stopping_with_and_without_restore(capsys):
    model, logs = drive(cb.EarlyStopping(patience=2), [1.0, 0.8, 0.9, 0.85, 0.7])
    assert len(logs) == 4 and model.stop_training and model.weights == [3]   # stopped after epoch 4
    callback = cb.EarlyStopping(patience=1, restore_best_weights=True)
    model, logs = drive(callback, [1.0, 0.8, 0.9, 0.7])
    assert len(logs) == 3 and model.weights == [1] and callback.best_epoch == 1
    assert "best was epoch 2 (its weights restored)" in capsys.readouterr().err
    model, logs = drive(cb.EarlyStopping(patience=0, monitor="val_accuracy", min_delta=0.05),
                        [0.5, 0.52, 0.9], "val_accuracy")
    assert len(logs) == 2                                               # 0.52 is not 0.05 better


def test_monitor_missing_from_logs_is_said_once(capsys):
    callback = cb.EarlyStopping()
    model, logs = drive(callback, [1.0, 0.5, 0.2], monitor="loss_typo")
    err = capsys.readouterr().err
    assert err.count("'val_loss' is not in the epoch logs") == 1 and not model.stop_training
