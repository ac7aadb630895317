"""Every kernels/*.cu compiles for sm_90 and sm_80 with no errors and no register spills.

Runs on the CPU (no GPU needed).  Each source is expanded exactly as the backend
expands it (``_launch.kernel_source``: local includes pasted in), compiled with
``-DFASTCNN_INSTANTIATE`` so that each file's explicit-instantiation block emits
its template kernels, by nvcc (``-cubin -Xptxas -v``) for sm_90 and sm_80 and,
where cuda.core is installed, by NVRTC (the compiler CuPy uses at run time) for
sm_90.  Registers, shared memory and spills of every kernel are printed (see them
with ``pytest -s``) and repeated in the failure message.

The tensor-core files (TENSOR_CORE_SOURCES) are also read back as SASS (cuobjdump
-sass from the nvidia-cuda-cuobjdump/nvdisasm 13.2 wheels, which read nvcc 13.0's
cubins; skipped where they are not installed): every matrix kernel must issue its
element type's HMMA (HMMA.1688.F32.TF32 for the *_tf32 kernels, HMMA.16816.F32.BF16 for
the *_bf16 ones) inside a loop (a backward branch spans it: the main loop), and no kernel
(the split-K reduces included) any local-memory traffic (LDL/STL).
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

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


def cubin_path(tmp_path, filename: str, arch: str) -> Path:
    return Path(tmp_path) / (filename + f".{arch}.cubin")


def compile_source(filename: str, tool: str, arch: str, tmp_path) -> str:
    """The ptxas -v log of one compilation; raises AssertionError with the log on failure."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = _launch.kernel_source(filename)
    if tool == "nvcc":
        src = tmp_path / filename
        src.write_text(source)
        cmd = [NVCC, "-cubin", f"-arch={arch}", *_launch.COMPILE_OPTIONS, "-DFASTCNN_INSTANTIATE",
               "-Xptxas", "-v", str(src), "-o", str(cubin_path(tmp_path, filename, arch))]
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
def kernel_root(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture(scope="module")
def compiled(kernel_root):
    """All compilations at once, on every core: {(file, tool, arch): log or the exception};
    nvcc's cubins stay in kernel_root / "nvcc-<arch>"."""
    jobs = [(f, t, a) for f in SOURCES for t, a in TARGETS if _available(t)]
    root = kernel_root

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
    from fastcnn.backend.cuda import conv, conv_direct, gemm, gemm_tc, pool, step
    return {"conv.cu": conv.NAME_EXPRESSIONS, "conv_direct.cu": conv_direct.NAME_EXPRESSIONS,
            "gemm.cu": gemm.NAME_EXPRESSIONS, "gemm_tc.cu": gemm_tc.NAME_EXPRESSIONS,
            "pool.cu": pool.NAME_EXPRESSIONS, **step.NAME_EXPRESSIONS}


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


# ---------------------------------------------------------------- SASS of the tensor-core kernels

TENSOR_CORE_SOURCES = ["conv_tc.cu", "gemm_tc.cu"]
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNCTION = re.compile(r"Function : (\S+)")


def find_cuobjdump() -> str | None:
    """cuobjdump on PATH, else the one of the nvidia-cuda-cuobjdump wheel (nvidia/*/bin)."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for path in sorted(Path(root).glob("*/bin/cuobjdump")):
            return str(path)
    return None


def read_sass(cubin: Path) -> dict[str, list[tuple[int, str]]]:
    """{kernel: [(address, instruction)]} of a cubin, by ``cuobjdump -sass`` (nvdisasm from
    the same directory put on PATH: cuobjdump calls it)."""
    tool = find_cuobjdump()
    env = dict(os.environ, PATH=str(Path(tool).parent) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"cuobjdump failed on {cubin}:\n{proc.stdout}{proc.stderr}"
    kernels, current = {}, None
    for line in proc.stdout.splitlines():
        if m := _FUNCTION.search(line):
            current = kernels.setdefault(m.group(1), [])
        elif current is not None and (m := _SASS_LINE.search(line)):
            current.append((int(m.group(1), 16), m.group(2)))
    return kernels


HMMA_TF32 = r"HMMA\.1688\.F32\.TF32"
HMMA_BF16 = r"HMMA\.16816\.F32\.BF16"


def expected_hmma(kernel: str) -> str | None:
    """The HMMA a tensor-core kernel's main loop issues, by its (mangled) name; None for
    the split-K reduces, which multiply nothing."""
    if "splitk_reduce" in kernel:
        return None
    return HMMA_BF16 if "bf16" in kernel else HMMA_TF32


def sass_facts(code: list[tuple[int, str]], hmma_pattern: str = HMMA_TF32) -> dict:
    """HMMA count, HMMA inside a loop (a backward branch's span), local-memory instructions."""
    hmma = [a for a, ins in code if re.search(rf"\b{hmma_pattern}\b", ins)]
    loops = []
    for a, ins in code:
        if m := re.search(r"\bBRA\s+(?:`?\(?)0x([0-9a-f]+)", ins):
            target = int(m.group(1), 16)
            if target <= a:
                loops.append((target, a))
    local = [ins for _, ins in code if re.search(r"\b(LDL|STL)(\.|\b)", ins)]
    in_loop = [h for h in hmma if any(t <= h <= e for t, e in loops)]
    return {"hmma": len(hmma), "hmma_in_loop": len(in_loop), "loops": len(loops), "local": local}


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("filename", TENSOR_CORE_SOURCES)
def test_tensor_core_kernels_issue_hmma_in_their_main_loop(filename, arch, compiled, kernel_root):
    if NVCC is None:
        pytest.skip("nvcc not on PATH: no cubin to read")
    if find_cuobjdump() is None:
        pytest.skip("cuobjdump not installed (pip install nvidia-cuda-cuobjdump==13.2.* nvidia-cuda-nvdisasm==13.2.*)")
    log = compiled[(filename, "nvcc", arch)]
    if isinstance(log, AssertionError):
        raise log
    kernels = read_sass(cubin_path(kernel_root / f"nvcc-{arch}", filename, arch))
    assert kernels, f"{filename} [{arch}]: cuobjdump found no kernel"
    resources = {k["name"]: k for k in parse_ptxas(log)}
    rows = [f"{filename} [{arch}] SASS  kernel: its HMMA (in loops) / loops / LDL+STL / regs / smem"]
    for name, code in sorted(kernels.items()):
        facts, r = sass_facts(code, expected_hmma(name) or HMMA_TF32), resources.get(name, {})
        rows.append(f"  {name:<60} {facts['hmma']:>4} ({facts['hmma_in_loop']}) {facts['loops']:>3} "
                    f"{len(facts['local']):>3} {r.get('regs')!s:>4} {r.get('smem', '?')!s:>6}")
    report = "\n".join(rows)
    print("\n" + report)
    assert set(kernels) == set(resources), f"cuobjdump and ptxas list different kernels\n{report}"
    for name, code in kernels.items():
        pattern = expected_hmma(name)
        facts = sass_facts(code, pattern or HMMA_TF32)
        if pattern is not None:
            assert facts["hmma_in_loop"] > 0, f"{name}: no {pattern} inside a loop\n{report}"
        assert not facts["local"], f"{name}: local-memory traffic {facts['local'][:5]}\n{report}"
    assert any(expected_hmma(name) == HMMA_BF16 for name in kernels), f"{filename}: no bf16 kernel\n{report}"


def test_sass_reading_finds_loops_and_local_memory():
    """sass_facts on hand-written SASS: a loop around an HMMA, one outside, an STL."""
    code = [(0x10, "MOV R1, c[0x0][0x28]"), (0x20, "HMMA.1688.F32.TF32 R4, R8, R12, R4"),
            (0x30, "@P0 BRA 0x20"), (0x40, "HMMA.1688.F32.TF32 R4, R8, R12, R4"), (0x50, "STL [R1], R4"),
            (0x60, "BRA 0x70"), (0x70, "EXIT")]
    assert sass_facts(code) == {"hmma": 2, "hmma_in_loop": 1, "loops": 1, "local": ["STL [R1], R4"]}
    assert sass_facts(code[3:])["hmma_in_loop"] == 0
    bf16 = [(0x10, "HMMA.16816.F32.BF16 R4, R8, R12, R4"), (0x20, "@P0 BRA 0x10")]
    assert sass_facts(bf16, HMMA_BF16)["hmma_in_loop"] == 1 and sass_facts(bf16)["hmma"] == 0
    assert expected_hmma("_Z9gemm_bf16ILi0ELi1ELi1EEvPK7fc_bf16S2_PN11fc_gemm_outIXT1_EE1TEiiiPKfii") == HMMA_BF16
    assert expected_hmma("conv_fprop_tf32") == HMMA_TF32 and expected_hmma("gemm_splitk_reduce_bf16") is None
