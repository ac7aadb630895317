"""Float32 matmul precision: fastcnn.config, TF32 rounding in the reference, registry gating."""
import json

import numpy as np
import pytest

import fastcnn
from fastcnn import config
from fastcnn.backend import reference as ref
from fastcnn.backend import preferences, registry
from fastcnn.backend.cuda import auto

U32 = np.float32(2.0 ** -24)  # unit roundoff of float32


@pytest.fixture(autouse=True)
def _highest_after():
    yield
    config.set_float32_matmul_precision("highest")


# ---------------------------------------------------------------- fastcnn.config

def test_precision_defaults_to_highest_and_is_public():
    assert fastcnn.config is config
    assert config.get_float32_matmul_precision() == "highest"
    assert not config.tf32_allowed() and config.precision_name() == "fp32"
    config.set_float32_matmul_precision("high")
    assert config.tf32_allowed() and config.precision_name() == "tf32"


@pytest.mark.parametrize("bad", ["medium", "HIGH", "tf32", "", None])
def test_unknown_precision_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        config.set_float32_matmul_precision(bad)
    assert config.get_float32_matmul_precision() == "highest"


def test_context_manager_restores_the_precision_even_after_an_error():
    with pytest.raises(RuntimeError):
        with config.float32_matmul_precision("high"):
            assert config.get_float32_matmul_precision() == "high"
            raise RuntimeError("inside")
    assert config.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="'low'"):
        with config.float32_matmul_precision("low"):
            pass


def test_command_line_names():
    assert config.from_name("fp32") == "highest" and config.from_name("tf32") == "high"
    assert config.from_name("bf16") == "highest"   # bf16 is a dtype policy, not a float32 matmul precision
    assert [config.policy_name(n) for n in ("fp32", "tf32", "bf16")] == ["float32", "float32", "mixed_bfloat16"]
    for bad in ("fp16", "BF16"):
        with pytest.raises(ValueError, match=f"'{bad}'"):
            config.from_name(bad)
        with pytest.raises(ValueError, match=f"'{bad}'"):
            config.policy_name(bad)


# ---------------------------------------------------------------- round_tf32

def _bits(*words):
    return np.array(words, dtype=np.uint32).view(np.float32)


# (input bits, bits after cvt.rna.tf32.f32): TF32 keeps the top 10 of 23 mantissa bits, so a
# kept-bit step is 0x2000 and half a step is 0x1000.
ROUNDINGS = [
    (0x3F800000, 0x3F800000),  # 1.0: exact
    (0x3F800FFF, 0x3F800000),  # just below half a step: down
    (0x3F801000, 0x3F802000),  # a tie, kept bits even: away from zero (to-even would go down)
    (0x3F805000, 0x3F806000),  # a tie, kept bits 0x3F804000 even: still away from zero
    (0x3F803000, 0x3F804000),  # a tie, kept bits odd: away from zero
    (0x3F801001, 0x3F802000),  # above half: up
    (0x3FFFF000, 0x40000000),  # a tie at the top of the mantissa: carries into the exponent (2.0)
    (0x3FFFFFFF, 0x40000000),  # 1.99999988 -> 2.0
    (0xBF805000, 0xBF806000),  # negative tie: away from zero, i.e. more negative
    (0xBF800FFF, 0xBF800000),  # negative below half: towards zero
    (0x00000FFF, 0x00000000),  # denormal below half of the smallest TF32 denormal: to +0
    (0x00001000, 0x00002000),  # denormal tie: up to the smallest TF32 denormal
    (0x807FF000, 0x80800000),  # the largest negative denormals carry into the smallest normal
    (0x80000000, 0x80000000),  # -0 stays -0
    (0x7F7FFFFF, 0x7F800000),  # the largest float32 is over half a TF32 step past the largest TF32: Inf
    (0x7F800000, 0x7F800000),  # +Inf
    (0xFF800000, 0xFF800000),  # -Inf
    (0x7FC00000, 0x7FC00000),  # quiet NaN
    (0x7F800001, 0x7F800001),  # a NaN whose low bits would round it to Inf stays that NaN
    (0xFFFFFFFF, 0xFFFFFFFF),  # a NaN whose rounding would wrap around 32 bits
]


