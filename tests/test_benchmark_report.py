"""The benchmark report: ratios and ceiling fractions from figures of one run, the writers,
and the CPU comparison end to end (tiny repeats).  No GPU needed."""
import argparse
import json
import sys

import pytest

from fastcnn import benchmark, check, gputime
from fastcnn.benchmark import Report, Result

RUN = "run-a"
HEADER = {"run_id": RUN, "card": "Test Card (2 SMs)", "driver": "1.0", "cuda_runtime": "13.0",
          "cupy": "14.2.0", "torch": "2.11.0", "cudnn": 91900, "numpy": "2.5.2",
          "date": "2026-11-28 00:00 UTC", "notes": []}


def R(group, case, impl, role, unit, figure, time_us=100.0, **kw):
    kw.setdefault("run_id", RUN)
    return Result(group, case, "shape", impl, role, unit, time_us=time_us, figure=figure, **kw)


def known_results():
    return [
        R("ceiling", "ceiling.copy", "copy", "ceiling", "GB/s", 3000.0),
        R("ceiling", "ceiling.sgemm", "cuBLAS fp32", "ceiling", "TFLOP/s", 50.0),
        R("ceiling", "ceiling.tf32", "cuBLAS TF32", "ceiling", "TFLOP/s", 400.0, precision="tf32"),
        R("gemm", "gemm 4096^3", "fastcnn:tiled*", "fastcnn", "TFLOP/s", 40.0),
        R("gemm", "gemm 4096^3", "fastcnn:tf32_mma", "fastcnn", "TFLOP/s", 100.0, precision="tf32"),
        R("gemm", "gemm 4096^3", "cuBLAS fp32", "baseline", "TFLOP/s", 50.0),
        R("gemm", "gemm 4096^3", "cuBLAS TF32", "baseline", "TFLOP/s", 320.0, precision="tf32"),
        R("pool", "alexnet.pool1 fwd", "fastcnn:gather*", "fastcnn", "GB/s", 1500.0),
        R("pool", "alexnet.pool1 fwd", "fastcnn:numba_lanes", "fastcnn", "GB/s", 1200.0),
        R("pool", "alexnet.pool1 fwd", "torch NCHW", "baseline", "GB/s", 1000.0),
        R("pool", "alexnet.pool1 fwd", "torch NHWC", "baseline", "GB/s", 1200.0),
        R("network", "lenet5 train", "fastcnn eager", "fastcnn", "img/s", 150000.0,
          compare_to="torch eager fp32"),
        R("network", "lenet5 train", "fastcnn graph", "fastcnn", "img/s", 500000.0,
          compare_to="torch graph fp32"),
        R("network", "lenet5 train", "torch eager fp32", "baseline", "img/s", 100000.0),
        R("network", "lenet5 train", "torch graph fp32", "baseline", "img/s", 400000.0),
        R("conv", "alexnet.conv2 fwd", "fastcnn:implicit_gemm*", "fastcnn", "TFLOP/s", None,
          time_us=None, error="CUDADriverError: launch failed"),
        R("conv", "alexnet.conv2 fwd", "cuDNN NCHW fp32", "baseline", "TFLOP/s", 30.0),
        R("conv", "lenet.conv1 fwd", "fastcnn:direct*", "fastcnn", "TFLOP/s", 2.0),
    ]


def row(report, case, impl):
    (r,) = [r for r in report.rows if r.case == case and r.impl == impl]
    return r


def test_ratio_is_figure_over_the_best_same_precision_baseline_of_the_run():
    rep = Report(known_results(), HEADER)
    tiled = row(rep, "gemm 4096^3", "fastcnn:tiled*")
    assert tiled.baseline == "cuBLAS fp32" and tiled.baseline_figure == 50.0
    assert tiled.ratio == pytest.approx(0.8)
    assert tiled.pct_ceiling == pytest.approx(80.0)          # of the measured SGEMM rate
    tf32 = row(rep, "gemm 4096^3", "fastcnn:tf32_mma")        # a TF32 variant meets the TF32 baseline
    assert tf32.baseline == "cuBLAS TF32" and tf32.ratio == pytest.approx(100 / 320)
    assert tf32.pct_ceiling == pytest.approx(25.0)           # of the measured TF32 rate
    pool = row(rep, "alexnet.pool1 fwd", "fastcnn:gather*")
    assert pool.baseline == "torch NHWC" and pool.ratio == pytest.approx(1.25)
    assert pool.pct_ceiling == pytest.approx(50.0)           # of the measured copy bandwidth


