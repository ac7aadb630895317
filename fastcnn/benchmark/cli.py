"""The command line: ``fastcnn bench`` / ``python -m fastcnn.benchmark``."""
from __future__ import annotations

import argparse
import sys

from .report import Report
from .workloads import GROUPS
from .cases import TARGETS, specs
from .runner import Options, QUICK_BUDGET_S, _select, run_benchmarks


# ------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, skip the largest cases, target cases first, no new "
                             f"case after {QUICK_BUDGET_S} s (meant to fit 3 minutes on an H100)")
    parser.add_argument("--filter", metavar="REGEX",
                        help="only cases whose 'group case impl' matches (ceilings always run)")
    parser.add_argument("--group", action="append", choices=GROUPS + ("distributed",), dest="groups",
                        help="run only these groups (repeatable); default all but distributed (run that "
                             "one alone, under mpirun: see docs/distributed.md)")
    from fastcnn.cli.common import nonnegative_int, output_file, positive_float, positive_int
    parser.add_argument("--json", type=output_file, metavar="FILE", help="write the results and header as JSON")
    parser.add_argument("--markdown", type=output_file, metavar="FILE", help="write a markdown table")
    parser.add_argument("--plot", type=output_file, metavar="FILE", help="write a PNG bar chart of the ratios")
    parser.add_argument("--repeats", type=positive_int, help="timed repeats per case (default 30, quick 10)")
    parser.add_argument("--warmup", type=nonnegative_int, help="untimed warm-up calls per case")
    parser.add_argument("--budget", type=positive_float, metavar="SECONDS",
                        help="start no new case after this many seconds (default: none; "
                             f"{QUICK_BUDGET_S} with --quick)")
    parser.add_argument("--priority", metavar="REGEX",
                        help="run matching cases first (default with --quick: the cases of the "
                             "stated goals)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing each fastcnn output with the baseline's before timing")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")


def run(args) -> int:
    budget = getattr(args, "budget", None)
    priority = getattr(args, "priority", None)
    if getattr(args, "quick", False):
        budget = QUICK_BUDGET_S if budget is None else budget
        priority = TARGETS if priority is None else priority
    opts = Options(quick=getattr(args, "quick", False), filter=getattr(args, "filter", None),
                   groups=tuple(getattr(args, "groups", None) or GROUPS),
                   repeats=getattr(args, "repeats", None), warmup=getattr(args, "warmup", None),
                   budget_s=budget, priority=priority, progress_json=getattr(args, "json", None),
                   check=not getattr(args, "no_check", False))
    if "distributed" in opts.groups:   # every rank of an MPI world at once: a module of its own
        from . import distributed
        return distributed.run(args, opts)
    if getattr(args, "list", False):
        for group in opts.groups:
            for s in _select(specs(group, opts.quick), opts.filter):
                print(f"{s.group:8s} {s.case:28s} {s.shape:36s} {s.impl}")
        return 0
    return emit(run_benchmarks(opts), args)


def emit(report: Report, args) -> int:
    """Print the report's table and write the files asked for; 1 when nothing was measured."""
    print(report.table())
    for path, write in ((getattr(args, "json", None), report.write_json),
                        (getattr(args, "markdown", None), report.write_markdown)):
        if path:
            write(path)
            print(f"written: {path}")
    if getattr(args, "plot", None):
        print(report.plot(args.plot))
    measured = [r for r in report.results if r.figure]
    return 0 if measured else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastcnn bench", description=sys.modules[__package__].__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