def test_round_tf32_on_hand_picked_bit_patterns():
    given = _bits(*[a for a, _ in ROUNDINGS])
    out = ref.round_tf32(given)
    assert out.dtype == np.float32 and out.shape == given.shape
    got = out.view(np.uint32)
    for (a, expected), b in zip(ROUNDINGS, got):
        assert int(b) == expected, f"{a:#010x} -> {int(b):#010x}, expected {expected:#010x}"
    assert given.view(np.uint32)[2] == 0x3F801000  # the input is left alone


def test_round_tf32_keeps_ten_mantissa_bits_and_is_nearest():
    x = np.random.default_rng(0).standard_normal((37, 11)).astype(np.float32) * 1e3
    r = ref.round_tf32(x.T)  # a transposed (non-contiguous) view works too
    assert r.shape == (11, 37)
    assert not (r.view(np.uint32) & 0x1FFF).any()
    step = np.spacing(np.abs(x.T)) * 2 ** 13  # one TF32 step at each value
    assert (np.abs(r - x.T) <= step / 2).all()
    assert (r != x.T).mean() > 0.99  # random values almost never fit in 10 bits


def test_round_tf32_refuses_other_dtypes():
    with pytest.raises(TypeError, match="float64"):
        ref.round_tf32(np.ones(3))


# ---------------------------------------------------------------- the reference under "high"
#
# Under "high" each GEMM/convolution primitive rounds its float32 inputs to TF32 and
# accumulates in float32 (NumPy's BLAS).  The oracle here is the same primitive in float64
# on the rounded inputs (float64 inputs are never rounded).  The two differ only by the
# float32 accumulation, so each element obeys the classic dot-product bound
#     |out - exact| <= n * u * sum |a_i| |b_i|,   u = 2**-24, n = terms in the sum,
# with sum |a_i||b_i| computed as the same primitive on the absolute values, in float64.

def _rng(seed=0):
    return np.random.default_rng(seed)


def _f32(*shape, seed=0):
    return _rng(seed).standard_normal(shape).astype(np.float32)


def _case(name):
    if name == "matmul":
        a, b = _f32(33, 70, seed=1), _f32(50, 70, seed=2)
        return (lambda p, q: ref.matmul(p, q, False, True)), (a, b), 70
    if name == "dense_forward":
        x, w = _f32(9, 70, seed=3), _f32(70, 13, seed=4)
        return (lambda p, q: ref.dense_forward(p, q, None, False)), (x, w), 70
    if name == "conv2d_forward":
        x, w = _f32(2, 9, 8, 3, seed=5), _f32(3, 3, 3, 7, seed=6)
        return (lambda p, q: ref.conv2d_forward(p, q, None, (1, 2), (1, 1, 0, 1), False)), (x, w), 27
    if name == "conv2d_backward_data":
        dy, w = _f32(2, 5, 4, 7, seed=7), _f32(3, 3, 3, 7, seed=8)
        return (lambda p, q: ref.conv2d_backward_data(p, q, (2, 9, 8, 3), (2, 2), (1, 1, 1, 0))), (dy, w), 63
    x, dy = _f32(2, 9, 8, 3, seed=9), _f32(2, 5, 4, 7, seed=10)
    return (lambda p, q: ref.conv2d_backward_weights(p, q, (3, 3, 3, 7), (2, 2), (1, 1, 1, 0))), (x, dy), 40