def test_named_baselines_and_rows_without_one():
    rep = Report(known_results(), HEADER)
    assert row(rep, "lenet5 train", "fastcnn eager").ratio == pytest.approx(1.5)
    graph = row(rep, "lenet5 train", "fastcnn graph")
    assert graph.baseline == "torch graph fp32" and graph.ratio == pytest.approx(1.25)
    assert graph.pct_ceiling is None                          # img/s has no ceiling
    lonely = row(rep, "lenet.conv1 fwd", "fastcnn:direct*")   # no baseline measured: no ratio
    assert lonely.baseline is None and lonely.ratio is None
    failed = row(rep, "alexnet.conv2 fwd", "fastcnn:implicit_gemm*")
    assert failed.ratio is None and "launch failed" in failed.error
    assert row(rep, "gemm 4096^3", "cuBLAS fp32").ratio is None  # baselines carry no ratio


def test_figures_from_another_run_are_refused():
    results = known_results()
    results.append(R("gemm", "gemm 4096^3", "cuBLAS fp32 (old)", "baseline", "TFLOP/s", 60.0,
                     run_id="run-b"))
    with pytest.raises(ValueError, match="same run"):
        Report(results, HEADER)
    with pytest.raises(ValueError, match="run_id"):
        Report(known_results(), {k: v for k, v in HEADER.items() if k != "run_id"})


def test_ratio_changes_with_the_baseline_figure_of_the_run():
    results = known_results()
    for r in results:
        if r.impl == "cuBLAS fp32" and r.role == "baseline":
            r.figure = 80.0
    assert row(Report(results, HEADER), "gemm 4096^3", "fastcnn:tiled*").ratio == pytest.approx(0.5)


def test_table_markdown_and_json(tmp_path):
    rep = Report(known_results(), HEADER)
    table = rep.table()
    assert "Test Card" in table and "run_id=run-a" in table and "torch=2.11.0" in table
    line = next(l for l in table.splitlines() if "fastcnn:tiled*" in l)
    assert "0.80" in line and "cuBLAS fp32" in line and "40.0" in line
    assert "ERROR CUDADriverError" in table
    md = rep.markdown()
    assert "| card | Test Card (2 SMs) |" in md and "| cudnn | 91900 |" in md
    assert "| gemm 4096^3 | shape | fastcnn:tiled* | 100 | 40.0 TFLOP/s | cuBLAS fp32 | 50.0 | 0.80 | 80.0 |" in md
    path = tmp_path / "b.json"
    rep.write_json(str(path))
    data = json.loads(path.read_text())
    assert data["header"]["run_id"] == RUN and data["header"]["card"].startswith("Test Card")
    again = benchmark.load_json(str(path))
    assert [(r.case, r.impl, r.ratio) for r in again.rows] == [(r.case, r.impl, r.ratio) for r in rep.rows]
    md_path = tmp_path / "b.md"
    rep.write_markdown(str(md_path))
    assert md_path.read_text() == md


def test_conv_rates_above_the_sgemm_ceiling_get_a_note():
    results = known_results()
    results.append(R("conv", "alexnet.conv3 fwd", "cuDNN NCHW fp32", "baseline", "TFLOP/s", 78.0))
    rep = Report(results, HEADER)
    assert row(rep, "alexnet.conv3 fwd", "cuDNN NCHW fp32").pct_ceiling == pytest.approx(156.0)
    assert any("Winograd" in n and "cuDNN NCHW fp32" in n for n in rep.notes)
    assert "Winograd" in rep.table() and "Winograd" in rep.markdown()
    assert not any("Winograd" in n for n in Report(known_results(), HEADER).notes)


def test_key_ratios_for_the_check_table():
    keys = dict(Report(known_results(), HEADER).key_ratios())
    assert keys["gemm 4096^3 best / cuBLAS fp32"] == "0.80x"
    assert keys["alexnet.pool1 fwd % copy bw"] == "50.0%"
    assert keys["lenet train graph / torch graph"] == "1.25x"
    assert keys["numba pool1 fwd / best CUDA C"] == "0.80x"      # numba_lanes 1200 / gather 1500 GB/s
    assert "numba gemm 4096^3 / cuBLAS fp32" not in keys         # no Numba GEMM row in this run


