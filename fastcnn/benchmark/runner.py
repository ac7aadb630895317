"""Running the cases: check, time, collect the results of one run."""
from __future__ import annotations

import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Iterable

from .. import gputime
from .report import Report, Result, _try, environment
from .workloads import BLOCKED_GROUPS, GROUPS
from .cases import GPU_GROUPS, Spec, _figure, specs


QUICK_BUDGET_S = 150  # --quick starts no case after this: the run ends within 3 minutes


# ------------------------------------------------------------------ running
@dataclass
class Options:
    quick: bool = False
    filter: str | None = None
    groups: tuple = GROUPS
    repeats: int | None = None
    warmup: int | None = None
    budget_s: float | None = None
    priority: str | None = None
    progress_json: str | None = None   # rewritten after every case, so a killed run leaves its figures
    check: bool = True
    verbose: bool = True
    run_id: str | None = None


def _select(all_specs: Iterable[Spec], pattern: str | None) -> list[Spec]:
    if not pattern:
        return list(all_specs)
    rx = re.compile(pattern, re.IGNORECASE)
    return [s for s in all_specs if rx.search(s.label())]


def run_spec(spec: Spec, opts: Options, run_id: str) -> Result:
    """Build, check and time one spec; any failure becomes the Result's ``error``."""
    res = Result(spec.group, spec.case, spec.shape, spec.impl, spec.role, spec.unit,
                 precision=spec.precision, compare_to=spec.compare_to, run_id=run_id, note=spec.note)
    quick = opts.quick
    repeats = opts.repeats or (10 if quick else 30)
    warmup = opts.warmup if opts.warmup is not None else (1 if quick else 5)
    max_s = 1.0 if quick else 5.0
    try:
        with spec.context():
            fn, sets, check = spec.make()
            note = getattr(fn, "note", None)
            if note:
                res.note = (res.note + "; " if res.note else "") + note
            if check is not None and opts.check:
                res.rel_err = check()
            if spec.lib == "cpu":
                t = gputime.time_cpu(lambda: fn(0), warmup=min(warmup, 2), repeats=repeats,
                                     max_seconds=max_s * 2)
            else:
                t = gputime.time_cuda(fn, sets=sets, warmup=warmup, repeats=repeats, lib=spec.lib,
                                      flush=spec.flush, max_seconds=max_s, block=spec.block)
            res.method = t.method
            if t.fallback:
                res.note = (res.note + "; " if res.note else "") + f"timed with events, not blocked: {t.fallback}"
        res.time_us = t.median_us
        res.repeats = t.repeats
        res.spread = t.spread
        res.figure = _figure(spec.unit, spec.work, t.median_us)
        if res.rel_err is not None and not (res.rel_err <= (1e-2 if spec.precision in ("tf32", "bf16") else 1e-3)):
            res.note = (res.note + "; " if res.note else "") + f"WRONG: rel err {res.rel_err:.2e}"
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}".strip()[:300]
        if opts.verbose:
            traceback.print_exc(limit=3, file=sys.stderr)
    finally:
        _free_memory(spec.lib)
    return res


CPU_BLOCK = 5   # host calls timed back to back per block (after one untimed call)


def run_cpu_specs(specs_: list[Spec], opts: Options, run_id: str) -> list[Result]:
    """Host cases of one comparison, each timed alone in blocks of whole repeats, the blocks in
    turn (A B B A ...): neither side's thread pool runs while the other is timed."""
    results, fns = [], []
    for spec in specs_:
        res = Result(spec.group, spec.case, spec.shape, spec.impl, spec.role, spec.unit,
                     precision=spec.precision, compare_to=spec.compare_to, run_id=run_id, note=spec.note)
        try:
            fn, _, _ = spec.make()
            if getattr(fn, "note", None):
                res.note = (res.note + "; " if res.note else "") + fn.note
            fns.append(lambda fn=fn: fn(0))
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}".strip()[:300]
            fns.append(None)
        results.append(res)
    live = [k for k, fn in enumerate(fns) if fn is not None]
    repeats = opts.repeats or (10 if opts.quick else 30)
    warmup = min(opts.warmup if opts.warmup is not None else 2, 2)
    try:
        timings = gputime.time_cpu_blocks([fns[k] for k in live], warmup=warmup, repeats=repeats,
                                          block=CPU_BLOCK, max_seconds=20.0 if opts.quick else 60.0)
    except Exception as exc:
        for k in live:
            results[k].error = f"{type(exc).__name__}: {exc}".strip()[:300]
        return results
    for k, t in zip(live, timings):
        spec, res = specs_[k], results[k]
        res.time_us, res.repeats, res.spread = t.median_us, t.repeats, t.spread
        res.method = t.method
        res.figure = _figure(spec.unit, spec.work, t.median_us)
        res.note = (res.note + "; " if res.note else "") + f"timed alone in blocks of {CPU_BLOCK}, taken in turn with the other rows of this case"
    return results


