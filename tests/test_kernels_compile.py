"""Every kernels/*.cu compiles for sm_90 and sm_80 with no errors and no register spills.

Runs on the CPU (no GPU needed).  Each source is expanded exactly as the backend
expands it (``_launch.kernel_source``: local includes pasted in), compiled with
``-DFASTCNN_INSTANTIATE`` so that each file's explicit-instantiation block emits
its template kernels, by nvcc (``-cubin -Xptxas -v``) for sm_90 and sm_80 and,
where cuda.core is installed, by NVRTC (the compiler CuPy uses at run time) for
sm_90.  Registers, shared memory and spills of every kernel are printed (see them
with ``pytest -s``) and repeated in the failure message.
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import re
import shutil
import subprocess

import pytest

from fastcnn import _paths
from fastcnn.backend.cuda import _launch

SOURCES = sorted(p.name for p in _paths.KERNEL_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
try:
    from cuda.core import Program, ProgramOptions
except Exception:  # cuda.core missing or unusable
    Program = ProgramOptions = None

TARGETS = [("nvcc", "sm_90"), ("nvcc", "sm_80"), ("nvrtc", "sm_90")]
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> list[dict]:
    """One dict per kernel: name, regs, smem, stack, spill_stores, spill_loads."""
    kernels, current = [], None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = {"name": m.group(1), "regs": None, "smem": 0, "stack": 0,
                       "spill_stores": 0, "spill_loads": 0}
            kernels.append(current)
        elif current is not None and (m := _SPILL.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := _USED.search(line)):
            current.update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
    return kernels


def compile_source(filename: str, tool: str, arch: str, tmp_path) -> str:
    """The ptxas -v log of one compilation; raises AssertionError with the log on failure."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = _launch.kernel_source(filename)
    if tool == "nvcc":
        src = tmp_path / filename
        src.write_text(source)
        cmd = [NVCC, "-cubin", f"-arch={arch}", *_launch.COMPILE_OPTIONS, "-DFASTCNN_INSTANTIATE",
               "-Xptxas", "-v", str(src), "-o", str(tmp_path / (filename + f".{arch}.cubin"))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"nvcc failed on {filename} for {arch}:\n{log}"
        return log
    options = ProgramOptions(arch=arch, std="c++17", ptxas_options=["-v"], define_macro="FASTCNN_INSTANTIATE")
    log = io.StringIO()
    try:
        Program(source, "c++", options).compile("cubin", logs=log)
    except Exception as exc:
        raise AssertionError(f"NVRTC failed on {filename} for {arch}: {exc}\n{log.getvalue()}") from exc
    return log.getvalue()


def table(filename: str, tool: str, arch: str, kernels: list[dict]) -> str:
    rows = [f"{filename} [{tool} {arch}]  kernel: regs / smem bytes / stack / spill st+ld"]
    for k in kernels:
        rows.append(f"  {k['name']:<60} {k['regs']!s:>4} {k['smem']:>6} {k['stack']:>4} "
                    f"{k['spill_stores']}+{k['spill_loads']}")
    return "\n".join(rows)


def _available(tool: str) -> bool:
    return NVCC is not None if tool == "nvcc" else Program is not None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """All compilations at once, on every core: {(file, tool, arch): log or the exception}."""
    jobs = [(f, t, a) for f in SOURCES for t, a in TARGETS if _available(t)]
    root = tmp_path_factory.mktemp("kernels")

    def run(job):
        f, t, a = job
        try:
            return compile_source(f, t, a, root / f"{t}-{a}")
        except AssertionError as exc:
            return exc
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(jobs, pool.map(run, jobs)))


@pytest.mark.parametrize("tool,arch", TARGETS, ids=[f"{t}-{a}" for t, a in TARGETS])
@pytest.mark.parametrize("filename", SOURCES)
def test_kernel_file_compiles_without_spills(filename, tool, arch, compiled):
    if tool == "nvcc" and NVCC is None:
        if Program is None:
            pytest.skip("neither nvcc nor cuda.core is available to compile CUDA C")
        pytest.skip("nvcc not on PATH (the NVRTC case covers this file)")
    if tool == "nvrtc" and Program is None:
        if NVCC is None:
            pytest.skip("neither nvcc nor cuda.core is available to compile CUDA C")
        pytest.skip("cuda.core not installed (the nvcc cases cover this file)")
    log = compiled[(filename, tool, arch)]
    if isinstance(log, AssertionError):
        raise log
    kernels = parse_ptxas(log)
    report = table(filename, tool, arch, kernels)
    print("\n" + report)
    assert kernels, f"{filename}: no kernel was compiled (missing FASTCNN_INSTANTIATE block?)\n{log}"
    spilling = [k["name"] for k in kernels if k["spill_stores"] or k["spill_loads"]]
    assert not spilling, f"{filename} [{tool} {arch}]: register spills in {spilling}\n{report}"
    assert all(k["regs"] is not None for k in kernels), f"could not parse ptxas output\n{log}"


def test_every_source_is_listed():
    assert SOURCES, f"no kernels/*.cu found in {_paths.KERNEL_DIR}"


def _name_expression_modules():
    from fastcnn.backend.cuda import conv, conv_direct, gemm, pool
    return {"conv.cu": conv.NAME_EXPRESSIONS, "conv_direct.cu": conv_direct.NAME_EXPRESSIONS,
            "gemm.cu": gemm.NAME_EXPRESSIONS, "pool.cu": pool.NAME_EXPRESSIONS}


@pytest.mark.parametrize("filename", sorted(_name_expression_modules()))
def test_name_expressions_resolve_under_nvrtc(filename):
    """The template instances the backend asks CuPy for by name (NAME_EXPRESSIONS, e.g.
    "conv_fprop_implicit<6, 2>") exist in the source as written: NVRTC compiles the file
    without FASTCNN_INSTANTIATE and resolves each name, as CuPy's RawModule does on a GPU."""
    if Program is None:
        pytest.skip("cuda.core (NVRTC) is not installed")
    names = _name_expression_modules()[filename]
    options = ProgramOptions(arch="sm_90", std="c++17")
    program = Program(_launch.kernel_source(filename), "c++", options)
    program.compile("cubin", name_expressions=names)   # raises naming the expression that fails