@pytest.mark.parametrize("op", config.TF32_PRIMITIVES)
def test_reference_rounds_gemm_and_conv_inputs_to_tf32_under_high(op):
    fn, inputs, n_terms = _case(op)
    rounded64 = [ref.round_tf32(a).astype(np.float64) for a in inputs]
    with config.float32_matmul_precision("high"):
        out = fn(*inputs)
        exact = fn(*rounded64)  # float64: not rounded again
        magnitude = fn(*[np.abs(a) for a in rounded64])
    assert out.dtype == np.float32
    bound = n_terms * U32 * magnitude + 1e-30
    assert (np.abs(out - exact) <= bound).all()
    # ... and the rounding did happen: the fp32 result is far outside that bound somewhere.
    fp32 = fn(*inputs)
    assert (np.abs(fp32 - exact) > bound).any()
    assert np.allclose(fp32, exact, rtol=0, atol=float(2.0 ** -10 * magnitude.max()))


def test_dense_and_conv_add_the_bias_in_fp32_and_fuse_relu_under_high():
    x, w, b = _f32(9, 70, seed=3), _f32(70, 13, seed=4), _f32(13, seed=11)
    with config.float32_matmul_precision("high"):
        y = ref.dense_forward(x, w, b, True)
        plain = ref.dense_forward(x, w, None, False)
    np.testing.assert_array_equal(y, np.maximum(plain + b, 0))


def test_elementwise_ops_stay_fp32_under_high():
    x = _f32(6, 10, seed=12)
    r = _f32(6, 10, seed=13)
    with config.float32_matmul_precision("high"):
        high = (ref.bias_grad(x), ref.softmax(x), ref.add(x, r), ref.relu_forward(x),
                ref.maxpool_forward(x.reshape(1, 6, 10, 1), (2, 2), (2, 2), (0, 0, 0, 0))[0])
    fp32 = (ref.bias_grad(x), ref.softmax(x), ref.add(x, r), ref.relu_forward(x),
            ref.maxpool_forward(x.reshape(1, 6, 10, 1), (2, 2), (2, 2), (0, 0, 0, 0))[0])
    for a, b in zip(high, fp32):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- registry gating

OP = "fake_precision_op"


@pytest.fixture
def fake_variants():
    calls = []

    def variant(name, refuse=False):
        def fn(x, out=None):
            if refuse:
                raise registry.NotApplicable(f"{name} does not take this shape")
            calls.append(name)
            return name
        return fn

    registry.register(OP, "numba_plain", variant("numba_plain"), source="numba")
    registry.register(OP, "plain", variant("plain"), source="cuda", note="fp32")
    registry.register(OP, "tc", variant("tc"), source="cuda", precision="tf32", note="TF32 tensor cores")
    registry.register(OP, "tc_picky", variant("tc_picky", refuse=True), source="cuda", precision="tf32")
    yield calls, variant
    for table in (registry._variants, registry._selected):
        table.pop(OP, None)


def test_variant_records_its_precision(fake_variants):
    assert registry.get(OP, "plain").precision == "fp32"
    assert registry.variants(OP, precision="tf32") == ["tc", "tc_picky"]
    with config.float32_matmul_precision("high"):
        assert registry.get(OP, "tc").precision == "tf32"
    with pytest.raises(ValueError, match="'fp16'"):
        registry.register(OP, "bf", lambda x: x, source="cuda", precision="fp16")
    assert "bf" not in registry.variants(OP)


def test_implicit_default_is_fp32_under_highest_and_prefers_tf32_under_high(fake_variants):
    assert registry.get(OP).name == "plain"
    with config.float32_matmul_precision("high"):
        assert registry.get(OP).name == "tc"  # the first CUDA C TF32 variant
    assert registry.get(OP).name == "plain"


def test_tf32_variant_is_refused_under_highest_with_the_way_to_allow_it(fake_variants):
    for ask in (lambda: registry.get(OP, "tc"), lambda: registry.use(OP, "tc"),
                lambda: fastcnn.kernels.use(OP, "tc")):
        with pytest.raises(ValueError, match=r"'tc' of fake_precision_op computes in TF32.*"
                                             r"set_float32_matmul_precision\('high'\).*--precision tf32"):
            ask()
    assert registry.selected(OP) == "plain"


