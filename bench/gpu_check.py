"""`fastcnn check`: the one GPU check, in under 5 minutes on an H100/H200.

    fastcnn check                                 # fastcnn installed from this checkout
    PYTHONPATH=$PWD python3 bench/gpu_check.py    # from a bare checkout

It runs this repository's tests/ and bench/sanitize_step.py, so it lives here, in the
checkout; `fastcnn check` (fastcnn/check.py) hands over to this file.

Sections, in order, each in a subprocess with its own time budget (a hang or a
crash costs that section only):

  env        nvidia-smi -L, driver, clocks; Python, NumPy, CuPy, CUDA runtime,
             PyTorch, cuDNN, Numba versions; which backends are usable; variants
  gpu tests  python -m pytest -m gpu tests/ : pass/fail/skip counts, failing names
  memcheck   compute-sanitizer --tool memcheck  python bench/sanitize_step.py
  racecheck  compute-sanitizer --tool racecheck python bench/sanitize_step.py
  profile    python -m fastcnn profile alexnet: where an AlexNet training step's GPU time
             goes, by primitive and by layer (the bench's quick budget does not reach most
             AlexNet backward passes)
  bench      python -m fastcnn.benchmark --quick (the stated goals' cases first),
             until the remaining time is spent

Everything goes under $OUT (default ./gpu_check_out), at most 8 files:
check.log (every section's output), check_summary.json, pytest.log,
sanitizer.log, profile.json, bench.json, bench.md, bench.png.  Printed last: the bench's key
ratios and one table, section | status | seconds | key numbers.
Exit status 0 when every section that ran is ok; 1 when one failed, or when there is no
GPU (nothing was checked; the reason is printed).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # the fastcnn of this checkout, installed or not
SECTIONS = ("env", "gpu tests", "memcheck", "racecheck", "profile", "bench")
BUDGETS = {"env": 30, "gpu tests": 120, "memcheck": 40, "racecheck": 45, "profile": 40}
MIN_BENCH_S = 60
# `fastcnn profile` arguments of the profile section: AlexNet as the bench runs it (SGD momentum)
PROFILE_ARGS = ["alexnet", "--device", "cuda", "--steps", "3", "--warmup", "1", "--by", "op", "--by", "layer"]

ENV_SCRIPT = r"""
import json, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable}
def v(name, fn):
    try:
        out[name] = fn()
    except Exception as exc:
        out[name] = f"unavailable ({type(exc).__name__}: {str(exc)[:120]})"
import numpy; out["numpy"] = numpy.__version__
v("cupy", lambda: __import__("cupy").__version__)
v("cuda_runtime", lambda: __import__("cupy").cuda.runtime.runtimeGetVersion())
v("cuda_driver", lambda: __import__("cupy").cuda.runtime.driverGetVersion())
v("gpu", lambda: __import__("cupy").cuda.runtime.getDeviceProperties(0)["name"].decode())
v("torch", lambda: __import__("torch").__version__)
v("torch_cuda", lambda: __import__("torch").cuda.is_available())
v("cudnn", lambda: __import__("torch").backends.cudnn.version())
v("numba", lambda: __import__("numba").__version__)
v("numba_cuda", lambda: __import__("importlib.metadata").metadata.version("numba-cuda"))
v("pytest", lambda: __import__("pytest").__version__)
v("backends", lambda: __import__("fastcnn.backend", fromlist=["x"]).availability())
def variants():
    from fastcnn import kernels as registry  # every variant registered
    return {op: registry.variants(op) for op in registry.ops()}