def _free_memory(lib):
    if lib == "cpu":
        return
    try:
        import cupy
        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    if lib == "torch":
        try:
            import torch
            torch.cuda.empty_cache()
        except Exception:
            pass


def _priority_patterns(priority: str) -> list:
    """'a|b|c' -> [a, b, c]: cases matching an earlier alternative run earlier."""
    try:
        return [re.compile(p, re.IGNORECASE) for p in priority.split("|")]
    except re.error:
        return [re.compile(priority, re.IGNORECASE)]


def run_benchmarks(opts: Options) -> Report:
    """Run the selected cases in one process and return the report of this run.

    Ceilings run first and are never filtered (every % of ceiling needs them); cases
    matching ``opts.priority`` run next (in the order of its '|' alternatives), then the rest, until ``opts.budget_s`` is
    spent.  Rows keep the canonical order whatever order the cases ran in."""
    header = environment(opts.run_id)
    header["mode"] = "quick" if opts.quick else "full"
    header["timing"] = gputime.METHODS_SUMMARY
    run_id = header["run_id"]
    gpu = gputime.cuda_available()
    results: list[tuple[int, Result]] = []
    t0 = time.perf_counter()
    groups = [g for g in GROUPS if g in opts.groups]
    if not gpu:
        skipped = [g for g in groups if g in GPU_GROUPS]
        if skipped:
            header["notes"].append(f"no CUDA GPU here: GPU groups {', '.join(skipped)} not run")
        groups = [g for g in groups if g not in GPU_GROUPS]
    queue: list[tuple[int, Spec]] = []
    for group in groups:
        try:
            group_specs = specs(group, opts.quick)
        except Exception as exc:
            results.append((len(queue), Result(group, f"{group} (listing)", "", "-", "fastcnn", "img/s",
                                               run_id=run_id, error=f"{type(exc).__name__}: {exc}"[:300])))
            continue
        if group != "ceiling":
            group_specs = _select(group_specs, opts.filter)
        queue += [(len(queue) + i, s) for i, s in enumerate(group_specs)]
    if opts.priority:
        ranks = _priority_patterns(opts.priority)

        def rank(spec):
            hits = [i for i, rx in enumerate(ranks) if rx.search(spec.label())]
            return hits[0] if hits else len(ranks)
        queue.sort(key=lambda item: (item[1].group != "ceiling", rank(item[1]), item[0]))
    not_run, done = [], set()
    for index, spec in queue:
        if index in done:
            continue
        if opts.budget_s is not None and time.perf_counter() - t0 > opts.budget_s:
            not_run.append(spec)
            continue
        if spec.lib == "cpu":  # host rows of one case: blocks in turn, so the load hits all alike
            batch = [(i, s) for i, s in queue if s.lib == "cpu" and s.case == spec.case and i not in done]
            ran = list(zip([i for i, _ in batch], run_cpu_specs([s for _, s in batch], opts, run_id)))
        else:
            ran = [(index, run_spec(spec, opts, run_id))]
        for i, res in ran:
            done.add(i)
            if not (res.error or "").startswith("NotApplicable"):  # e.g. Winograd on an 11x11 or strided layer: no row
                results.append((i, res))
        if opts.progress_json:
            try:
                header["elapsed_s"] = round(time.perf_counter() - t0, 1)
                Report([r for _, r in sorted(results, key=lambda item: item[0])], header).write_json(
                    opts.progress_json)
            except Exception:
                pass
        for i, res in ran:
            if opts.verbose:
                fig = f"{res.figure:.4g} {res.unit}" if res.figure else (res.error or "")[:80]
                print(f"  [{time.perf_counter() - t0:6.1f}s] {res.group} {res.case} {res.impl}: {fig}",
                      file=sys.stderr, flush=True)
    fell_back = [r for _, r in results
                 if r.group in BLOCKED_GROUPS and r.method and r.method != gputime.METHOD_BLOCKED]
    if fell_back:
        header["notes"].append(f"timing: {len(fell_back)} kernel cases timed with events, not blocked "
                               f"(host time counted; each says why in its note), e.g. "
                               f"{', '.join(f'{r.case} {r.impl}' for r in fell_back[:3])}")
    if not_run:
        header["notes"].append(f"time budget of {opts.budget_s:.0f} s spent: {len(not_run)} cases not run, "
                               f"e.g. {', '.join(s.label() for s in not_run[:3])}")
    header["elapsed_s"] = round(time.perf_counter() - t0, 1)
    load = _try(os.getloadavg)
    if load:
        header["load_avg"] = f"{header.get('load_avg', '?')} -> {' '.join(f'{v:.1f}' for v in load)}"
    return Report([r for _, r in sorted(results, key=lambda item: item[0])], header)