def test_a_tf32_selection_stops_working_when_the_precision_goes_back_to_highest(fake_variants):
    with config.float32_matmul_precision("high"):
        registry.use(OP, "tc")
        assert registry.get(OP).fn(np.zeros(1)) == "tc"
    with pytest.raises(ValueError, match="'tc'.*TF32"):
        registry.get(OP)  # never a silent TF32 run under "highest"
    registry.use(OP, None)
    assert registry.get(OP).name == "plain"


def test_numba_and_fp32_variants_run_under_high(fake_variants):
    with config.float32_matmul_precision("high"):
        with registry.using(OP, "numba_plain"):
            assert registry.get(OP).name == "numba_plain"
        with registry.using(OP, "plain"):
            assert registry.get(OP).name == "plain"


def test_declared_defaults_per_precision(fake_variants, monkeypatch):
    _, variant = fake_variants
    registry.register(OP, "tc2", variant("tc2"), source="cuda", precision="tf32")
    monkeypatch.setitem(preferences.PREFERRED, OP, preferences.Preferred("plain", "tc2", "plain"))
    assert registry.get(OP).name == "plain"  # a TF32 default does not change the fp32 one
    with config.float32_matmul_precision("high"):
        assert registry.get(OP).name == "tc2"
    registry.register(OP, "chooser", variant("chooser"), source="cuda", precision="any")
    monkeypatch.setitem(preferences.PREFERRED, OP, preferences.Preferred("chooser", "chooser", "chooser"))
    assert registry.get(OP).name == "chooser"
    with config.float32_matmul_precision("high"):
        assert registry.get(OP).name == "chooser"


def test_a_preference_that_does_not_fit_its_kind_falls_back(fake_variants, monkeypatch):
    # a TF32 variant named for "highest", a Numba one, a name not registered: the fixed rule
    for highest in ("tc", "numba_missing", "numba_plain"):
        monkeypatch.setitem(preferences.PREFERRED, OP, preferences.Preferred(highest, "nowhere", "nowhere"))
        assert registry.get(OP).name == ("numba_plain" if highest == "numba_plain" else "plain")
        with config.float32_matmul_precision("high"):
            assert registry.get(OP).name == "tc"  # the first CUDA C TF32 variant


def test_auto_considers_tf32_variants_only_under_high(fake_variants, monkeypatch):
    calls, _ = fake_variants
    monkeypatch.setitem(preferences.TUNED, OP, preferences.Tuned("plain", "tc"))
    assert auto._candidates(OP) == ["plain"]
    x = np.zeros((2,))
    assert auto._untuned(OP, (x,), {}) == "plain"
    with config.float32_matmul_precision("high"):
        assert auto._candidates(OP) == ["plain", "tc", "tc_picky"]  # fp32 preferred first: the oracle
        assert auto._untuned(OP, (x,), {}) == "tc"
        costs = {"plain": 3.0, "tc": 1.0}
        assert auto.tune(OP, (x,), {}, timer=lambda fn, runs: costs[fn(x)], agree=lambda o, e: True) == "tc"
        high_key = auto._key(OP, (x,), {})
    assert auto.tune(OP, (x,), {}, timer=lambda fn, runs: costs[fn(x)], agree=lambda o, e: True) == "plain"
    assert auto._key(OP, (x,), {}) != high_key  # choices are kept per precision


def test_auto_untuned_falls_back_to_fp32_where_the_tf32_variant_refuses(fake_variants, monkeypatch):
    calls, variant = fake_variants
    monkeypatch.setitem(preferences.TUNED, OP, preferences.Tuned("plain", "tc_picky"))
    with config.float32_matmul_precision("high"):
        assert auto._untuned(OP, (np.zeros(2),), {}) == "plain"
    monkeypatch.setitem(preferences.TUNED, OP, preferences.Tuned("plain", "tc_not_registered"))
    with config.float32_matmul_precision("high"):
        assert auto._untuned(OP, (np.zeros(2),), {}) == "plain"


