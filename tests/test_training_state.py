"""fastcnn.training_state.TrainingState, the loss's fused gradient, and the one way a Function
reaches its backend."""
import numpy as np
import pytest

import fastcnn
from fastcnn import backend, layers, losses, tensor
from fastcnn import functional as F
from fastcnn.backend import reference


def compiled(optimizer="adam", seed=0):
    fastcnn.manual_seed(seed)
    model = fastcnn.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)),
                                layers.Flatten(), layers.Dense(5, activation="relu"),
                                layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    return model


def batch(n=6, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, n)


def test_parameters_are_views_of_the_flat_buffers_trainable_first():
    model = compiled()
    model.layers[0].trainable = False
    state = model.ready_to_train()
    frozen = model.layers[0].params
    trainable = [p for layer in model.layers[1:] for p in layer.params]
    for p in model.parameters():
        assert np.shares_memory(p.data, state.params) and np.shares_memory(p.grad_view, state.grads)
    # the optimizer's views cover the trainable parameters and stop before the frozen layer's
    n = state.n_trainable
    assert state.trainable_params.size == n < state.params.size
    for p in trainable:
        assert np.shares_memory(p.data, state.trainable_params)
    for p in frozen:
        assert not np.shares_memory(p.data, state.trainable_params)
    assert sorted(state.slots) == ["m", "v"] and all(v.size == n for v in state.slots.values())
    assert [k for k in state.device_arrays()] == ["params", "step", "totals", "slot/m", "slot/v"]
    assert all(a is not state.totals for a in state.shared_arrays()) and len(state.shared_arrays()) == 4


def test_snapshot_and_restore_undo_training_steps():
    model = compiled()
    x, y = batch()
    model.train_on_batch(x, y)
    state = model.training_state
    saved = state.snapshot()
    before = {k: state.backend.to_host(v).copy() for k, v in state.device_arrays().items()}
    params = state.params
    for _ in range(2):
        model.train_on_batch(x, y)
    assert state.read_step() == 3
    state.restore(saved)
    assert state.params is params   # put back in place: a captured graph keeps its arrays
    for k, v in state.device_arrays().items():
        np.testing.assert_array_equal(state.backend.to_host(v), before[k], err_msg=k)
    # the steps after a restore are the steps after the snapshot
    again = compiled()
    again.train_on_batch(x, y)
    model.train_on_batch(x, y)
    again.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_step_and_totals_are_read_and_set_on_the_host():
    model = compiled()
    state = model.ready_to_train()
    state.set_step(7)
    assert state.read_step() == 7
    state.reset_totals([2.5, 1.0])
    np.testing.assert_array_equal(state.read_totals(), [2.5, 1.0])
    state.reset_totals()
    np.testing.assert_array_equal(state.read_totals(), [0.0, 0.0])
    model.to("cpu")   # a move keeps the step counter
    assert model.training_state.read_step() == 7


@pytest.mark.parametrize("loss", [losses.SparseCategoricalCrossentropy(), losses.CategoricalCrossentropy()])
def test_the_loss_gives_the_fused_softmax_cross_entropy(loss):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    classes = rng.integers(0, 4, 5)
    labels = loss.prepare_labels(classes if loss.sparse else np.eye(4, dtype=np.float32)[classes], 5, 4)
    totals = np.zeros(2)
    dlogits = loss.fused_gradient(logits, labels, totals, reference)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(dlogits, (p - np.eye(4)[classes]) / 5, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(totals[0], -np.log(p[np.arange(5), classes]).sum(), rtol=1e-5)
    assert totals[1] == np.count_nonzero(logits.argmax(1) == classes)


def test_a_backward_pass_uses_the_backend_its_functions_bound(monkeypatch):
    """Functions bind the current backend once; backward and gradient accumulation never ask again."""
    x = tensor.Parameter(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    w = tensor.Parameter(np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32))
    y = F.relu(x @ w) + x @ w   # x and w get two gradient contributions each: accumulation
    asked = []
    monkeypatch.setattr(backend, "current", lambda: asked.append(1) or reference)
    y.backward(np.ones((3, 2), np.float32))
    assert not asked
    mask = (x.data @ w.data > 0).astype(np.float32) + 1
    np.testing.assert_allclose(x.grad, mask @ w.data.T, rtol=1e-6)
    np.testing.assert_allclose(w.grad, x.data.T @ mask, rtol=1e-6)
