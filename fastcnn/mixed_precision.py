"""Mixed precision as Keras 3 spells it: dtype policies.

    import fastcnn
    fastcnn.mixed_precision.set_global_policy("mixed_bfloat16")   # layers made from now on
    layer = fastcnn.layers.Dense(10, dtype="mixed_bfloat16")      # or one layer at a time

A policy names two dtypes.  ``variable_dtype``: what the weights and the optimizer's
state are kept in (float32 under every policy here).  ``compute_dtype``: what a layer
computes in and hands to the next layer.  Under ``"mixed_bfloat16"`` a layer casts its
float inputs to bfloat16, reads its kernel from the model's bfloat16 copy of the weights
(refreshed by every optimizer update), computes with float32 accumulation and passes
bfloat16 activations on; its weight gradients are float32, its activation gradients
bfloat16.  The loss and the softmax are computed in float32.  ``"mixed_float16"`` (float16
with loss scaling) is not offered.
"""
from __future__ import annotations

import contextlib

from . import dtypes

# policy name -> (compute dtype, variable dtype)
POLICIES = {"float32": ("float32", "float32"), "mixed_bfloat16": ("bfloat16", "float32")}
# The Keras class name a policy is serialised under (layer configs, .keras archives).
KERAS_CLASS = "DTypePolicy"


class Policy:
    """A dtype policy: ``Policy("float32")`` or ``Policy("mixed_bfloat16")`` (Keras's DTypePolicy)."""

    def __init__(self, name="float32"):
        if isinstance(name, Policy):
            name = name.name
        if name == "mixed_float16":
            raise ValueError("the mixed_float16 policy (float16 with loss scaling) is not offered yet; "
                             "use 'mixed_bfloat16' or 'float32'")
        if name not in POLICIES:
            raise ValueError(f"unknown dtype policy {name!r}; choose one of {sorted(POLICIES)}")
        self._name = name

    name = property(lambda self: self._name)
    compute_dtype = property(lambda self: POLICIES[self._name][0])
    variable_dtype = property(lambda self: POLICIES[self._name][1])

    @property
    def mixed(self) -> bool:
        """True when layers compute in another dtype than their weights are kept in."""
        return self.compute_dtype != self.variable_dtype

    def get_config(self) -> dict:
        return {"name": self._name}

    @classmethod
    def from_config(cls, config: dict) -> "Policy":
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, Policy) and other.name == self.name

    def __hash__(self):
        return hash(self._name)

    def __repr__(self):
        return f'<DTypePolicy "{self._name}">'


_global = [Policy("float32")]


def set_global_policy(policy) -> None:
    """The policy of the layers made from now on that are given no ``dtype=`` (Keras's rule)."""
    _global[0] = get(policy) if policy is not None else Policy("float32")


def global_policy() -> Policy:
    return _global[0]


@contextlib.contextmanager
def policy_scope(policy):
    """``with policy_scope("mixed_bfloat16"): model = fastcnn.models.lenet5()``: the global
    policy for the layers made inside the block, the previous one after it."""
    previous = global_policy()
    set_global_policy(policy)
    try:
        yield global_policy()
    finally:
        _global[0] = previous


def get(identifier) -> Policy:
    """A Policy from None (the global policy), a name, a Policy, or Keras's serialised form
    ``{"class_name": "DTypePolicy", "config": {"name": ...}}``."""
    if identifier is None:
        return global_policy()
    if isinstance(identifier, Policy):
        return identifier
    if isinstance(identifier, str):
        return Policy(identifier)
    if isinstance(identifier, dict):
        if identifier.get("class_name", KERAS_CLASS) not in (KERAS_CLASS, "FloatDTypePolicy", "Policy"):
            raise ValueError(f"dtype policy {identifier.get('class_name')!r} is not one fastcnn has "
                             f"(it has {KERAS_CLASS}: {sorted(POLICIES)})")
        config = identifier.get("config", identifier)
        if not isinstance(config, dict) or "name" not in config:
            raise ValueError(f"a serialised dtype policy needs config.name, got {identifier!r}")
        return Policy(config["name"])
    raise TypeError(f"dtype must be a policy name, a Policy or None, got {type(identifier).__name__}")


def serialize(policy: Policy) -> dict:
    """Keras 3's form of a policy in a layer's config."""
    return {"module": "keras", "class_name": KERAS_CLASS, "config": policy.get_config(), "registered_name": None}


def compute_dtype(policy: Policy):
    """The NumPy dtype a policy computes in."""
    return dtypes.NAMES[policy.compute_dtype]
