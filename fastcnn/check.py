"""`fastcnn check`: the one GPU check of a source checkout (its bench/gpu_check.py).

The check runs the repository's GPU tests (tests/) and its compute-sanitizer workload
(bench/sanitize_step.py), which an installed wheel has neither of: this module finds the
checkout that fastcnn was imported from and hands over to its bench/gpu_check.py, or says
in one line what it needs.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

from . import _paths

SCRIPT = _paths.PACKAGE_DIR.parent / "bench" / "gpu_check.py"


def found() -> bool:
    """Whether the checkout's bench/gpu_check.py and tests/ are beside this fastcnn."""
    return SCRIPT.is_file() and (SCRIPT.parent.parent / "tests").is_dir()


def needs() -> str:
    return (f"fastcnn check: needs a source checkout of fastcnn (its tests/ and bench/gpu_check.py); "
            f"none beside {_paths.PACKAGE_DIR}: run `PYTHONPATH=$PWD python3 bench/gpu_check.py` "
            f"in a clone of the repository")


def gpu_check():
    """The checkout's bench/gpu_check.py as a module (loaded once)."""
    name = "fastcnn_gpu_check"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if found():
        gpu_check().add_arguments(parser)
    else:  # take any arguments of the check: what gets said is what is missing
        parser.parse_args = lambda args=None, namespace=None: parser.parse_known_args(args, namespace)[0]


def run(args) -> int:
    if not found():
        print(needs(), file=sys.stderr)
        return 1
    return gpu_check().run(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastcnn check", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