def test_auto_is_the_default_of_every_tuned_op_under_both_precisions():
    for op in preferences.TUNED:
        assert registry.get(op).name == "auto", op
        assert registry.get(op, "auto").precision == "any"
        with config.float32_matmul_precision("high"):
            assert registry.get(op).name == "auto", op


def test_kernels_command_lists_tf32_variants_under_highest(fake_variants, capsys):
    from fastcnn import cli
    assert cli.main(["kernels", OP]) == 0
    lines = capsys.readouterr().out.splitlines()
    from fastcnn.backend import availability
    mark = "*" if availability()["cuda"] is None else "-"  # without a GPU: the one a GPU would use
    assert any(line.split()[:2] == [mark, "plain"] for line in lines)
    assert any(line.split()[0] == "tc" and line.endswith("[TF32]") for line in lines)


@pytest.fixture
def tf32_matmul():
    saved = {op: dict(v) for op, v in registry._variants.items()}
    registry.register("matmul", "fake_tc_tf32", lambda *a, **k: None, source="cuda", precision="tf32")
    yield
    registry._variants.clear()
    registry._variants.update(saved)


def _specs_by_impl(specs, case):
    return {s.impl: s for s in specs if s.case == case}


def test_bench_times_each_variant_in_its_precision(tf32_matmul):
    from fastcnn import benchmark
    specs = _specs_by_impl(benchmark.gemm_specs(quick=True), "lenet.fc1 200x400x120")
    assert {"fastcnn:auto*", "fastcnn:auto* TF32", "fastcnn:fake_tc_tf32", "fastcnn:tiled"} <= set(specs)
    for impl, precision, inside in [("fastcnn:auto*", "fp32", "highest"), ("fastcnn:tiled", "fp32", "highest"),
                                    ("fastcnn:auto* TF32", "tf32", "high"), ("fastcnn:fake_tc_tf32", "tf32", "high")]:
        assert specs[impl].precision == precision, impl
        with config.float32_matmul_precision("high" if inside == "highest" else "highest"):
            with specs[impl].context():
                assert config.get_float32_matmul_precision() == inside, impl


def test_bench_networks_get_tf32_rows_only_when_tf32_variants_exist(monkeypatch):
    from fastcnn import benchmark
    fp32_only = {op: {n: v for n, v in table.items() if v.precision != "tf32"}
                 for op, table in registry._variants.items()}
    monkeypatch.setattr(registry, "_variants", fp32_only)
    assert not any("TF32" in s.impl for s in benchmark.network_specs(quick=False) if s.role == "fastcnn")


def test_bench_networks_tf32_rows_compare_with_pytorch_tf32(tf32_matmul):
    from fastcnn import benchmark
    specs = [s for s in benchmark.network_specs(quick=False) if s.role == "fastcnn"]
    graph = _specs_by_impl(specs, "lenet5 train")["fastcnn graph TF32"]
    assert graph.precision == "tf32" and graph.compare_to == "torch graph TF32"
    assert _specs_by_impl(specs, "alexnet infer")["fastcnn TF32"].compare_to == "torch eager TF32"
    assert _specs_by_impl(specs, "alexnet train")["fastcnn eager"].compare_to == "torch eager fp32"
    quick = [s.case for s in benchmark.network_specs(quick=True) if s.impl.endswith("TF32") and s.role == "fastcnn"]
    assert quick and all(case.startswith("alexnet") for case in quick)


# ---------------------------------------------------------------- the command line

def _cli(capsys, *argv):
    from fastcnn import cli
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


QUICK = ("--device", "cpu", "--limit", "200", "--batch-size", "100", "--verbose", "0", "--epochs", "1")


