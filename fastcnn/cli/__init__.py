"""The ``fastcnn`` command: info | kernels | summary | train | evaluate | predict | profile | bench | check.

    fastcnn info                         versions, CPU, GPU, which backends are usable (and why not)
    fastcnn summary lenet5|alexnet       the Keras-style layer table
    fastcnn train lenet5 [...]           train with a live progress bar, write history/weights/plot
    fastcnn evaluate / predict ...       saved weights on a data set / on image files
    fastcnn bench ... / fastcnn check ...  delegated to fastcnn.benchmark / fastcnn.check

``main(argv)`` returns the exit code: 0 done, 1 a clear failure (missing data, unusable
device, ...), 2 bad usage, 130 interrupted (after saving a checkpoint).
"""
from .common import UsageError  # noqa: F401
from .evaluate import confusion_matrix, top_k_accuracy  # noqa: F401
from .main import build_parser, main  # noqa: F401