v("variants", variants)
print("ENVJSON " + json.dumps(out, default=str))
"""


# ------------------------------------------------------------------ subprocess with a hard limit
def run_limited(cmd, timeout: float, env=None, cwd=REPO) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, stdout+stderr, seconds); the whole process group is
    killed at the limit, so a child of the child (python under compute-sanitizer) dies too."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, cwd=cwd, start_new_session=True)
    except OSError as exc:
        return 127, f"could not start {cmd[0]}: {exc}", time.perf_counter() - t0
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            out, _ = proc.communicate(timeout=10)
        except Exception:
            out = ""
        return None, (out or "") + f"\n[killed after {timeout:.0f} s]", time.perf_counter() - t0


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ------------------------------------------------------------------ parsers (tested on CPU)
_PYTEST_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)
_XDIST_LINE = re.compile(r"^\[gw\d+\]\s+\[\s*\d+%\]\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(\S+::\S+)",
                         re.MULTILINE)
_PYTEST_ERROR_LINE = re.compile(r"^ERROR (\S+)", re.MULTILINE)
_PYTEST_SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed|skipped|error|errors|deselected)\b.*) in [\d.]+s", re.MULTILINE)


def parse_pytest(output: str) -> dict:
    """Counts and failing names from `pytest -v -rfE` output, with or without xdist's -n
    (a partial output, from a run killed at its limit, works too)."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failing = []
    seen = [(name, status) for name, status in _PYTEST_LINE.findall(output)]
    seen += [(name, status) for status, name in _XDIST_LINE.findall(output)]
    for name, status in seen:
        key = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "error",
               "SKIPPED": "skipped", "XFAIL": "skipped"}[status]
        counts[key] += 1
        if key in ("failed", "error") and name not in failing:
            failing.append(name)
    for name in _PYTEST_ERROR_LINE.findall(output):  # collection errors: 'ERROR tests/x.py'
        if "::" not in name and name not in failing:
            counts["error"] += 1
            failing.append(name)
    summary = _PYTEST_SUMMARY.findall(output)
    if summary:  # the run finished: its own totals are authoritative
        totals = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", summary[-1]):
            totals[{"xfailed": "skipped", "xpassed": "passed", "errors": "error"}.get(what, what)] += int(n)
        counts.update(totals)
        counts["finished"] = True
    counts["failing"] = failing
    return counts