def test_train_records_the_precision_and_evaluate_predict_take_it_from_history(capsys, tmp_path, monkeypatch):
    seen = []
    real = ref.round_tf32
    monkeypatch.setattr(ref, "round_tf32", lambda a: seen.append(a.shape) or real(a))
    code, out, err = _cli(capsys, "train", "lenet5", "--precision", "tf32", "--out", str(tmp_path / "t"), *QUICK)
    assert code == 0, err
    assert "precision: tf32 (the NumPy reference rounds the GEMM and convolution inputs to TF32" in out
    assert json.loads((tmp_path / "t" / "history.json").read_text())["precision"] == "tf32"
    assert (200, 28, 28, 1) in seen or (100, 28, 28, 1) in seen  # conv1's input was rounded
    assert config.get_float32_matmul_precision() == "highest"  # the run's precision ends with it

    seen.clear()
    weights = str(tmp_path / "t" / "weights.npz")
    code, out, err = _cli(capsys, "evaluate", "lenet5", "--weights", weights, "--device", "cpu", "--limit", "100")
    assert code == 0, err
    assert "as trained" in out and "--precision tf32" in out and seen
    seen.clear()
    code, out, err = _cli(capsys, "evaluate", "lenet5", "--weights", weights, "--device", "cpu", "--limit", "100",
                          "--precision", "fp32")
    assert code == 0, err
    assert "--precision tf32" not in out and not seen
    png = tmp_path / "digit.png"
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    code, out, err = _cli(capsys, "predict", "lenet5", str(png), "--weights", weights, "--device", "cpu")
    assert code == 0, err
    assert "--precision tf32" in out and seen


def test_train_without_precision_records_fp32_and_rounds_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(ref, "round_tf32", lambda a: pytest.fail("rounded under fp32"))
    code, out, err = _cli(capsys, "train", "lenet5", "--out", str(tmp_path), *QUICK)
    assert code == 0, err
    assert "precision:" not in out
    assert json.loads((tmp_path / "history.json").read_text())["precision"] == "fp32"


def test_numba_kernels_refuse_tf32_and_tf32_kernels_need_it(capsys, tmp_path, fake_variants):
    pytest.importorskip("numba")  # a CPU-only install has no Numba kernels to choose
    base = ("train", "lenet5", "--out", str(tmp_path), *QUICK)
    code, _, err = _cli(capsys, *base, "--precision", "tf32", "--kernel", "matmul=numba_tiled")
    assert code == 2 and "Numba kernels compute in fp32 only" in err and "--precision tf32" in err
    assert err.count("\n") == 1  # one line, no traceback
    code, _, err = _cli(capsys, *base, "--kernel", "fake_precision_op=tc")
    assert code == 2 and "tc computes in TF32; add --precision tf32" in err
    with pytest.raises(SystemExit) as exit_:
        _cli(capsys, *base, "--precision", "fp16")
    assert exit_.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    code, _, err = _cli(capsys, *base, "--precision", "bf16", "--kernel", "matmul=numba_tiled")
    assert code == 2 and "numba_tiled takes float32 arrays only" in err and "--precision bf16" in err
    assert not (tmp_path / "history.json").exists()
    # pooling has no TF32 form: a Numba pooling kernel is fine with --precision tf32
    code, out, err = _cli(capsys, *base, "--precision", "tf32", "--kernel", "maxpool_forward=numba_lanes")
    assert code == 0, err


def test_profile_records_the_precision(capsys, tmp_path):
    out_json = tmp_path / "p.json"
    code, out, err = _cli(capsys, "profile", "lenet5", "--device", "cpu", "--batch-size", "8", "--steps", "1",
                          "--precision", "tf32", "--json", str(out_json))
    assert code == 0, err
    assert "precision: tf32" in out and "on backend reference, precision tf32" in out
    assert json.loads(out_json.read_text())["precision"] == "tf32"
    model = fastcnn.models.lenet5()
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    x = _f32(4, 28, 28, 1)
    y = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]
    assert model.profile(x, y, steps=1).to_dict()["precision"] == "fp32"
    with config.float32_matmul_precision("high"):
        assert model.profile(x, y, steps=1).to_dict()["precision"] == "tf32"


