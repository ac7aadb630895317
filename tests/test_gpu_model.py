"""Whole models on the GPU against the CPU reference; the captured training step against eager."""
import numpy as np
import pytest

import fastcnn
import fastcnn._paths
from fastcnn.models import lenet5

pytestmark = pytest.mark.gpu


def sample(n):
    data = np.load(fastcnn._paths.DATA_DIR / "mnist-10k.npz")
    order = np.random.default_rng(0).permutation(len(data["labels"]))[:n]
    x = data["images"][order][..., None].astype(np.float32) / 255.0
    return x, np.eye(10, dtype=np.float32)[data["labels"][order]]


def lenet_on(device, seed=0, weights=None, backend=None):
    fastcnn.manual_seed(seed)
    model = lenet5()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    if weights is not None:
        model.set_weights(weights)
    return model.to(device, backend)


def test_lenet5_50_steps_follow_the_cpu_reference():
    x, y = sample(50 * 32)
    cpu = lenet_on("cpu")
    gpu = lenet_on("cuda", weights=cpu.get_weights())
    h_cpu = cpu.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, graph=False).history
    h_gpu = gpu.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, graph=False).history
    assert h_gpu["loss"][0] == pytest.approx(h_cpu["loss"][0], rel=2e-3)
    assert abs(h_gpu["accuracy"][0] - h_cpu["accuracy"][0]) <= 0.01
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        assert np.linalg.norm(a - b) <= 2e-2 * np.linalg.norm(a)


def test_graph_replay_equals_eager_steps():
    x, y = sample(10 * 64 + 17)  # ten full batches and a partial last one (eager)
    eager = lenet_on("cuda")
    graphed = lenet_on("cuda", weights=eager.get_weights())
    h_eager = eager.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0, graph=False).history
    h_graph = graphed.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0, graph=True).history
    for a, b in zip(eager.get_weights(), graphed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(h_eager["loss"], h_graph["loss"], rtol=1e-4)


def test_a_changed_learning_rate_is_replayed_by_the_graph():
    x, y = sample(4 * 64)
    eager = lenet_on("cuda")
    graphed = lenet_on("cuda", weights=eager.get_weights())
    for lr in (1e-3, 1e-4):
        for model, graph in ((eager, False), (graphed, True)):
            model.optimizer.learning_rate = lr
            model.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0, graph=graph)
    for a, b in zip(eager.get_weights(), graphed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_graph_training_learns_and_predict_evaluate_run_on_gpu():
    x, y = sample(3000)
    model = lenet_on("cuda")
    h = model.fit(x[:2500], y[:2500], epochs=3, batch_size=100, validation_data=(x[2500:], y[2500:]),
                  verbose=0).history
    assert h["val_accuracy"][-1] > 0.85
    probs = model.predict(x[2500:2510])
    assert probs.shape == (10, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_model_moves_between_devices_with_optimizer_state():
    x, y = sample(256)
    model = lenet_on("cuda")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    weights = model.get_weights()
    model.to("cpu")
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)  # keeps training from the moved Adam state


def test_numba_backend_trains_lenet5():
    x, y = sample(512)
    cpu = lenet_on("cpu")
    numba = lenet_on("cuda", weights=cpu.get_weights(), backend="numba")
    h_cpu = cpu.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0).history
    h_nb = numba.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0, graph=False).history
    assert h_nb["loss"][0] == pytest.approx(h_cpu["loss"][0], rel=2e-3)


@pytest.mark.parametrize("variant", ["single", "original"])   # original: two towers (groups), LRN
def test_alexnet_step_on_gpu_matches_reference_loss(variant):
    fastcnn.manual_seed(0)
    x = np.random.default_rng(0).random((2, 227, 227, 3), dtype=np.float32)
    y = np.eye(1000, dtype=np.float32)[[3, 7]]
    cpu = fastcnn.models.alexnet(variant=variant)
    cpu.compile(loss="categorical_crossentropy", optimizer=fastcnn.optimizers.SGD(0.01, momentum=0.9))
    gpu = fastcnn.models.alexnet(variant=variant)
    gpu.compile(loss="categorical_crossentropy", optimizer=fastcnn.optimizers.SGD(0.01, momentum=0.9))
    gpu.set_weights(cpu.get_weights())
    gpu.to("cuda")
    # dropout masks are a function of (seed, step, index): same seeds on both sides
    for a, b in zip(cpu.layers, gpu.layers):
        if hasattr(a, "seed"):
            b.seed = a.seed
    l_cpu = cpu.evaluate(x, y, verbose=0)
    l_gpu = gpu.evaluate(x, y, verbose=0)
    assert l_gpu == pytest.approx(l_cpu, rel=1e-3)
    h_cpu = cpu.fit(x, y, epochs=1, batch_size=2, verbose=0, shuffle=False).history
    h_gpu = gpu.fit(x, y, epochs=1, batch_size=2, verbose=0, shuffle=False, graph=False).history
    assert h_gpu["loss"][0] == pytest.approx(h_cpu["loss"][0], rel=1e-3)


