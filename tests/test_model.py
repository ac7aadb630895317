"""Sequential, the two classic models, fit/evaluate/predict and weights I/O on the CPU reference."""
import tracemalloc

import numpy as np
import pytest

import fastcnn
import fastcnn._paths
import fastcnn.graphs
from fastcnn import layers as L
from fastcnn.backend import reference as ref
from fastcnn.models import alexnet, lenet5

def sample(n_train, n_val, seed=0):
    data = np.load(fastcnn._paths.DATA_DIR / "mnist-10k.npz")
    order = np.random.default_rng(seed).permutation(len(data["labels"]))
    x = data["images"][order][..., None].astype(np.float32) / 255.0
    y = np.eye(10, dtype=np.float32)[data["labels"][order]]
    return (x[:n_train], y[:n_train]), (x[-n_val:], y[-n_val:])


def compiled_lenet(seed=0, **compile_args):
    fastcnn.manual_seed(seed)
    model = lenet5()
    model.compile(**{"loss": "categorical_crossentropy", "optimizer": "adam", "metrics": ["accuracy"],
                     **compile_args})
    return model


def test_lenet5_parameters_and_shapes():
    model = lenet5()
    counts = [layer.count_params() for layer in model.layers if layer.count_params()]
    assert counts == [156, 2416, 48120, 10164, 850]
    assert model.count_params() == 61706
    assert [layer.output_shape for layer in model.layers] == [
        (None, 28, 28, 6), (None, 14, 14, 6), (None, 10, 10, 16), (None, 5, 5, 16), (None, 400), (None, 120),
        (None, 84), (None, 10)]
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)


@pytest.mark.parametrize("variant, total", [("single", 62_378_344), ("original", 60_965_224)])
def test_alexnet_parameters_and_shapes(variant, total):
    model = alexnet(variant=variant)
    assert model.count_params() == total
    spatial = [l.output_shape[1] for l in model.layers if isinstance(l, (L.Conv2D, L.MaxPool2D))]
    assert spatial == [55, 27, 27, 13, 13, 13, 13, 6]
    assert model.layers[-1].output_shape == (None, 1000)
    assert (variant == "original") == any(isinstance(l, L.LRN) for l in model.layers)


def test_summary_is_keras_table():
    lines = []
    lenet5().summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert lines[0] == 'Model: "lenet5"'
    assert "Layer (type)" in text and "Output Shape" in text and "Param #" in text
    assert "conv2d (Conv2D)" in text and "(None, 28, 28, 6)" in text
    assert "max_pooling2d_1 (MaxPooling2D)" in text and "(None, 5, 5, 16)" in text
    assert "dense (Dense)" in text and "48,120" in text
    assert "Total params: 61,706" in text and "Trainable params: 61,706" in text
    assert "Non-trainable params: 0" in text


def test_fit_on_real_sample_learns():
    (x, y), (xv, yv) = sample(1500, 300)
    model = compiled_lenet()
    history = model.fit(x, y, epochs=3, batch_size=50, validation_data=(xv, yv), verbose=0)
    h = history.history
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(h["loss"]) == 3
    assert h["loss"][-1] < 0.6 * h["loss"][0]
    assert h["val_accuracy"][-1] > 0.85  # chance is 0.1
    loss, acc = model.evaluate(xv, yv, verbose=0)
    assert loss == pytest.approx(h["val_loss"][-1], rel=1e-5) and acc == pytest.approx(h["val_accuracy"][-1])
    probs = model.predict(xv[:7])
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(probs.argmax(1) == yv[:7].argmax(1)) >= 4 / 7


def test_sparse_labels_and_sgd_train_the_same_api():
    (x, y), _ = sample(600, 10)
    fastcnn.manual_seed(0)
    model = lenet5()
    model.compile(loss="sparse_categorical_crossentropy",
                  optimizer=fastcnn.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
                  metrics=["accuracy"])
    h = model.fit(x, y.argmax(1), epochs=2, batch_size=64, verbose=0).history
    assert h["loss"][-1] < h["loss"][0]


def test_same_seed_same_training():
    (x, y), _ = sample(400, 10)
    runs = []
    for _ in range(2):
        model = compiled_lenet(seed=3)
        model.fit(x, y, epochs=1, batch_size=50, verbose=0)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


