"""fastcnn: train classic CNNs (LeNet-5, AlexNet) on hand-written CUDA kernels.

    import fastcnn
    model = fastcnn.models.lenet5()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=200, validation_data=(xv, yv))
"""
__version__ = "0.1.0"

from . import backend, config, functional, layers, losses, mixed_precision, models, optimizers  # noqa: F401
from .model import Sequential  # noqa: F401
from .seeding import manual_seed  # noqa: F401
from .tensor import Function, Parameter, Tensor, no_grad  # noqa: F401


def __getattr__(name):
    # fastcnn.kernels imports every kernel variant (CuPy, Numba: most of a second), so it is
    # imported on first use rather than by `import fastcnn`.
    if name == "kernels":
        import importlib
        return importlib.import_module(".kernels", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
