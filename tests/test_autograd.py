"""Autograd and the functional API: gradients through whole chains, against finite differences."""
import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import Tensor, no_grad
from helpers import numeric_grad


def test_diamond_graph_runs_each_function_once_after_all_its_gradients():
    x = Tensor(np.array([3.0]), requires_grad=True)
    a = x * x          # 2x
    y = a + a * x      # x^2 + x^3 -> dy/dx = 2x + 3x^2
    y.backward()
    assert x.grad[0] == pytest.approx(2 * 3 + 3 * 9)


def test_non_scalar_backward_needs_the_upstream_gradient():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(ValueError, match="upstream gradient"):
        y.backward()
    y.backward(np.ones((2, 3)))
    np.testing.assert_allclose(x.grad, 2.0)


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 3.0).sum()
    assert y.creator is None and not y.requires_grad


def test_upstream_gradient_shape_is_checked():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match="shape"):
        (x * 2.0).backward(np.ones((3, 2)))


@pytest.mark.parametrize("labels_kind", ["int", "onehot"])
def test_lenet_like_chain_gradients_match_finite_differences(labels_kind):
    """conv(same)+relu -> pool -> conv(valid, stride 2) -> flatten -> dense+relu -> dense -> softmax-xent."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 7, 2))
    w1 = rng.standard_normal((3, 3, 2, 3)) * 0.5
    b1 = rng.standard_normal(3) * 0.1
    w2 = rng.standard_normal((2, 2, 3, 4)) * 0.5
    w3 = rng.standard_normal((36, 5)) * 0.2
    b3 = rng.standard_normal(5) * 0.1
    w4 = rng.standard_normal((5, 3)) * 0.5
    labels = np.array([2, 0]) if labels_kind == "int" else np.eye(3)[[2, 0]]
    arrays = [x, w1, b1, w2, w3, b3, w4]

    def loss_value(*ts):
        tx, tw1, tb1, tw2, tw3, tb3, tw4 = ts
        h = F.conv2d(tx, tw1, tb1, padding="same", activation="relu")
        h = F.max_pool2d(h, 2, 1)
        h = F.conv2d(h, tw2, strides=2)
        h = F.flatten(h)
        h = F.dense(h, tw3, tb3, activation="relu")
        h = F.dense(h, tw4)
        return F.softmax_cross_entropy(h, labels)

    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    loss = loss_value(*tensors)
    loss.backward()
    for a, t in zip(arrays, tensors):
        expected = numeric_grad(lambda: float(loss_value(*[Tensor(b) for b in arrays]).data), a)
        np.testing.assert_allclose(t.grad, expected, rtol=1e-5, atol=1e-7)


def test_dropout_lrn_and_group_conv_gradients():
    from fastcnn.layers import ChannelConcat, ChannelSlice
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 5, 5, 4))
    w = rng.standard_normal((3, 3, 2, 2))
    step = np.array([3], np.int32)

    def loss_value(tx, tw):
        halves = [F.conv2d(ChannelSlice(2 * g, 2 * g + 2)(tx), tw, padding="same") for g in range(2)]
        h = F.lrn(ChannelConcat()(*halves), size=3, alpha=0.1, beta=0.75, k=2.0)
        h = F.dropout(h, 0.3, training=True, seed=7, step=step)
        return (h * h).sum()

    tx, tw = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    loss_value(tx, tw).backward()
    np.testing.assert_allclose(tx.grad, numeric_grad(lambda: float(loss_value(Tensor(x), Tensor(w)).data), x),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tw.grad, numeric_grad(lambda: float(loss_value(Tensor(x), Tensor(w)).data), w),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("slope", [0.3, 0.0])
def test_leaky_relu_gradient(slope):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4))
    x[np.abs(x) < 1e-3] = 0.5  # clear of the kink
    g = rng.standard_normal((3, 4))
    t = Tensor(x, requires_grad=True)
    y = F.leaky_relu(t, slope)
    np.testing.assert_array_equal(y.data, np.where(x >= 0, x, slope * x))
    y.backward(g)
    expected = numeric_grad(lambda: float((F.leaky_relu(Tensor(x), slope).data * g).sum()), x)
    np.testing.assert_allclose(t.grad, expected, rtol=1e-6, atol=1e-8)
    assert F.leaky_relu(Tensor(np.array([-1.0]))).data[0] == pytest.approx(-0.3)  # Keras's default slope


def test_softmax_gradient():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4))
    g = rng.standard_normal((3, 4))
    t = Tensor(x, requires_grad=True)
    F.softmax(t).backward(g)
    expected = numeric_grad(lambda: float((F.softmax(Tensor(x)).data * g).sum()), x)
    np.testing.assert_allclose(t.grad, expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("padding, size, k, s, expected", [
    ("same", (28, 28), (5, 5), (1, 1), (2, 2, 2, 2)),
    ("same", (27, 27), (3, 3), (2, 2), (1, 1, 1, 1)),
    ("same", (28, 28), (2, 2), (2, 2), (0, 0, 0, 0)),
    ("same", (6, 6), (3, 3), (2, 2), (0, 1, 0, 1)),   # TensorFlow puts the odd pixel bottom/right
    ("valid", (9, 9), (3, 3), (2, 2), (0, 0, 0, 0)),
    ((1, 2), (9, 9), (3, 3), (1, 1), (1, 1, 2, 2)),
    ((0, 1, 2, 3), (9, 9), (3, 3), (1, 1), (0, 1, 2, 3)),
])
def test_padding_follows_keras(padding, size, k, s, expected):
    assert F.resolve_padding(padding, size, k, s) == expected


@pytest.mark.parametrize("call, message", [
    (lambda: F.conv2d(np.ones((5, 5, 1)), np.ones((3, 3, 1, 2))), "4-D NHWC"),
    (lambda: F.conv2d(np.ones((1, 5, 5, 3)), np.ones((3, 3, 1, 2))), "x has 3 channels .* but w expects 1"),
    (lambda: F.conv2d(np.ones((0, 5, 5, 1)), np.ones((3, 3, 1, 2))), "empty batch"),
    (lambda: F.conv2d(np.ones((1, 2, 2, 1)), np.ones((3, 3, 1, 2))), "does not fit"),
    (lambda: F.conv2d(np.ones((1, 5, 5, 1)), np.ones((3, 3, 1, 2)), padding="full"), "padding"),
    (lambda: F.dense(np.ones((2, 3)), np.ones((4, 5))), "3 features"),
    (lambda: F.dense(np.ones((2, 3, 1)), np.ones((3, 5))), "2-D"),
    (lambda: F.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 3])), "label 3 is out of range"),
    (lambda: F.softmax_cross_entropy(np.ones((2, 3)), np.ones((2, 4))), "one-hot labels have shape"),
    (lambda: F.dropout(np.ones(3), 1.0, True), "rate"),
    (lambda: F.conv2d(np.ones((1, 5, 5, 1)), np.ones((3, 3, 1, 2)), activation="tanh"), "activation"),
])
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_dropout_is_identity_outside_training():
    x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False).data, x)


def test_manual_seed_reproduces_initial_weights():
    fastcnn.manual_seed(5)
    a = fastcnn.models.lenet5().get_weights()
    fastcnn.manual_seed(5)
    b = fastcnn.models.lenet5().get_weights()
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