def test_alexnet_original_graph_steps_equal_eager_steps():
    """The two-tower path (channel slices, concat, LRN) captured in the whole-step graph."""
    fastcnn.manual_seed(0)
    x = np.random.default_rng(1).random((4, 227, 227, 3), dtype=np.float32)
    y = np.eye(1000, dtype=np.float32)[[3, 7, 1, 0]]
    models = []
    for _ in range(2):
        m = fastcnn.models.alexnet(variant="original")
        m.compile(loss="categorical_crossentropy", optimizer=fastcnn.optimizers.SGD(0.01, momentum=0.9))
        models.append(m)
    models[1].set_weights(models[0].get_weights())
    for a, b in zip(models[0].layers, models[1].layers):
        if hasattr(a, "seed"):
            b.seed = a.seed
    eager, graph = (m.to("cuda") for m in models)
    h_eager = eager.fit(x, y, epochs=2, batch_size=2, verbose=0, shuffle=False, graph=False).history
    h_graph = graph.fit(x, y, epochs=2, batch_size=2, verbose=0, shuffle=False, graph=True).history
    assert h_graph["loss"] == pytest.approx(h_eager["loss"], rel=1e-4)
    for a, b in zip(eager.get_weights(), graph.get_weights()):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a)


def test_alexnet_augmented_steps_match_the_reference_eager_and_graphed():
    """RandomCrop + RandomFlip draw their windows on the device from the step counter: the same
    windows as the CPU reference, eager or replayed in the whole-step graph."""
    x = np.random.default_rng(2).random((4, 256, 256, 3), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[[3, 7, 1, 0]]
    fastcnn.manual_seed(0)
    models = [fastcnn.models.alexnet(num_classes=10, augment=True) for _ in range(3)]
    for m in models:
        m.compile(loss="categorical_crossentropy", optimizer=fastcnn.optimizers.SGD(0.01, momentum=0.9))
        m.set_weights(models[0].get_weights())
        for a, b in zip(models[0].layers, m.layers):
            if hasattr(a, "seed"):
                b.seed = a.seed
    cpu, eager, graph = models[0], models[1].to("cuda"), models[2].to("cuda")
    h_cpu = cpu.fit(x, y, epochs=2, batch_size=2, verbose=0, shuffle=False).history
    h_eager = eager.fit(x, y, epochs=2, batch_size=2, verbose=0, shuffle=False, graph=False).history
    h_graph = graph.fit(x, y, epochs=2, batch_size=2, verbose=0, shuffle=False, graph=True).history
    assert h_eager["loss"] == pytest.approx(h_cpu["loss"], rel=2e-3)
    assert h_graph["loss"] == pytest.approx(h_eager["loss"], rel=1e-4)
    for a, b in zip(eager.get_weights(), graph.get_weights()):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a)
    assert eager.evaluate(x, y, verbose=0)[0] == pytest.approx(cpu.evaluate(x, y, verbose=0)[0], rel=2e-3)


def test_a_batch_source_feeds_the_graph_like_eager_steps():
    """Host batches of a batch source copied into the captured step equal eager steps."""
    x, y = sample(5 * 40 + 13)

    class Source:
        def __len__(self):
            return -(-len(x) // 40)

        def __getitem__(self, i):
            return x[i * 40:(i + 1) * 40], y[i * 40:(i + 1) * 40]

    eager = lenet_on("cuda")
    graphed = lenet_on("cuda", weights=eager.get_weights())
    h_eager = eager.fit(Source(), epochs=2, verbose=0, graph=False).history
    h_graph = graphed.fit(Source(), epochs=2, verbose=0, graph=True).history
    np.testing.assert_allclose(h_eager["loss"], h_graph["loss"], rtol=1e-4)
    for a, b in zip(eager.get_weights(), graphed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