def parse_sanitizer(output: str) -> dict:
    """Error/hazard counts from a compute-sanitizer run, and whether the workload finished."""
    res = {"errors": None, "warnings": None, "done": "SANITIZE DONE" in output}
    m = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", output)
    if m:
        res["errors"], res["warnings"] = int(m.group(2)), int(m.group(3))
    else:
        m = re.search(r"ERROR SUMMARY: (\d+) errors?", output)
        if m:
            res["errors"] = int(m.group(1))
    res["api_errors"] = len(re.findall(r"Program hit \w+", output))
    m = re.search(r"SANITIZE DONE ok=(\d+) failed=(\d+)", output)
    if m:
        res["ok"], res["failed"] = int(m.group(1)), int(m.group(2))
    return res


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    import glob
    for pattern in ("/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda-*/bin/compute-sanitizer",
                    "/usr/local/cuda*/compute-sanitizer/compute-sanitizer",
                    "/opt/nvidia/*/compute-sanitizer*/compute-sanitizer"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


# ------------------------------------------------------------------ the check
class Check:
    def __init__(self, out: Path, total_s: float, python: str, skip=(), force=False):
        self.out, self.total_s, self.python, self.skip = out, total_s, python, set(skip)
        self.force = force
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.gpu = None
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "check.log", "w")

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.t0)

    def write_log(self, title: str, text: str) -> None:
        self.log.write(f"\n===== {title} =====\n{text}\n")
        self.log.flush()

    def section(self, name: str, fn) -> None:
        t = time.perf_counter()
        if name in self.skip:
            row = {"status": "skipped", "key": "--skip"}
        else:
            try:
                row = fn()
            except Exception as exc:  # a bug here must not stop the other sections
                import traceback
                self.write_log(f"{name}: internal error", traceback.format_exc())
                row = {"status": "ERROR", "key": f"{type(exc).__name__}: {exc}"[:100]}
        row["section"] = name
        row["seconds"] = round(time.perf_counter() - t, 1)
        self.rows.append(row)
        print(f"[check] {name:<10} {row['status']:<8} {row['seconds']:6.1f}s  {row.get('key', '')}",
              flush=True)

    # ---- sections
    def env(self) -> dict:
        parts, key = [], []
        code, out, _ = run_limited(["nvidia-smi", "-L"], 20)
        parts.append(out)
        self.gpu = code == 0 and "GPU" in out
        if self.gpu:
            key.append(out.strip().splitlines()[0].split(" (UUID")[0])
            _, q, _ = run_limited(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                                   "clocks.sm,clocks.max.sm,temperature.gpu,power.draw,utilization.gpu",
                                   "--format=csv"], 20)
            parts.append(q)
        code, out, _ = run_limited([self.python, "-c", ENV_SCRIPT], max(15, min(BUDGETS["env"], self.left() - 200)),
                                   env=child_env())
        parts.append(out)
        info = {}
        m = re.search(r"^ENVJSON (.*)$", out, re.MULTILINE)
        if m:
            info = json.loads(m.group(1))
            key += [f"numpy {info.get('numpy')}", f"cupy {info.get('cupy')}",
                    f"torch {info.get('torch')}", f"cudnn {info.get('cudnn')}"]
            if self.gpu is False and str(info.get("gpu", "")).startswith("unavailable"):
                self.gpu = False
            elif not self.gpu and not str(info.get("gpu", "unavailable")).startswith("unavailable"):
                self.gpu = True  # nvidia-smi missing but CuPy sees a GPU
        self.env_info = info
        self.write_log("env", "\n".join(parts))
        status = "ok" if m and self.gpu else ("no GPU" if m else "FAIL")
        return {"status": status, "key": ", ".join(key), "info": info}

    def gpu_tests(self) -> dict:
        budget = min(BUDGETS["gpu tests"], self.left() - 150)
        cmd = [self.python, "-m", "pytest", "-m", "gpu", "-v", "-rfE", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", "-o", "console_output_style=classic", "tests/"]
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd.insert(-1, "--timeout=60")
        if importlib.util.find_spec("xdist") is not None:  # 4 workers share the GPU: the
            cmd[-1:-1] = ["-n", "4"]                        # CPU reference side is the slow part
        code, out, _ = run_limited(cmd, budget, env=child_env())
        (self.out / "pytest.log").write_text(" ".join(cmd) + "\n" + out)
        counts = parse_pytest(out)
        key = f"{counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, " \
              f"{counts['skipped']} skipped"
        if counts["failing"]:
            key += "; failing: " + ", ".join(n.split("/")[-1] for n in counts["failing"][:8])
            if len(counts["failing"]) > 8:
                key += f" (+{len(counts['failing']) - 8} more, see pytest.log)"
        if code is None:
            status = "TIMEOUT"
            key = f"killed at {budget:.0f}s; " + key
        elif counts["failed"] or counts["error"] or code not in (0, 5):
            status = "FAIL"
        elif counts["passed"] == 0:
            status = "no tests" if code == 5 else "skipped"
        else:
            status = "ok"
        return {"status": status, "key": key, "counts": counts, "exit": code}

    def sanitizer(self, tool: str) -> dict:
        exe = find_sanitizer()
        if exe is None:
            return {"status": "skipped", "key": "compute-sanitizer not found"}
        budget = min(BUDGETS[tool], max(20, self.left() - MIN_BENCH_S - (60 if tool == "memcheck" else 0)))
        t0 = time.perf_counter()
        # CUDA API errors that the libraries provoke and handle themselves are not kernel bugs:
        # leave them out where this compute-sanitizer knows the option, else count them apart.
        workload = [self.python, str(REPO / "bench" / "sanitize_step.py")]
        if tool == "racecheck":  # several times slower: the CUDA C variants (shared memory) only
            workload.append("--cuda-only")
        cmd = [exe, "--tool", tool, "--print-limit", "20", "--report-api-errors", "no"] + workload
        code, out, _ = run_limited(cmd, budget, env=child_env())
        if "SANITIZE" not in out and "option" in out.lower() and code not in (None, 0):
            with open(self.out / "sanitizer.log", "a") as f:
                f.write(f"\n===== {' '.join(cmd)} (exit {code}): option refused, again without it"
                        f" =====\n{out}\n")
            cmd = [exe, "--tool", tool, "--print-limit", "20"] + workload
            code, out, _ = run_limited(cmd, budget - (time.perf_counter() - t0), env=child_env())
        with open(self.out / "sanitizer.log", "a") as f:
            f.write(f"\n===== {' '.join(cmd)} (exit {code}) =====\n{out}\n")
        res = parse_sanitizer(out)
        errors = res["errors"]
        key = f"{errors if errors is not None else '?'} errors"
        if res.get("api_errors"):
            key += f" ({res['api_errors']} shown from CUDA API calls)"
        if tool == "racecheck" and res.get("warnings") is not None:
            key += f", {res['warnings']} warnings"
        if "ok" in res:
            key += f"; workload {res['ok']} ok, {res['failed']} failed"
        failed_lines = [l[7:].split(": ")[0] for l in out.splitlines() if l.startswith("FAILED ")]
        if failed_lines:
            key += " (" + ", ".join(failed_lines[:4]) + ")"
        if code is None:
            status = "TIMEOUT"
            key = f"killed at {budget:.0f}s; " + key
        elif errors is None or not res["done"]:
            status = "FAIL"
        elif errors - res["api_errors"] > 0 or res.get("failed"):
            status = "FAIL"
        else:
            status = "ok" if not errors else "ok*"  # ok*: only CUDA API errors, see sanitizer.log
        return {"status": status, "key": key, **res, "exit": code}

    def profile(self) -> dict:
        budget = min(BUDGETS["profile"], self.left() - MIN_BENCH_S)
        if budget < 15:
            return {"status": "skipped", "key": f"only {self.left():.0f}s left; the bench comes first"}
        path = self.out / "profile.json"
        path.unlink(missing_ok=True)
        cmd = [self.python, "-m", "fastcnn", "profile"] + PROFILE_ARGS + ["--json", str(path)]
        code, out, _ = run_limited(cmd, budget, env=child_env())
        self.write_log("profile", " ".join(cmd) + "\n" + out)
        if not path.exists():
            tail = out.strip().splitlines()[-1:] or ["no output"]
            return {"status": "TIMEOUT" if code is None else "FAIL", "key": tail[0][:100]}
        data = json.loads(path.read_text())
        top = [r for r in data["by_op"] if r["op"] != "other"][:4]
        key = (f"{data['model']} batch {data['batch_size']} step {data['step_us'] / 1000:.2f} ms "
               f"({data['clock']} clock); "
               + ", ".join(f"{r['op']} {r['percent']:.0f}%" for r in top))
        return {"status": "ok", "key": key, "step_us": data["step_us"], "by_op": data["by_op"]}

    def bench(self) -> dict:
        budget = max(MIN_BENCH_S, self.left() - 25)
        for name in ("bench.json", "bench.md", "bench.png"):
            (self.out / name).unlink(missing_ok=True)
        cmd = [self.python, "-m", "fastcnn.benchmark", "--quick", "--budget", f"{budget - 25:.0f}",
               "--json", str(self.out / "bench.json"),
               "--markdown", str(self.out / "bench.md"), "--plot", str(self.out / "bench.png")]
        code, out, _ = run_limited(cmd, budget, env=child_env())
        self.write_log("bench", " ".join(cmd) + "\n" + out)
        path = self.out / "bench.json"
        if not path.exists():
            tail = out.strip().splitlines()[-1:] or ["no output"]
            return {"status": "TIMEOUT" if code is None else "FAIL", "key": tail[0][:100]}
        sys.path.insert(0, str(REPO))
        from fastcnn.benchmark import load_json
        report = load_json(str(path))
        measured = sum(1 for r in report.results if r.figure)
        errors = sum(1 for r in report.results if r.error)
        wrong = sum(1 for r in report.results if "WRONG" in (r.note or ""))
        self.bench_keys = report.key_ratios()
        self.bench_notes = report.header.get("notes", [])
        key = f"{measured} measured, {errors} errors, {wrong} wrong outputs"
        status = "ok" if measured and not errors and not wrong else ("FAIL" if not measured else "partial")
        if code is None:
            status, key = ("partial" if measured else "TIMEOUT"), f"killed at {budget:.0f}s; " + key
        return {"status": status, "key": key, "key_ratios": self.bench_keys}

    # ---- driver
    def run(self) -> int:
        self.bench_keys, self.bench_notes, self.env_info = [], [], {}
        self.section("env", self.env)
        self.gpu = self.gpu or self.force
        no_gpu = {"status": "skipped", "key": "no GPU"}
        self.section("gpu tests", self.gpu_tests if self.gpu else lambda: dict(no_gpu))
        self.section("memcheck", (lambda: self.sanitizer("memcheck")) if self.gpu else lambda: dict(no_gpu))
        self.section("racecheck", (lambda: self.sanitizer("racecheck")) if self.gpu else lambda: dict(no_gpu))
        self.section("profile", self.profile if self.gpu else lambda: dict(no_gpu))
        self.section("bench", self.bench if self.gpu else lambda: dict(no_gpu))
        total = time.perf_counter() - self.t0
        summary = {"total_s": round(total, 1), "sections": self.rows, "env": self.env_info,
                   "bench_key_ratios": self.bench_keys, "bench_notes": self.bench_notes}
        (self.out / "check_summary.json").write_text(json.dumps(summary, indent=1, default=str))
        self.log.close()
        print(self.final_table(total))
        if not self.gpu:
            print(f"fastcnn check: nothing was checked: no GPU here ({self.no_gpu_reason()})", file=sys.stderr)
            return 1
        bad = [r for r in self.rows if r["status"] not in ("ok", "ok*", "skipped", "no GPU")]
        return 1 if bad else 0

    def no_gpu_reason(self) -> str:
        """Why the env section found no GPU: the CUDA backend's reason, else nvidia-smi's."""
        backends = self.env_info.get("backends")
        if isinstance(backends, dict) and backends.get("cuda"):
            return str(backends["cuda"])
        return "nvidia-smi -L lists none and CuPy sees none"

    def final_table(self, total: float) -> str:
        lines = [""]
        if self.bench_keys:
            lines.append("bench key figures (ratio to the baseline measured in the same run, same card):")
            lines += [f"  {k:<36} {v}" for k, v in self.bench_keys]
            lines += [f"  note: {n[:150]}" for n in self.bench_notes]
        lines.append(f"{'section':<10} | {'status':<8} | {'s':>6} | key numbers")
        lines.append("-" * 100)
        for r in self.rows:
            lines.append(f"{r['section']:<10} | {r['status']:<8} | {r['seconds']:6.1f} | {r.get('key', '')[:300]}")
        lines.append(f"total {total:.0f} s; files in {self.out}")
        return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fastcnn.cli.common import output_folder, positive_float
    parser.add_argument("--out", type=output_folder, default=os.environ.get("OUT") or "gpu_check_out",
                        help="folder for logs and results (default $OUT or ./gpu_check_out)")
    parser.add_argument("--total", type=positive_float, default=290.0, metavar="SECONDS",
                        help="time budget for all sections together (default 290)")
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS,
                        help="skip a section (repeatable)")
    parser.add_argument("--python", default=sys.executable, help="the Python the sections run under")
    parser.add_argument("--force", action="store_true",
                        help="run the GPU sections even where no GPU is seen (to test this script)")


def run(args) -> int:
    return Check(Path(args.out), args.total, args.python, args.skip,
                 force=getattr(args, "force", False)).run()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastcnn check", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