class _FakeGraphStep:
    """A captured step's interface (static inputs + replay) over eager steps on the CPU."""
    def __init__(self, model, x_shape, y_shape, y_dtype):
        self.model, self.replays = model, 0
        self.inputs = (np.full(x_shape, np.nan, np.float32), np.zeros(y_shape, y_dtype))

    def replay(self):
        self.replays += 1
        self.model.train_step(*self.inputs)


def _capture_fakes(monkeypatch, fake):
    """Every graph "capture" of model.make_graph_step makes a ``fake`` instead; returns them."""
    made = []

    def capture(*args):
        made.append(fake(*args))
        return made[-1]

    monkeypatch.setattr(fastcnn.graphs, "GraphTrainStep", capture)
    return made


def test_a_new_learning_rate_is_captured_anew(monkeypatch):
    """The graph holds the optimizer's scalars: a changed learning rate must not replay the old one."""
    (x, y), _ = sample(100, 10)
    model = compiled_lenet(seed=1, optimizer=fastcnn.optimizers.SGD(0.05, momentum=0.9))
    steps = _capture_fakes(monkeypatch, _FakeGraphStep)
    model.device = "cuda"
    model.fit(x, y, epochs=2, batch_size=50, verbose=0)
    model.fit(x, y, epochs=1, batch_size=50, verbose=0)
    assert len(steps) == 1 and steps[0].replays == 6        # one capture while nothing changes
    model.optimizer.learning_rate = 0.005
    model.fit(x, y, epochs=1, batch_size=50, verbose=0)
    assert len(steps) == 2 and steps[1].replays == 2
    assert len(model._graph_steps) == 1                      # the old graph was let go


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_fit_gathers_batches_into_the_graph_inputs_on_the_device(monkeypatch, loss):
    """The GPU path of fit (data set on the device, each shuffled batch picked by gather_rows
    straight into the captured step's inputs, then one replay), run on the CPU reference with
    a stand-in for the CUDA graph: the same weights as plain eager fit."""
    (x, y), _ = sample(230, 10)     # 4 full batches of 50 and a last one of 30 (eager)
    if loss.startswith("sparse"):
        y = y.argmax(axis=1)
    plain = compiled_lenet(seed=5, loss=loss)
    plain.fit(x, y, epochs=2, batch_size=50, verbose=0)
    model = compiled_lenet(seed=5, loss=loss)
    steps = _capture_fakes(monkeypatch, _FakeGraphStep)
    gathers = []
    real_gather = fastcnn.backend.reference.gather_rows
    monkeypatch.setattr(fastcnn.backend.reference, "gather_rows",
                        lambda dst, src, rows: gathers.append(len(rows)) or real_gather(dst, src, rows))
    model.device = "cuda"           # what fit asks: the model is on the GPU (its backend stays the reference)
    model.fit(x, y, epochs=2, batch_size=50, verbose=0)
    assert steps and steps[0].replays == 8           # 2 epochs x 4 full batches replayed
    assert gathers.count(50) == 16 and gathers.count(30) == 4   # x and y of every batch, the last ones eager
    for a, b in zip(plain.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_keeps_a_data_set_too_large_for_the_gpu_on_the_host(monkeypatch):
    """More than half the GPU's free memory: each batch is gathered on the host and copied into
    the captured step (its __call__), and the weights are those of plain eager fit."""
    (x, y), _ = sample(120, 10)
    plain = compiled_lenet(seed=5)
    plain.fit(x, y, epochs=1, batch_size=40, verbose=0)
    model = compiled_lenet(seed=5)

    class HostFedStep(_FakeGraphStep):
        def __call__(self, xb, yb):
            self.inputs[0][...], self.inputs[1][...] = xb, yb
            self.replay()

    steps = _capture_fakes(monkeypatch, HostFedStep)
    monkeypatch.setattr(fastcnn.batches, "_device_free_bytes", lambda backend: 2 * x.nbytes)  # just too small
    monkeypatch.setattr(fastcnn.backend.reference, "gather_rows", None)   # must not be called
    model.device = "cuda"
    model.fit(x, y, epochs=1, batch_size=40, verbose=0)
    assert steps[0].replays == 3
    for a, b in zip(plain.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_copies_only_batches_not_the_data_set():
    # The traced peak of one epoch must not grow with the data set: 20 batches peak
    # like 2 batches (a per-epoch copy of 4000 images would add 12.5 MB).
    rng = np.random.default_rng(0)
    x = rng.random((4000, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 4000)]
    model = compiled_lenet()
    peaks = []
    for n in (400, 4000, 400):
        tracemalloc.start()
        model.fit(x[:n], y[:n], epochs=1, batch_size=200, verbose=0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[2] + x.nbytes / 4, f"peaks {peaks} for a {x.nbytes / 1e6:.1f} MB data set"


def test_weights_round_trip_and_checkpoint(tmp_path):
    (x, y), _ = sample(300, 10)
    model = compiled_lenet()
    model.fit(x, y, epochs=1, batch_size=100, verbose=0)
    model.save_weights(tmp_path / "w.npz")
    other = compiled_lenet(seed=9)
    other.load_weights(tmp_path / "w.npz")
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model.predict(x[:5]), other.predict(x[:5]), rtol=1e-6)

    model.optimizer.learning_rate = 4e-4          # as a schedule leaves it: a resumed run goes on with it
    model.save_checkpoint(tmp_path / "ckpt.npz", epoch=1)
    resumed = compiled_lenet(seed=9)
    assert resumed.load_checkpoint(tmp_path / "ckpt.npz") == 1
    assert resumed.optimizer.learning_rate == pytest.approx(4e-4)
    model.fit(x, y, epochs=1, batch_size=100, verbose=0, shuffle=False)
    resumed.fit(x, y, epochs=1, batch_size=100, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # same Adam moments and step count
    assert not list(tmp_path.glob(".tmp-*")), "atomic writes leave no temporary files"


def test_weights_file_errors(tmp_path):
    model = lenet5()
    with pytest.raises(FileNotFoundError, match="not found"):
        model.load_weights(tmp_path / "absent.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        model.load_weights(tmp_path / "corrupt.npz")
    weights = dict(zip(model.weight_names(), model.get_weights()))
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in weights.items() if k != "dense_1/bias"})
    with pytest.raises(ValueError, match="missing weights.*dense_1/bias"):
        model.load_weights(tmp_path / "missing.npz")
    weights["conv2d/kernel"] = np.zeros((3, 3, 1, 6), np.float32)
    np.savez(tmp_path / "shape.npz", **weights)
    with pytest.raises(ValueError, match="conv2d/kernel.*shape"):
        model.load_weights(tmp_path / "shape.npz")


def test_bad_inputs_to_the_model():
    model = compiled_lenet()
    x = np.zeros((4, 28, 28, 1), np.float32)
    y = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="NCHW"):
        model.fit(np.zeros((4, 1, 28, 28), np.float32), y, verbose=0)
    with pytest.raises(ValueError, match="must have shape"):
        model.predict(np.zeros((4, 28, 28), np.float32))
    with pytest.raises(ValueError, match="expects"):
        model.predict(np.zeros((4, 28, 28, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        model.predict(np.zeros((0, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="one-hot labels have shape"):
        model.fit(x, np.eye(12, dtype=np.float32)[[0, 1, 2, 3]], verbose=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    with pytest.raises(ValueError, match="label 10 is out of range"):
        model.fit(x, np.array([0, 1, 2, 10]), verbose=0)
    with pytest.raises(ValueError, match="got 3 labels"):
        model.fit(x, np.array([0, 1, 2]), verbose=0)
    with pytest.raises(ValueError, match="unknown loss"):
        model.compile(loss="mse", optimizer="adam")
    with pytest.raises(ValueError, match="unknown optimizer"):
        model.compile(loss="categorical_crossentropy", optimizer="adagrad")
    with pytest.raises(ValueError, match="graph=True needs the model on the GPU"):
        model.fit(x, np.array([0, 1, 2, 3]), graph=True, verbose=0)
    with pytest.raises(RuntimeError, match="compile"):
        lenet5().fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="device"):
        model.to("tpu")


def test_cuda_device_without_gpu_says_why():
    from tests.conftest import HAS_GPU
    if HAS_GPU:
        pytest.skip("a GPU is present")
    with pytest.raises(fastcnn.backend.BackendUnavailable, match="unavailable"):
        lenet5().to("cuda")


def test_model_call_is_differentiable():
    model = lenet5()
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    out = model(x)
    assert out.shape == (2, 10)
    (out * out).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_random_crop_and_flip_layers():
    from fastcnn.layers import RandomCrop, RandomFlip
    fastcnn.manual_seed(0)
    x = np.random.default_rng(0).random((8, 12, 10, 3), dtype=np.float32)
    model = fastcnn.Sequential([RandomCrop(8, 6, input_shape=(12, 10, 3)), RandomFlip("horizontal"),
                                fastcnn.layers.Flatten(), fastcnn.layers.Dense(4, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer=fastcnn.optimizers.SGD(0.1))
    assert model.layers[0].output_shape == (None, 8, 6, 3) and model.layers[1].output_shape == (None, 8, 6, 3)
    crop, flip = model.layers[:2]
    centre = crop(x).data
    np.testing.assert_array_equal(centre, x[:, 2:10, 2:8])                       # inference: the centre
    assert flip(centre).data is centre                                          # inference: unchanged
    step = np.array([3], np.int32)
    crop.step = flip.step = step
    cropped = crop(x, training=True).data
    top, left, _ = ref.crop_windows(8, (12, 10), (8, 6), True, False, crop.seed, step)
    for n in range(8):
        np.testing.assert_array_equal(cropped[n], x[n, top[n]:top[n] + 8, left[n]:left[n] + 6])
    flipped = flip(cropped, training=True).data
    _, _, mirrored = ref.crop_windows(8, (8, 6), (8, 6), True, True, flip.seed, step)
    assert 0 < mirrored.sum() < 8
    for n in range(8):
        np.testing.assert_array_equal(flipped[n], cropped[n, :, ::-1] if mirrored[n] else cropped[n])
    # fit draws new windows every step (the model's step counter) and trains through them
    y = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 2]
    before = model.get_weights()[0].copy()
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    state = model.training_state
    assert state.read_step() == 4 and crop.step is state.step
    assert not np.allclose(model.get_weights()[0], before)
    assert model.predict(x).shape == (8, 4)
    with pytest.raises(ValueError, match=r"RandomCrop\(8, 6\) needs images of at least that size"):
        fastcnn.Sequential([RandomCrop(8, 6, input_shape=(7, 10, 3))])
    with pytest.raises(ValueError, match="only 'horizontal'"):
        RandomFlip("vertical")


def test_alexnet_augment_takes_256_and_shares_weights_with_the_plain_net():
    augmented = fastcnn.models.alexnet(num_classes=10, augment=True)
    plain = fastcnn.models.alexnet(num_classes=10)
    assert augmented.input_shape == (None, 256, 256, 3) and plain.input_shape == (None, 227, 227, 3)
    assert [type(l).__name__ for l in augmented.layers[:4]] == ["RandomCrop", "RandomFlip", "PCAColorNoise",
                                                                 "Conv2D"]
    assert augmented.weight_names() == plain.weight_names()
    assert augmented.count_params() == plain.count_params() == 58_322_314


def test_callbacks_change_the_rate_between_epochs_and_stop_early(monkeypatch):
    """ReduceLROnPlateau's new rate reaches the next epoch's captured step (a new capture);
    EarlyStopping ends fit; SGD's weight decay is part of the step."""
    (x, y), (vx, vy) = sample(100, 40)
    model = compiled_lenet(seed=2, optimizer=fastcnn.optimizers.SGD(0.05, momentum=0.9, weight_decay=5e-4))
    steps = _capture_fakes(monkeypatch, _FakeGraphStep)
    model.device = "cuda"
    reduce = fastcnn.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=10.0,
                                                 verbose=0)     # never "improves": halves every epoch
    stop = fastcnn.callbacks.EarlyStopping(monitor="val_loss", patience=100, min_delta=10.0, verbose=0)
    history = model.fit(x, y, epochs=4, batch_size=50, validation_data=(vx, vy), verbose=0,
                        callbacks=[reduce, stop])
    # the first epoch sets the best value; the next three each end with a halving
    assert model.optimizer.learning_rate == pytest.approx(0.05 / 8)
    assert [s.replays for s in steps] == [4, 2, 2]         # one capture per rate in use
    assert len(history.history["loss"]) == 4
    early = fastcnn.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0, verbose=0)
    history = model.fit(x, y, epochs=10, batch_size=50, validation_data=(vx, vy), verbose=0, callbacks=[early])
    assert len(history.history["loss"]) == 2 and early.stopped_epoch == 1


def test_sgd_weight_decay_shrinks_the_weights():
    (x, y), _ = sample(100, 10)
    norms = []
    for wd in (0.0, 0.05):
        model = compiled_lenet(seed=4, optimizer=fastcnn.optimizers.SGD(0.01, weight_decay=wd))
        model.fit(x, y, epochs=2, batch_size=50, verbose=0)
        norms.append(sum(float(np.sum(w * w)) for w in model.get_weights()))
    assert norms[1] < norms[0]
    assert "weight_decay=0.05" in repr(fastcnn.optimizers.SGD(0.01, weight_decay=0.05))
    with pytest.raises(ValueError, match="weight_decay >= 0"):
        fastcnn.optimizers.SGD(0.01, weight_decay=-1)


def test_validation_split_holds_out_the_last_samples_as_keras():
    (x, y), _ = sample(100, 10)
    split = compiled_lenet(seed=6)
    h_split = split.fit(x, y, epochs=1, batch_size=40, validation_split=0.2, verbose=0, shuffle=False).history
    explicit = compiled_lenet(seed=6)
    h_explicit = explicit.fit(x[:80], y[:80], epochs=1, batch_size=40, validation_data=(x[80:], y[80:]),
                              verbose=0, shuffle=False).history
    assert h_split == h_explicit
    with pytest.raises(ValueError, match="validation_split must be in"):
        split.fit(x, y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="leaves no training samples"):
        split.fit(x[:1], y[:1], validation_split=0.1, verbose=0)


class ArraySource:
    """A user's batch source (Keras's Sequence protocol) over arrays, in order."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size, self.epochs_ended = x, y, batch_size, 0

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i):
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[rows], self.y[rows]

    def on_epoch_end(self):
        self.epochs_ended += 1


def test_fit_on_a_batch_source_feeds_the_captured_step_from_the_host(monkeypatch):
    """Full batches of a source go through the captured step's copy-in (host batches), the last
    partial one eagerly; the same weights as fit on the arrays in the same order."""
    (x, y), _ = sample(130, 10)
    plain = compiled_lenet(seed=8)
    plain.fit(x, y, epochs=2, batch_size=50, shuffle=False, verbose=0)

    class HostFedStep(_FakeGraphStep):
        calls = 0

        def __call__(self, xb, yb):
            HostFedStep.calls += 1
            self.inputs[0][...], self.inputs[1][...] = xb, yb
            self.replay()

    model = compiled_lenet(seed=8)
    steps = _capture_fakes(monkeypatch, HostFedStep)
    model.device = "cuda"
    source = ArraySource(x, y, 50)
    history = model.fit(source, epochs=2, verbose=0)
    assert HostFedStep.calls == 4 and steps[0].replays == 4 and source.epochs_ended == 2
    assert len(history.history["loss"]) == 2
    for a, b in zip(plain.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="batch 0's x has shape"):
        model.fit(ArraySource(x[:, :20], y, 50), verbose=0)
    with pytest.raises(ValueError, match="the batch source is empty"):
        model.fit(ArraySource(x[:0], y[:0], 50), verbose=0)


def test_pca_color_noise_layer():
    from fastcnn.layers import PCAColorNoise
    x = np.random.default_rng(0).random((6, 4, 5, 3), dtype=np.float32)
    layer = PCAColorNoise(0.1, seed=3)
    layer.build((4, 5, 3))
    assert layer(x).data is x                                   # inference: unchanged
    layer.step = np.array([2], np.int32)
    y = layer(x, training=True).data
    offsets = ref.pca_noise_offsets(6, layer.basis, 3, layer.step)
    np.testing.assert_array_equal(y, x + offsets[:, None, None, :])
    t = fastcnn.Tensor(x, requires_grad=True)                  # the gradient passes through
    layer(t, training=True).sum().backward()
    np.testing.assert_array_equal(t.grad, np.ones_like(x))
    from fastcnn import datasets
    values, vectors = datasets.rgb_pca(x)
    custom = PCAColorNoise(0.2, values, vectors)
    np.testing.assert_allclose(custom.basis, 0.2 * vectors * values[None, :])
    with pytest.raises(ValueError, match="expects RGB images"):
        fastcnn.Sequential([PCAColorNoise(input_shape=(4, 5, 1))])
    with pytest.raises(ValueError, match="needs 3 eigenvalues"):
        PCAColorNoise(0.1, [1.0, 2.0], np.eye(3))
