"""The `auto` variant's choice logic, with stand-in variants and a stand-in timer (no GPU)."""
import numpy as np
import pytest

from fastcnn.backend import preferences, registry
from fastcnn.backend.cuda import auto


@pytest.fixture
def fake_op(monkeypatch):
    calls = []
    costs = {"slow": 5.0, "fast": 1.0, "hopeless": 500.0}

    def variant(name):
        def fn(x, flag=False, out=None):
            if name == "picky" and x.shape[0] > 2:
                raise ValueError("picky takes batches of at most 2")
            calls.append(name)
            return name
        return fn

    for name in ("slow", "fast", "hopeless", "picky"):
        registry.register("fake_op", name, variant(name), source="cuda")
    registry.register("fake_op", "numba_fast", variant("numba_fast"), source="numba")
    monkeypatch.setitem(preferences.TUNED, "fake_op", preferences.Tuned("slow", "slow"))
    timed = []

    def timer_for(fn_costs):
        def timer(fn, runs):
            name = fn(np.zeros((3,)))
            timed.append((name, runs))
            return fn_costs.get(name, 0.1)
        return timer

    yield costs, timer_for, timed, calls
    registry._variants.pop("fake_op", None)


def test_tune_picks_the_fastest_cuda_variant_and_skips_the_ones_that_refuse(fake_op):
    costs, timer_for, timed, _ = fake_op
    x = np.zeros((3,))
    assert auto.tune("fake_op", (x,), {}, timer=timer_for(costs), agree=lambda out, exp: True) == "fast"
    names = [name for name, _ in timed]
    assert "picky" not in names and "numba_fast" not in names  # refused / not CUDA C
    assert ("hopeless", 1) in timed and ("hopeless", auto.RUNS) not in timed  # cut after one run
    assert names[0] == "slow"  # the preferred variant is timed first


def test_tune_never_picks_a_variant_that_disagrees(fake_op):
    costs, timer_for, _, _ = fake_op
    choice = auto.tune("fake_op", (np.zeros((3,)),), {}, timer=timer_for(costs),
                       agree=lambda out, expected: out != "fast")
    assert choice == "slow"


def test_shape_key_ignores_out_and_keeps_flags():
    a = np.zeros((2, 3), np.float32)
    assert auto._key("matmul", (a, a, False, True), {"out": a}) == auto._key("matmul", (a, a, False, True), {})
    assert auto._key("matmul", (a, a, False, True), {}) != auto._key("matmul", (a, a, True, False), {})


def test_every_tuned_op_prefers_a_registered_variant():
    for op, preferred in preferences.TUNED.items():
        assert preferred.fp32 in registry.variants(op, source="cuda", precision="fp32"), op
        assert preferred.tf32 in registry.variants(op, source="cuda"), op
        assert registry.get(op).name == "auto", op