def test_key_ratios_of_the_tensor_core_rows():
    """TF32 rows against the best TF32 baseline (the faster layout), and out of the fp32 keys."""
    extra = [R("gemm", "gemm 8192^3", "fastcnn:tc_tf32", "fastcnn", "TFLOP/s", 200.0, precision="tf32"),
             R("gemm", "gemm 8192^3", "fastcnn:tiled*", "fastcnn", "TFLOP/s", 45.0),
             R("gemm", "gemm 8192^3", "cuBLAS fp32", "baseline", "TFLOP/s", 50.0),
             R("gemm", "gemm 8192^3", "cuBLAS TF32", "baseline", "TFLOP/s", 400.0, precision="tf32"),
             R("conv", "alexnet.conv1 fwd", "fastcnn:tc_tf32", "fastcnn", "TFLOP/s", 30.0, precision="tf32"),
             R("conv", "alexnet.conv1 fwd", "fastcnn:implicit_gemm*", "fastcnn", "TFLOP/s", 20.0),
             R("conv", "alexnet.conv1 fwd", "cuDNN NCHW fp32", "baseline", "TFLOP/s", 25.0),
             R("conv", "alexnet.conv1 fwd", "cuDNN NCHW TF32", "baseline", "TFLOP/s", 24.0, precision="tf32"),
             R("conv", "alexnet.conv1 fwd", "cuDNN NHWC TF32", "baseline", "TFLOP/s", 40.0, precision="tf32")]
    keys = dict(Report(known_results() + extra, HEADER).key_ratios())
    assert keys["gemm 8192^3 tc_tf32 / cuBLAS TF32"] == "0.50x"
    assert keys["alexnet.conv1 fwd tc_tf32 / cuDNN TF32"] == "0.75x"
    assert keys["alexnet.conv1 fwd / cuDNN fp32"] == "0.80x"
    assert "alexnet.conv2 fwd tc_tf32 / cuDNN TF32" not in keys


def test_key_ratio_of_tf32_training_takes_the_best_of_each_side():
    """AlexNet in TF32 against PyTorch's best TF32 figure, channels_last or not, eager or graph."""
    extra = [R("network", "alexnet train", "fastcnn eager TF32", "fastcnn", "img/s", 9000.0, precision="tf32"),
             R("network", "alexnet train", "fastcnn graph TF32", "fastcnn", "img/s", 12000.0, precision="tf32"),
             R("network", "alexnet train", "torch eager TF32", "baseline", "img/s", 15000.0, precision="tf32"),
             R("network", "alexnet train", "torch eager NHWC TF32", "baseline", "img/s", 18000.0, precision="tf32"),
             R("network", "alexnet train", "torch eager NHWC fp32", "baseline", "img/s", 30000.0)]
    keys = dict(Report(known_results() + extra, HEADER).key_ratios())
    assert keys["alexnet train TF32 best / torch TF32 best"] == "0.67x"     # 12,000 / 18,000
    assert "lenet5 train TF32 best / torch TF32 best" not in keys


def test_plot_writes_png_or_says_why(tmp_path, monkeypatch):
    rep = Report(known_results(), HEADER)
    path = tmp_path / "ratios.png"
    try:
        import matplotlib  # noqa: F401
        msg = rep.plot(str(path))
        assert "written" in msg and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        pass
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    msg = rep.plot(str(tmp_path / "none.png"))
    assert "matplotlib is not installed" in msg and not (tmp_path / "none.png").exists()


def test_figure_units():
    assert benchmark._figure("TFLOP/s", 2.0 * 4096 ** 3, 2748.8) == pytest.approx(50.0, rel=1e-3)
    assert benchmark._figure("GB/s", 4e9, 1000.0) == pytest.approx(4000.0)
    assert benchmark._figure("img/s", 200, 1000.0) == pytest.approx(200000.0)


def test_rotation_count_exceeds_twice_l2():
    l2 = 50 << 20
    assert gputime.rotation_count(1 << 30, l2=l2) == 1
    n = gputime.rotation_count(4 << 20, l2=l2, max_sets=64)
    assert n * (4 << 20) >= 2 * l2 and (n - 1) * (4 << 20) < 2 * l2
    assert gputime.rotation_count(1, l2=l2, max_sets=8) == 8


