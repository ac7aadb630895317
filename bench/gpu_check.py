"""The one GPU check script: gpu tests, compute-sanitizer, a quick benchmark, one table.

    PYTHONPATH=$PWD python3 bench/gpu_check.py [--out DIR] [--total SECONDS] [--skip SECTION]

A thin entry to fastcnn.check (the same as `python -m fastcnn check`); works from a
bare checkout without installing fastcnn.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastcnn import check  # noqa: E402

if __name__ == "__main__":
    sys.exit(check.main())
