"""Loss and accuracy curves as a PNG (matplotlib is an optional extra: ``pip install fastcnn[plot]``)."""
from __future__ import annotations

import os


class PlotUnavailable(ImportError):
    """matplotlib is not installed; the message says how to get it."""


def plot_history(history, path, title: str | None = None) -> str:
    """Draw loss (left) and accuracy (right) per epoch, training and validation, into ``path``.

    ``history`` is a Keras-style History, its ``.history`` dict, or a history.json
    dict ``{"epoch": [...], "history": {...}}``.  Returns the path written.
    """
    try:
        # The object-oriented API with the Agg canvas: no display, no global pyplot state.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise PlotUnavailable("plotting the curves needs matplotlib, which is not installed: "
                              "pip install 'fastcnn[plot]' (or pip install matplotlib)") from exc

    epochs = None
    if hasattr(history, "history"):
        history = history.history
    if "history" in history:
        epochs, history = history.get("epoch"), history["history"]
    n = max((len(v) for v in history.values()), default=0)
    if n == 0:
        raise ValueError("plot_history: the history holds no epochs")
    epochs = list(epochs) if epochs else list(range(1, n + 1))

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("loss", "accuracy")):
        for key, name, style in ((metric, "training", "-o"), ("val_" + metric, "validation", "-s")):
            values = history.get(key)
            if values:
                # None marks an epoch without this metric (validation added on resume)
                points = [(e, v) for e, v in zip(epochs, values) if v is not None]
                ax.plot([e for e, _ in points], [v for _, v in points], style, markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    path = os.fspath(path)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)  # never a half-written PNG
    return path