def test_cases_cover_the_issue():
    names = {c for c, *_ in benchmark.GEMM_SHAPES}
    assert {"gemm 4096^3", "gemm 8192^3"} <= names
    assert [L.P for L in benchmark.CONV_LAYERS] == [28, 10, 55, 27, 13, 13, 13]
    assert [L.P for L in benchmark.POOL_LAYERS] == [14, 5, 27, 13, 6]
    quick = {s.case for s in benchmark.specs("gemm", quick=True)}
    assert "gemm 8192^3" not in quick and "gemm 4096^3" in quick


def test_torch_alexnet_parameter_count():
    torch = pytest.importorskip("torch")
    assert sum(p.numel() for p in benchmark.torch_alexnet().parameters()) == 62_378_344
    assert sum(p.numel() for p in benchmark.torch_lenet5().parameters()) == 61_706
    del torch


def test_cpu_comparison_end_to_end(tmp_path, capsys):
    pytest.importorskip("torch")
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    out = tmp_path / "cpu.json"
    md = tmp_path / "cpu.md"
    args = parser.parse_args(["--group", "cpu", "--repeats", "2", "--warmup", "0",
                              "--json", str(out), "--markdown", str(md)])
    assert benchmark.run(args) == 0
    printed = capsys.readouterr().out
    assert "lenet5 train (cpu)" in printed and "torch cpu" in printed
    data = json.loads(out.read_text())
    assert data["header"]["numpy"] and data["header"]["date"] and data["header"]["run_id"]
    results = {r["impl"]: r for r in data["results"]}
    ours, theirs = results["fastcnn reference"], results["torch cpu"]
    assert ours["run_id"] == theirs["run_id"] == data["header"]["run_id"]
    assert ours["error"] is None and theirs["error"] is None
    assert ours["figure"] == pytest.approx(200 / (ours["time_us"] * 1e-6))
    (ratio_row,) = [r for r in data["rows"] if r["impl"] == "fastcnn reference"]
    assert ratio_row["baseline"] == "torch cpu"
    assert ratio_row["ratio"] == pytest.approx(ours["figure"] / theirs["figure"])
    assert "| lenet5 train (cpu) |" in md.read_text()


def test_no_gpu_skips_gpu_groups_with_a_note(monkeypatch):
    monkeypatch.setattr(gputime, "cuda_available", lambda: False)
    rep = benchmark.run_benchmarks(benchmark.Options(groups=("gemm", "pool"), verbose=False))
    assert rep.results == []
    assert any("no CUDA GPU" in n for n in rep.header["notes"])


def test_budget_stops_starting_cases(monkeypatch):
    monkeypatch.setattr(gputime, "cuda_available", lambda: False)
    rep = benchmark.run_benchmarks(benchmark.Options(groups=("cpu",), budget_s=-1, verbose=False))
    assert rep.results == [] and any("budget" in n for n in rep.header["notes"])


def test_a_failing_case_is_recorded_not_raised():
    def boom():
        raise RuntimeError("kernel exploded")
    spec = benchmark.Spec("cpu", "x", "s", "fastcnn:bad", "fastcnn", "img/s", 1, boom, lib="cpu")
    res = benchmark.run_spec(spec, benchmark.Options(repeats=2, verbose=False), RUN)
    assert res.error == "RuntimeError: kernel exploded" and res.figure is None


# ---------------------------------------------------------------- the GPU check's parsers and driver
def test_check_parses_pytest_output():
    parse_pytest = check.gpu_check().parse_pytest
    out = ("tests/test_a.py::test_one PASSED\n"
           "tests/test_a.py::test_two[cuda-3] FAILED\n"
           "tests/test_b.py::test_three SKIPPED (needs a CUDA GPU)\n"
           "tests/test_b.py::test_four ERROR\n"
           "ERROR tests/test_c.py - ImportError: no module\n")
    counts = parse_pytest(out)
    assert (counts["passed"], counts["failed"], counts["error"], counts["skipped"]) == (1, 1, 2, 1)
    assert counts["failing"] == ["tests/test_a.py::test_two[cuda-3]", "tests/test_b.py::test_four",
                                 "tests/test_c.py"]


def test_check_parses_xdist_output_and_the_final_totals():
    parse_pytest = check.gpu_check().parse_pytest
    out = ("[gw0] [ 33%] PASSED tests/a.py::t1 \n[gw1] [ 66%] FAILED tests/a.py::t2[x-1] \n"
           "[gw0] [100%] SKIPPED tests/a.py::t3 \n"
           "FAILED tests/a.py::t2[x-1] - AssertionError: relative error 1 > 1e-4\n"
           "====== 1 failed, 1 passed, 1 skipped, 12 deselected in 9.10s (0:00:09) ======\n")
    counts = parse_pytest(out)
    assert (counts["passed"], counts["failed"], counts["skipped"]) == (1, 1, 1) and counts["finished"]
    assert counts["failing"] == ["tests/a.py::t2[x-1]"]
    partial = parse_pytest("[gw0] [ 33%] PASSED tests/a.py::t1 \n[killed after 100 s]")
    assert partial["passed"] == 1 and "finished" not in partial


