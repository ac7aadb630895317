"""Optimizers with Keras's names, defaults and update rules.

Each update is one backend primitive over the model's flat parameter buffer
(one kernel launch for all parameters on the GPU).  The step count lives in a
device array (``step``) so that a captured CUDA graph stays correct on replay.
"""
from __future__ import annotations

import numpy as np


class Optimizer:
    state_names: tuple = ()

    def build(self, backend, size: int) -> None:
        """Allocate this optimizer's state (zeros) for ``size`` flat parameters."""
        self.backend = backend
        self.state = {k: backend.asarray(np.zeros(size, np.float32)) for k in self.state_names}

    def apply(self, params, grads, step, params_bf16=None) -> None:
        """One update of the flat ``params`` by ``grads``; ``params_bf16`` (the mixed_bfloat16
        policy's bfloat16 copy of params) receives the updated values rounded, in the same launch."""
        raise NotImplementedError

    def get_state(self) -> dict:
        return {k: self.backend.to_host(v) for k, v in self.state.items()}

    def set_state(self, state: dict) -> None:
        for k in self.state_names:
            value = np.asarray(state[k], np.float32)
            if value.shape != self.state[k].shape:
                raise ValueError(f"optimizer state {k!r} has shape {value.shape}, expected {self.state[k].shape}")
            self.backend.copy(self.state[k], self.backend.asarray(value))

    def get_config(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in ("backend", "state", "state_names")}

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """v = momentum*v - lr*g; p += v (nesterov: p += momentum*v - lr*g).

    ``weight_decay``: g + weight_decay * p takes g's place, so the decay enters the velocity:
    the AlexNet paper's rule (momentum 0.9, weight decay 0.0005) and PyTorch's.  Keras 3
    names a decoupled decay (p -= lr * weight_decay * p, outside the momentum) the same way;
    this is not that one.  It applies to every parameter, biases too, as the paper's rule does.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        if learning_rate <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"SGD needs learning_rate > 0, 0 <= momentum < 1 and weight_decay >= 0, "
                             f"got {learning_rate}, {momentum}, {weight_decay}")
        self.learning_rate, self.momentum, self.nesterov = float(learning_rate), float(momentum), bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.state_names = ("velocity",) if self.momentum else ()

    def apply(self, params, grads, step, params_bf16=None):
        self.backend.sgd_update(params, grads, self.state.get("velocity"), self.learning_rate,
                                self.momentum, self.nesterov, self.weight_decay, **_bf16(params_bf16))


class Adam(Optimizer):
    """Keras's Adam (epsilon outside the square root, bias correction folded into the rate).

    ``weight_decay``: Keras 3's decoupled decay, p -= p * weight_decay * learning_rate before
    each step (AdamW's rule; every parameter, biases too, as Keras does by default)."""
    state_names = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
        weight_decay = 0.0 if weight_decay is None else weight_decay
        if learning_rate <= 0 or not (0 <= beta_1 < 1 and 0 <= beta_2 < 1) or epsilon <= 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__} needs learning_rate > 0, betas in [0, 1), epsilon > 0 "
                             f"and weight_decay >= 0")
        self.learning_rate, self.beta_1, self.beta_2, self.epsilon = (
            float(learning_rate), float(beta_1), float(beta_2), float(epsilon))
        self.weight_decay = float(weight_decay)

    def apply(self, params, grads, step, params_bf16=None):
        s = self.state
        self.backend.adam_update(params, grads, s["m"], s["v"], step, self.learning_rate,
                                 self.beta_1, self.beta_2, self.epsilon, self.weight_decay, **_bf16(params_bf16))


class AdamW(Adam):
    """Keras's AdamW: Adam with decoupled weight decay, by default 0.004."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay)


class RMSprop(Optimizer):
    """Keras's RMSprop: v = rho*v + (1-rho)*g^2, p -= lr*g / sqrt(v + epsilon) (epsilon inside the
    root, as Keras); ``momentum`` accumulates those steps, ``centered`` divides by the variance
    (v minus the square of the mean gradient) instead."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
        if learning_rate <= 0 or not 0 <= rho < 1 or not 0 <= momentum < 1 or epsilon <= 0:
            raise ValueError(f"RMSprop needs learning_rate > 0, rho and momentum in [0, 1) and epsilon > 0, "
                             f"got {learning_rate}, {rho}, {momentum}, {epsilon}")
        self.learning_rate, self.rho, self.momentum, self.epsilon = (
            float(learning_rate), float(rho), float(momentum), float(epsilon))
        self.centered = bool(centered)
        self.state_names = ("velocity",) + (("momentum",) if self.momentum else ()) + \
            (("average_gradient",) if self.centered else ())

    def apply(self, params, grads, step, params_bf16=None):
        s = self.state
        self.backend.rmsprop_update(params, grads, s["velocity"], s.get("momentum"), s.get("average_gradient"),
                                    self.learning_rate, self.rho, self.momentum, self.epsilon, **_bf16(params_bf16))


def _bf16(params_bf16) -> dict:
    """The update primitive's p_bf16= keyword, passed only when there is a bfloat16 copy (a
    float32 model's call stays as it was)."""
    return {} if params_bf16 is None else {"p_bf16": params_bf16}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier) -> Optimizer:
    """An Optimizer from a name ('adam', 'sgd', 'adamw', 'rmsprop') or an Optimizer instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()]()
    raise ValueError(f"unknown optimizer {identifier!r}; use one of {sorted(OPTIMIZERS)} or an Optimizer object")
