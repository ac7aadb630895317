"""fastcnn: train classic CNNs (LeNet-5, AlexNet) on hand-written CUDA kernels.

    import fastcnn
    model = fastcnn.models.lenet5()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=200, validation_data=(xv, yv))
"""
__version__ = "0.1.0"

from . import backend, config, functional, layers, losses, models, optimizers  # noqa: F401
from .backend import registry as kernels  # noqa: F401  (fastcnn.kernels.variants('matmul'))
from .model import Sequential  # noqa: F401
from .seeding import manual_seed  # noqa: F401
from .tensor import Function, Parameter, Tensor, no_grad  # noqa: F401