def test_check_parses_sanitizer_summaries():
    parse_sanitizer = check.gpu_check().parse_sanitizer
    mem = parse_sanitizer("ok     matmul:tiled\nSANITIZE DONE ok=40 failed=0 in 3.0s\n"
                          "========= ERROR SUMMARY: 2 errors\n")
    assert mem["errors"] == 2 and mem["done"] and mem["ok"] == 40 and mem["failed"] == 0
    race = parse_sanitizer("SANITIZE DONE ok=1 failed=0\n"
                           "========= RACECHECK SUMMARY: 3 hazards displayed (1 error, 2 warnings)\n")
    assert race["errors"] == 1 and race["warnings"] == 2
    killed = parse_sanitizer("ok     add:cuda\n[killed after 45 s]")
    assert killed["errors"] is None and not killed["done"]


def test_check_runs_without_a_gpu_and_writes_its_summary(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--skip", "gpu tests", "--skip", "memcheck",
                              "--skip", "racecheck", "--skip", "bench", "--total", "60"])
    code = check.run(args)
    printed, err = capsys.readouterr()
    from fastcnn.backend import availability
    if availability()["cuda"] is not None:  # no GPU: nothing checked, said, and not a success
        assert code == 1 and "nothing was checked: no GPU here" in err and availability()["cuda"] in err
    assert "section" in printed and "racecheck" in printed.splitlines()[-4]
    summary = json.loads((tmp_path / "check_summary.json").read_text())
    assert [r["section"] for r in summary["sections"]] == list(check.gpu_check().SECTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.log", "check_summary.json"]


def test_check_profile_section_reads_the_profile(tmp_path, monkeypatch):
    """The section's own plumbing, on a small LeNet-5 profile on the CPU (on a GPU: AlexNet)."""
    gpu_check = check.gpu_check()
    monkeypatch.setattr(gpu_check, "PROFILE_ARGS", ["lenet5", "--device", "cpu", "--batch-size", "4",
                                                    "--steps", "1", "--warmup", "0", "--by", "op"])
    c = gpu_check.Check(tmp_path, total_s=600, python=sys.executable)
    row = c.profile()
    c.log.close()
    assert row["status"] == "ok", row
    assert row["key"].startswith("lenet5 batch 4 step ") and "(host clock)" in row["key"]
    assert row["key"].count("%") == 4 and "conv2d_backward_weights" in {r["op"] for r in row["by_op"]}
    assert (tmp_path / "profile.json").exists() and "conv2d_forward" in (tmp_path / "check.log").read_text()
    monkeypatch.setattr(gpu_check, "PROFILE_ARGS", ["lenet5", "--device", "cpu", "--steps", "0"])
    row = gpu_check.Check(tmp_path, total_s=600, python=sys.executable).profile()
    assert row["status"] == "FAIL" and "--steps" in row["key"]


def test_check_outside_a_checkout_says_what_it_needs(tmp_path, monkeypatch, capsys):
    """An installed fastcnn without the repository's tests/ and bench/: one line, exit 1."""
    from fastcnn import cli
    monkeypatch.setattr(check, "SCRIPT", tmp_path / "bench" / "gpu_check.py")
    assert not check.found()
    assert cli.main(["check", "--out", str(tmp_path / "out"), "--total", "60"]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "needs a source checkout of fastcnn" in err
    assert "bench/gpu_check.py" in err and not (tmp_path / "out").exists()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gpu_check.py").write_text("")
    assert not check.found()                       # the script without tests/ beside it
    assert check.main([]) == 1


def test_check_hands_over_to_the_checkout_script():
    assert check.found() and check.SCRIPT.parent.name == "bench"
    assert check.gpu_check() is check.gpu_check() and check.gpu_check().REPO == check.SCRIPT.parents[1]



# ---------------------------------------------------------------- baselines' plumbing, on the CPU
SMALL_CONVS = [benchmark.ConvLayer("t1", 2, 9, 11, 3, 5, 3, 3, 2, 1),
               benchmark.ConvLayer("t2", 2, 12, 12, 4, 6, 5, 5, 1, 2),
               benchmark.ConvLayer("t3", 1, 23, 23, 3, 4, 11, 11, 4, 0)]
SMALL_POOLS = [benchmark.PoolLayer("p1", 2, 9, 11, 5, 3, 2), benchmark.PoolLayer("p2", 2, 8, 10, 3, 2, 2)]


@pytest.mark.parametrize("L", SMALL_CONVS, ids=lambda L: L.name)
def test_conv_check_reference_agrees_with_the_numpy_reference(L):
    """The float64 PyTorch reference the benchmark checks variants against: NHWC/HWIO layouts right."""
    pytest.importorskip("torch")
    import numpy as np
    from fastcnn.backend import reference as ref
    rng = np.random.default_rng(1)
    x = rng.standard_normal((L.N, L.H, L.W, L.C))
    w = rng.standard_normal((L.R, L.S, L.C, L.K))
    dy = rng.standard_normal((L.N, L.P, L.Q, L.K))
    stride, pad = (L.stride, L.stride), (L.pad,) * 4
    expected = {"fwd": ref.conv2d_forward(x, w, None, stride, pad, False),
                "dgrad": ref.conv2d_backward_data(dy, w, x.shape, stride, pad),
                "wgrad": ref.conv2d_backward_weights(x, dy, w.shape, stride, pad)}
    for pas, want in expected.items():
        got = benchmark._conv_torch_ref(L, pas, x, w, dy if pas != "fwd" else None)
        assert benchmark._rel_err(got, want) < 1e-10, pas


@pytest.mark.parametrize("L", SMALL_POOLS, ids=lambda L: L.name)
def test_pool_check_reference_agrees_with_the_numpy_reference(L):
    pytest.importorskip("torch")
    import numpy as np
    from fastcnn.backend import reference as ref
    rng = np.random.default_rng(2)
    x = rng.standard_normal((L.N, L.H, L.W, L.C))
    dy = rng.standard_normal((L.N, L.P, L.Q, L.C))
    args = ((L.pool, L.pool), (L.stride, L.stride), (0, 0, 0, 0))
    y, argmax = ref.maxpool_forward(x, *args)
    assert benchmark._rel_err(benchmark._pool_torch_ref(L, "fwd", x, None), y) == 0
    dx = ref.maxpool_backward(dy, argmax, x.shape, *args)
    assert benchmark._rel_err(benchmark._pool_torch_ref(L, "bwd", x, dy), dx) < 1e-12


def test_torch_baseline_builders_run_on_cpu():
    """The PyTorch calls the GPU baselines make (convolution_backward, pooling with indices)."""
    torch = pytest.importorskip("torch")
    L, P = SMALL_CONVS[0], SMALL_POOLS[0]
    for channels_last in (False, True):
        for pas in benchmark.CONV_PASSES:
            fn, sets, _ = benchmark._make_torch_conv(L, pas, channels_last, dev="cpu")()
            out = fn(0)
            if pas == "fwd":
                assert tuple(out.shape) == (L.N, L.K, L.P, L.Q)
            else:
                wanted = out[0] if pas == "dgrad" else out[1]
                assert tuple(wanted.shape) == ((L.N, L.C, L.H, L.W) if pas == "dgrad" else (L.K, L.C, L.R, L.S))
        for pas in ("fwd", "bwd"):
            fn, _, _ = benchmark._make_torch_pool(P, pas, channels_last, dev="cpu")()
            out = fn(0)
            assert tuple(out.shape) == ((P.N, P.C, P.P, P.Q) if pas == "fwd" else (P.N, P.C, P.H, P.W))
    for mode in ("train eager", "infer eager"):
        fn, sets, _ = benchmark._make_torch_net("lenet5", mode, 8, device="cpu")()
        fn(sets - 1)
    del torch


def test_priority_orders_cases_but_rows_keep_the_canonical_order(monkeypatch):
    ran = []

    def fake_specs(group, quick=False):
        def make(name):
            def m():
                ran.append(name)
                return (lambda i: None), 1, None
            return m
        return [benchmark.Spec("cpu", c, "", "impl", "baseline", "img/s", 1, make(c), lib="cpu")
                for c in ("a case", "b case", "c case")]
    monkeypatch.setattr(benchmark.runner, "specs", fake_specs)
    rep = benchmark.run_benchmarks(benchmark.Options(groups=("cpu",), priority="c case|b case",
                                                     repeats=1, warmup=0, verbose=False))
    assert ran == ["c case", "b case", "a case"]
    assert [r.case for r in rep.results] == ["a case", "b case", "c case"]


def test_tensor_core_rows_are_ready_in_every_run(monkeypatch):
    """The TF32 kernels (tc_tf32) have rows in every run, timed inside precision "high", beside
    cuBLAS with TF32 on (GEMM 8192^3) and cuDNN with TF32 on, NCHW and channels_last (AlexNet
    conv1-5); under "high" they are listed once, not twice."""
    from fastcnn import config
    monkeypatch.setattr(benchmark.cases, "_torch_ok", lambda: True)   # list the cuDNN rows (nothing runs)
    for precision in ("highest", "high"):
        with config.float32_matmul_precision(precision):
            gemm, conv = benchmark.specs("gemm"), benchmark.specs("conv")
        tc_gemm = [s for s in gemm if s.impl == "fastcnn:tc_tf32"]
        assert len(tc_gemm) == len(benchmark.GEMM_SHAPES) and all(s.precision == "tf32" for s in tc_gemm)
        assert {"fastcnn:tc_tf32", "cuBLAS TF32"} <= \
            {s.impl for s in gemm if s.case == "gemm 8192^3" and s.precision == "tf32"}
        for i in range(1, 6):
            case = f"alexnet.conv{i} fwd"
            assert {"fastcnn:tc_tf32", "cuDNN NCHW TF32", "cuDNN NHWC TF32"} <= \
                {s.impl for s in conv if s.case == case and s.precision == "tf32"}, case
            assert len([s for s in conv if s.case == case and s.impl == "fastcnn:tc_tf32"]) == 1
        with tc_gemm[0].context():
            assert config.get_float32_matmul_precision() == "high"
        assert config.get_float32_matmul_precision() == "highest"


def _bench_args(*argv):
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("argv, said", [
    (("--group", "distributed", "--group", "cpu"), "--group distributed runs alone"),
    (("--group", "distributed", "--budget", "5"), "--budget does not apply to --group distributed"),
    (("--group", "distributed", "--priority", "x"), "--priority does not apply to --group distributed"),
    (("--group", "distributed", "--filter", "nothing"), "--filter 'nothing' matches no case of --group distributed"),
])
def test_distributed_group_refuses_what_ranks_cannot_agree_on(argv, said, capsys):
    assert benchmark.run(_bench_args(*argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and said in err, err


def test_distributed_group_without_mpi4py_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # import mpi4py raises ImportError
    assert benchmark.run(_bench_args("--group", "distributed", "--quick")) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fastcnn bench: --group distributed needs mpi4py and an MPI library: pip install "
                   "'fastcnn[mpi]' (Debian: apt-get install openmpi-bin libopenmpi-dev first)")


def test_distributed_group_lists_its_cases_and_is_not_in_the_default_run(capsys):
    assert benchmark.run(_bench_args("--group", "distributed", "--list")) == 0
    listed = capsys.readouterr().out
    assert [line.split()[1:3] for line in listed.splitlines()] == [
        ["all-reduce", "lenet5"], ["all-reduce", "alexnet"], ["lenet5", "train"]]
    assert "distributed" not in benchmark.GROUPS


def test_mixed_bfloat16_rows_meet_their_own_baselines(monkeypatch):
    """bf16 network rows: AlexNet's training beside PyTorch's bf16 autocast in channels_last, the
    others beside fastcnn's own float32 row of the same mode; the key table says both goals and
    keeps bf16 rows out of the float32 and TF32 figures."""
    monkeypatch.setattr(benchmark.cases, "_torch_ok", lambda: True)
    monkeypatch.setattr(benchmark.cases, "_bf16_registered", lambda: True)
    specs = benchmark.specs("network")
    alex = {s.impl: s for s in specs if s.case == "alexnet train"}
    assert alex["fastcnn graph bf16"].compare_to == "torch graph NHWC bf16"
    assert alex["fastcnn eager bf16"].compare_to == "torch eager NHWC bf16"
    assert alex["torch graph NHWC bf16"].role == "baseline" and alex["torch graph NHWC bf16"].precision == "bf16"
    lenet = {s.impl: s for s in specs if s.case == "lenet5 train"}
    assert lenet["fastcnn graph bf16"].compare_to == "fastcnn graph"
    assert not [s for s in specs if s.case == "lenet5 train" and "torch" in s.impl and "bf16" in s.impl]

    results = [
        R("network", "alexnet train", "fastcnn graph", "fastcnn", "img/s", 9000.0, compare_to="torch graph fp32"),
        R("network", "alexnet train", "fastcnn graph bf16", "fastcnn", "img/s", 15000.0,
          precision="bf16", compare_to="torch graph NHWC bf16"),
        R("network", "alexnet train", "torch graph fp32", "baseline", "img/s", 10000.0),
        R("network", "alexnet train", "torch graph NHWC bf16", "baseline", "img/s", 12000.0, precision="bf16"),
        R("network", "lenet5 train", "fastcnn graph", "fastcnn", "img/s", 500000.0, compare_to="torch graph fp32"),
        R("network", "lenet5 train", "fastcnn graph bf16", "fastcnn", "img/s", 700000.0,
          precision="bf16", compare_to="fastcnn graph"),
        R("network", "lenet5 train", "torch graph fp32", "baseline", "img/s", 400000.0),
    ]
    rep = Report(results, HEADER)
    assert row(rep, "alexnet train", "fastcnn graph bf16").ratio == pytest.approx(1.25)
    assert row(rep, "lenet5 train", "fastcnn graph bf16").baseline == "fastcnn graph"
    assert row(rep, "lenet5 train", "fastcnn graph bf16").ratio == pytest.approx(1.4)
    keys = dict(rep.key_ratios())
    assert keys["alexnet train graph bf16 / torch graph NHWC bf16 autocast"] == "1.25x"
    assert keys["lenet train graph bf16 / fastcnn graph fp32"] == "1.40x"
    assert keys["alexnet train / torch fp32"] == "0.90x"          # the bf16 row does not count here
    assert keys["lenet train graph / torch graph"] == "1.25x"


def test_torch_bf16_autocast_baseline_runs_on_cpu():
    torch = pytest.importorskip("torch")
    fn, sets, _ = benchmark._make_torch_net("lenet5", "train eager", 8, device="cpu", autocast_bf16=True)()
    assert torch.isfinite(fn(sets - 1))


def test_bfloat16_kernel_rows_meet_cublas_and_cudnn_bf16(monkeypatch):
    """tc_bf16 rows are fed bfloat16 inputs and compared with cuBLAS BF16 (GEMM) and cuDNN's
    channels_last BF16 (convolution) of the same run; the check table names both goals."""
    monkeypatch.setattr(benchmark.cases, "_torch_ok", lambda: True)   # list the baselines (nothing runs)
    gemm, conv = benchmark.specs("gemm"), benchmark.specs("conv")
    assert {"fastcnn:tc_bf16", "cuBLAS BF16"} <= {s.impl for s in gemm if s.case == "gemm 8192^3"
                                                  and s.precision == "bf16"}
    for i in range(1, 6):
        for pas in benchmark.CONV_PASSES:
            assert {"fastcnn:tc_bf16", "cuDNN NHWC BF16"} <= \
                {s.impl for s in conv if s.case == f"alexnet.conv{i} {pas}" and s.precision == "bf16"}
    rep = Report([R("gemm", "gemm 8192^3", "fastcnn:tc_bf16", "fastcnn", "TFLOP/s", 420.0, precision="bf16"),
                  R("gemm", "gemm 8192^3", "cuBLAS BF16", "baseline", "TFLOP/s", 700.0, precision="bf16"),
                  R("gemm", "gemm 8192^3", "cuBLAS fp32", "baseline", "TFLOP/s", 50.0)], HEADER)
    assert row(rep, "gemm 8192^3", "fastcnn:tc_bf16").baseline == "cuBLAS BF16"
    assert dict(rep.key_ratios())["gemm 8192^3 tc_bf16 / cuBLAS BF16"] == "0.60x"


def test_bfloat16_torch_baselines_run_on_cpu():
    torch = pytest.importorskip("torch")
    fn, sets, _ = benchmark.baselines._make_torch_gemm_bf16(16, 8, 4, dev="cpu")()
    assert fn(0).dtype == torch.bfloat16 and tuple(fn(0).shape) == (16, 4)
    L = SMALL_CONVS[0]
    out = benchmark._make_torch_conv(L, "fwd", True, dev="cpu", bf16=True)()[0](0)
    assert out.dtype == torch.bfloat16 and tuple(out.shape) == (L.N, L.K, L.P, L.Q)