def test_readme_precision_example_runs():
    from test_readme import block
    exec(compile(block("set_float32_matmul_precision"), "README.md precision example", "exec"), {})
    assert config.get_float32_matmul_precision() == "highest"


@pytest.mark.parametrize("recorded, given, expected", [
    (None, None, "fp32"),          # a history.json from before --precision existed
    ("fp16", None, "fp32"),        # nothing we know: fp32
    ("bf16", None, "bf16"),
    ("tf32", None, "tf32"),
    ("tf32", "fp32", "fp32"),      # what the user gives wins
])
def test_evaluate_takes_the_precision_from_history(tmp_path, recorded, given, expected):
    import argparse

    from fastcnn.cli.evaluate import _as_trained
    meta = {"model": "lenet5"} if recorded is None else {"model": "lenet5", "precision": recorded}
    (tmp_path / "history.json").write_text(json.dumps(meta))
    args = argparse.Namespace(model="lenet5", weights=str(tmp_path / "weights.npz"), precision=given,
                              variant=None, augment=False)
    _as_trained(args)
    assert args.precision == expected


def test_registry_picks_variants_by_element_type(monkeypatch):
    """A bfloat16 call runs the selected variant if it takes bfloat16, else the op's bfloat16
    default; naming a variant that does not take the call's element type is refused."""
    from fastcnn.backend import registry
    for table in ("_variants", "_selected"):
        monkeypatch.setattr(registry, table, {k: dict(v) if isinstance(v, dict) else v
                                              for k, v in getattr(registry, table).items()})
    op = "fake_bf16_op"  # not in fastcnn.backend.preferences: the fixed rule picks
    registry.register(op, "simt", lambda: "simt", "cuda")
    registry.register(op, "numba_bf16", lambda: "numba_bf16", "numba", dtypes=("bfloat16",))
    with pytest.raises(ValueError, match="no kernel variant of fake_bf16_op takes bfloat16"):
        registry.get(op, dtype="bfloat16")
    registry.register(op, "tc", lambda: "tc", "cuda", precision="bf16", dtypes=("bfloat16",))
    registry.register(op, "both", lambda: "both", "cuda", dtypes=("float32", "bfloat16"))
    assert registry.get(op).name == "simt"
    assert registry.get(op, dtype="bfloat16").name == "tc"            # first CUDA C one taking bfloat16
    monkeypatch.setitem(preferences.PREFERRED, op, preferences.Preferred("simt", "simt", "both"))
    assert registry.get(op, dtype="bfloat16").name == "both"          # the declared one
    assert registry.variants(op, dtype="bfloat16") == ["numba_bf16", "tc", "both"]
    registry.use(op, "both")
    assert registry.get(op, dtype="bfloat16").name == "both"          # the selection takes bfloat16
    with pytest.raises(ValueError, match="'simt' of fake_bf16_op takes float32 arrays, not bfloat16"):
        registry.get(op, "simt", dtype="bfloat16")
    with pytest.raises(ValueError, match="element types"):
        registry.register(op, "bad", lambda: None, "cuda", dtypes=("float16",))


def test_a_bfloat16_only_variant_can_be_selected(monkeypatch):
    """use() takes a variant whatever element type it takes; float32 calls keep their default."""
    from fastcnn.backend import registry
    monkeypatch.setattr(registry, "_variants", {k: dict(v) for k, v in registry._variants.items()})
    monkeypatch.setattr(registry, "_selected", dict(registry._selected))
    registry.register("matmul", "bf16_only", lambda: None, "cuda", precision="bf16", dtypes=("bfloat16",))
    before = registry.selected("matmul")
    registry.use("matmul", "bf16_only")
    assert registry.selected("matmul", "bfloat16") == "bf16_only"
    assert registry.selected("matmul") == before
