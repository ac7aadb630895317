"""Keras-style layers: Conv2D, MaxPool2D, Flatten, Dense, Dropout, LRN, Activation, LeakyReLU,
the augmentation layers RandomCrop, RandomFlip and PCAColorNoise, and Input.

A layer knows its output shape from its input shape (``build``), owns its
Parameters (initialised by Keras's names: Glorot-uniform kernels and zero biases
by default) and calls the functional API in ``call``.  NHWC; ``input_shape`` and
``output_shape`` have the batch axis first as None (Keras 2's form), the shapes a
layer is built with and computes (``build``, ``compute_output_shape``) do not.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import distribution, dtypes, mixed_precision
from . import functional as F
from . import initializers
from . import profiler
from .seeding import next_seed
from .tensor import Function, Parameter


class Layer:
    """The base of every layer.  Keras's attributes and methods: ``name``, ``trainable``
    (False: the model's optimizer leaves this layer's weights alone), ``weights``,
    ``trainable_weights``, ``non_trainable_weights``, ``get_weights``/``set_weights``,
    ``input_shape``/``output_shape`` with the batch axis as None, ``get_config`` /
    ``from_config``, ``count_params``; ``dtype=`` a dtype policy (fastcnn.mixed_precision:
    'float32' or 'mixed_bfloat16'; None: the global one), read as ``dtype_policy``,
    ``compute_dtype``, ``variable_dtype``."""
    type_name = "Layer"  # as Keras's summary shows it
    default_name = "layer"
    activation = None

    @property
    def offset(self) -> int:
        """Random layers: the global index of the batch's first sample (0, or where this
        process's slice of the batch starts in data-parallel training: fastcnn.distribution)."""
        return distribution.sample_offset()

    def __init__(self, input_shape=None, name=None, trainable=True, dtype=None):
        self._input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.name = name
        self.trainable = bool(trainable)
        self.dtype_policy = mixed_precision.get(dtype)  # None: the global policy, as Keras
        self._output_shape = None
        self.params: list[Parameter] = []
        self.built = False

    def build(self, input_shape):
        self._input_shape = tuple(int(d) for d in input_shape)
        self._output_shape = self.compute_output_shape(self._input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    @property
    def input_shape(self):
        """(None,) + the shape of one input, as Keras 2 gives it; None before it is known."""
        return None if self._input_shape is None else (None,) + self._input_shape

    @property
    def output_shape(self):
        return None if self._output_shape is None else (None,) + self._output_shape

    # ---- weights, as Keras's layers give them
    @property
    def weights(self) -> list[Parameter]:
        return list(self.params)

    @property
    def trainable_weights(self) -> list[Parameter]:
        return list(self.params) if self.trainable else []

    @property
    def non_trainable_weights(self) -> list[Parameter]:
        return [] if self.trainable else list(self.params)

    def _param(self, name):
        found = [p for p in self.params if p.name == name]
        if not found:
            raise AttributeError(f"layer {self.name!r} ({self.type_name}) has no {name}"
                                 + ("" if self.built else " yet: it is not built"))
        return found[0]

    kernel = property(lambda self: self._param("kernel"))
    bias = property(lambda self: self._param("bias"))

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of this layer's weights (kernel, then bias)."""
        return [p.numpy().copy() for p in self.params]

    def set_weights(self, weights) -> None:
        """Copy ``weights`` (a list as get_weights gives) into this layer's weights, in place."""
        weights = list(weights)
        if len(weights) != len(self.params):
            raise ValueError(f"layer {self.name!r} has {len(self.params)} weights, set_weights got {len(weights)}"
                             + ("" if self.built else " (the layer is not built yet)"))
        arrays = [np.asarray(w) for w in weights]
        for p, w in zip(self.params, arrays):
            if w.shape != p.shape:
                raise ValueError(f"weight {self.name}/{p.name} has shape {p.shape}, got an array of shape {w.shape}")
        for p, w in zip(self.params, arrays):
            _assign(p.data, w)
            if p.bf16_view is not None:   # the model's bfloat16 copy, which this layer computes with
                _assign(p.bf16_view, np.asarray(w, np.float32))

    compute_dtype = property(lambda self: self.dtype_policy.compute_dtype)
    variable_dtype = property(lambda self: self.dtype_policy.variable_dtype)
    dtype = variable_dtype  # Keras: a layer's dtype is its variables'

    def count_params(self) -> int:
        return sum(int(p.size) for p in self.params)

    def weight_names(self) -> list[str]:
        return [f"{self.name}/{p.name}" for p in self.params]

    # ---- configuration: the constructor's arguments, as Keras names them
    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable,
                "dtype": mixed_precision.serialize(self.dtype_policy)}

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        return cls(**config)

    def __call__(self, x, training=False, activation="default"):
        activation = self.activation if activation == "default" else activation
        if profiler.state.profile is not None:  # name this layer's calls in the profile
            with profiler.scope(self.name, "forward"):
                return self.call(self._autocast(x), training, activation)
        return self.call(self._autocast(x), training, activation)

    def _autocast(self, x):
        """x in this layer's compute dtype: float inputs of the other float type are cast (Keras's
        autocast); under float32 with float32 inputs nothing happens."""
        x = F._tensor(x)
        if x.dtype != mixed_precision.compute_dtype(self.dtype_policy) and x.dtype in dtypes.NAMES.values():
            x = F.cast(x, self.compute_dtype)
        return x

    def call(self, x, training, activation):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, output_shape={self.output_shape})"


def _assign(data, value) -> None:
    """data[...] = value in place, wherever data lives (NumPy, CuPy or a Numba device array)."""
    value = np.ascontiguousarray(value, dtype=data.dtype)
    if isinstance(data, np.ndarray):
        data[...] = value
    elif hasattr(data, "set"):   # CuPy
        data.set(value)
    else:                        # Numba device array
        data.copy_to_device(value)


class InputLayer(Layer):
    """Declares the shape of one input (without the batch axis); as the first element of a
    Sequential it gives the model its input shape and is not itself one of model.layers
    (Keras's ``keras.Input(shape=...)``)."""
    type_name = "InputLayer"
    default_name = "input_layer"

    def __init__(self, shape=None, name=None, batch_shape=None, input_shape=None):
        shape = shape if shape is not None else input_shape
        if shape is None and batch_shape is not None:
            shape = tuple(batch_shape)[1:]
        if shape is None or any(d is None or int(d) < 1 for d in shape):
            raise ValueError(f"Input needs shape=(height, width, channels) or (features,) of positive sizes, "
                             f"got {shape!r}")
        super().__init__(shape, name)

    def get_config(self):
        return {"name": self.name, "shape": self._input_shape}


def Input(shape=None, name=None, batch_shape=None):  # noqa: N802  (Keras's spelling)
    """``Input(shape=(28, 28, 1))``: the first element of a Sequential, declaring its input shape."""
    return InputLayer(shape, name=name, batch_shape=batch_shape)


def _check_activation(activation):
    if activation not in F.ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use one of {F.ACTIVATIONS}")
    return None if activation == "linear" else activation


class Conv2D(Layer):
    """2-D convolution over NHWC input with HWIO kernels (Keras's layout).

    ``groups`` > 1 splits channels into independent groups, as the two towers of the
    original AlexNet did.
    """
    type_name = "Conv2D"
    default_name = "conv2d"

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None,
                 use_bias=True, input_shape=None, groups=1, name=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", trainable=True, dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        self.filters = int(filters)
        self.kernel_size = F.pair(kernel_size, "kernel_size")
        self.strides = F.pair(strides, "strides")
        self.padding = padding
        self.activation = _check_activation(activation)
        self.use_bias = use_bias
        self.groups = int(groups)
        self.kernel_initializer = initializers.canonical(kernel_initializer)
        self.bias_initializer = initializers.canonical(bias_initializer)
        if self.filters < 1 or self.groups < 1 or self.filters % self.groups:
            raise ValueError(f"filters ({filters}) must be a positive multiple of groups ({groups})")

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D expects input of shape (height, width, channels), got {tuple(input_shape)}")
        channels = input_shape[2]
        if channels % self.groups:
            raise ValueError(f"Conv2D: {channels} input channels do not split into {self.groups} groups")
        kh, kw = self.kernel_size
        self.params = [Parameter(initializers.initialize(self.kernel_initializer,
                                                         (kh, kw, channels // self.groups, self.filters)), "kernel")]
        if self.use_bias:
            self.params.append(Parameter(initializers.initialize(self.bias_initializer, (self.filters,)), "bias"))
        super().build(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "activation": self.activation or "linear",
                "use_bias": self.use_bias, "groups": self.groups,
                "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer}

    def compute_output_shape(self, input_shape):
        pads = F.resolve_padding(self.padding, input_shape[:2], self.kernel_size, self.strides)
        p, q = F.output_size(input_shape[:2], self.kernel_size, self.strides, pads, "kernel")
        return (p, q, self.filters)

    def call(self, x, training, activation):
        w = F.compute_weight(self.params[0], x.dtype)
        b = self.params[1] if self.use_bias else None
        if self.groups == 1:
            return F.conv2d(x, w, b, self.strides, self.padding, activation)
        cin, cout = w.shape[2], self.filters // self.groups
        parts = []
        for g in range(self.groups):
            xg = ChannelSlice(g * cin, (g + 1) * cin)(x)
            wg = ChannelSlice(g * cout, (g + 1) * cout)(w)
            bg = ChannelSlice(g * cout, (g + 1) * cout)(b) if b is not None else None
            parts.append(F.conv2d(xg, wg, bg, self.strides, self.padding,
                                  "relu" if activation == "relu" else None))
        y = ChannelConcat()(*parts)
        return F.softmax(y) if activation == "softmax" else y


class ChannelSlice(Function):
    """x[..., start:stop] as a contiguous array (group convolution only)."""

    def __init__(self, start, stop):
        self.start, self.stop = start, stop

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        width = self.stop - self.start
        y = self.B.xp.empty(x.shape[:-1] + (width,), x.dtype)
        self.B.copy_channels(y, x, 0, self.start, width)
        return y

    def backward(self, gy):
        gx = self.B.xp.zeros(self.shape, gy.dtype)  # a memset, not a kernel (a bf16 weight's gradient is fp32)
        self.B.copy_channels(gx, gy, self.start, 0, self.stop - self.start)
        return gx


class ChannelConcat(Function):
    """The inputs side by side along the last (channel) axis (group convolution only)."""

    def forward(self, *xs):
        self.widths = [x.shape[-1] for x in xs]
        y = self.B.xp.empty(xs[0].shape[:-1] + (sum(self.widths),), xs[0].dtype)
        start = 0
        for x, width in zip(xs, self.widths):
            self.B.copy_channels(y, x, start, 0, width)
            start += width
        return y

    def backward(self, gy):
        grads, start = [], 0
        for width in self.widths:
            g = self.B.xp.empty(gy.shape[:-1] + (width,), gy.dtype)
            self.B.copy_channels(g, gy, 0, start, width)
            grads.append(g)
            start += width
        return tuple(grads)


class MaxPool2D(Layer):
    type_name = "MaxPooling2D"
    default_name = "max_pooling2d"

    def __init__(self, pool_size=2, strides=None, padding="valid", input_shape=None, name=None, trainable=True,
                 dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        self.pool_size = F.pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else F.pair(strides, "strides")
        self.padding = padding

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"MaxPool2D expects input of shape (height, width, channels), got {input_shape}")
        pads = F.resolve_padding(self.padding, input_shape[:2], self.pool_size, self.strides)
        p, q = F.output_size(input_shape[:2], self.pool_size, self.strides, pads, "pool")
        return (p, q, input_shape[2])

    def call(self, x, training, activation):
        return F.max_pool2d(x, self.pool_size, self.strides, self.padding)


MaxPooling2D = MaxPool2D


class Flatten(Layer):
    type_name = "Flatten"
    default_name = "flatten"

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def call(self, x, training, activation):
        return F.flatten(x)


class Dense(Layer):
    type_name = "Dense"
    default_name = "dense"

    def __init__(self, units, activation=None, use_bias=True, input_shape=None, name=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", trainable=True, dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        self.units = int(units)
        if self.units < 1:
            raise ValueError(f"Dense units must be positive, got {units}")
        self.activation = _check_activation(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.canonical(kernel_initializer)
        self.bias_initializer = initializers.canonical(bias_initializer)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation or "linear",
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}

    def build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Dense expects flat input (features,), got {tuple(input_shape)}; add a Flatten layer")
        self.params = [Parameter(initializers.initialize(self.kernel_initializer, (input_shape[0], self.units)),
                                 "kernel")]
        if self.use_bias:
            self.params.append(Parameter(initializers.initialize(self.bias_initializer, (self.units,)), "bias"))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def call(self, x, training, activation):
        b = self.params[1] if self.use_bias else None
        return F.dense(x, self.params[0], b, activation)


class Dropout(Layer):
    """Inverted dropout; the mask comes from (seed, training step, element index)."""
    type_name = "Dropout"
    default_name = "dropout"

    def __init__(self, rate, seed=None, input_shape=None, name=None, trainable=True, dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = next_seed() if seed is None else int(seed)
        self.step = None  # int32 array (1,) on the device, bound by the model: the training step

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}

    def call(self, x, training, activation):
        return F.dropout(x, self.rate, training, self.seed, self.step, self.offset)


class RandomCrop(Layer):
    """Training: a random height x width window of each image, new every step (AlexNet: 227x227
    out of 256x256); inference: the centre window.  As Keras's RandomCrop (which resizes
    smaller inputs: here they are an error)."""
    type_name = "RandomCrop"
    default_name = "random_crop"

    def __init__(self, height, width, seed=None, input_shape=None, name=None, trainable=True, dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        self.height, self.width = F.pair((height, width), "RandomCrop height and width")
        self.seed = next_seed() if seed is None else int(seed)
        self.step = None  # int32 array (1,) on the device, bound by the model: the training step

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width, "seed": self.seed}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] < self.height or input_shape[1] < self.width:
            raise ValueError(f"RandomCrop({self.height}, {self.width}) needs images of at least that "
                             f"size, (height, width, channels); got {tuple(input_shape)}")
        return (self.height, self.width, input_shape[2])

    def call(self, x, training, activation):
        if not training and x.shape[1:3] == (self.height, self.width):
            return x
        return F.crop(x, self.height, self.width, random=training, seed=self.seed, step=self.step,
                      offset=self.offset)


class RandomFlip(Layer):
    """Training: each image mirrored left-right with probability 1/2, drawn per image and step;
    inference: unchanged.  Keras's RandomFlip('horizontal')."""
    type_name = "RandomFlip"
    default_name = "random_flip"

    def __init__(self, mode="horizontal", seed=None, input_shape=None, name=None, trainable=True, dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        if mode != "horizontal":
            raise ValueError(f"RandomFlip mode {mode!r}: only 'horizontal' (left-right, AlexNet's) is built")
        self.mode = mode
        self.seed = next_seed() if seed is None else int(seed)
        self.step = None  # bound by the model, as Dropout's

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "seed": self.seed}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"RandomFlip expects input of shape (height, width, channels), got {input_shape}")
        return input_shape

    def call(self, x, training, activation):
        if not training:
            return x
        return F.crop(x, x.shape[1], x.shape[2], random=True, flip=True, seed=self.seed, step=self.step,
                      offset=self.offset)


class PCAColorNoise(Layer):
    """Training: the AlexNet paper's colour noise, each RGB image plus
    sum_i alpha_i * eigenvalue_i * eigenvector_i, alpha_i ~ N(0, stddev^2) drawn per image and
    step on the device; inference: unchanged.  The principal components default to ImageNet's
    (the paper's); fastcnn.datasets.rgb_pca computes those of other images (pixels in [0, 1])."""
    type_name = "PCAColorNoise"
    default_name = "pca_color_noise"

    def __init__(self, stddev=0.1, eigenvalues=None, eigenvectors=None, seed=None, input_shape=None, name=None,
                 trainable=True, dtype=None):
        from .backend.reference import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS
        super().__init__(input_shape, name, trainable, dtype)
        values = np.asarray(IMAGENET_EIGENVALUES if eigenvalues is None else eigenvalues, np.float64)
        vectors = np.asarray(IMAGENET_EIGENVECTORS if eigenvectors is None else eigenvectors, np.float64)
        if values.shape != (3,) or vectors.shape != (3, 3) or stddev < 0:
            raise ValueError(f"PCAColorNoise needs 3 eigenvalues, 3x3 eigenvectors (columns) and stddev >= 0, "
                             f"got shapes {values.shape}, {vectors.shape} and stddev {stddev}")
        self.stddev = float(stddev)
        self.eigenvalues, self.eigenvectors = values.tolist(), vectors.tolist()
        self.basis = self.stddev * vectors * values[None, :]
        self.seed = next_seed() if seed is None else int(seed)
        self.step = None  # bound by the model, as Dropout's

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "eigenvalues": self.eigenvalues,
                "eigenvectors": self.eigenvectors, "seed": self.seed}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] != 3:
            raise ValueError(f"PCAColorNoise expects RGB images (height, width, 3), got {tuple(input_shape)}")
        return input_shape

    def call(self, x, training, activation):
        if not training or self.stddev == 0:
            return x
        return F.pca_noise(x, self.basis, seed=self.seed, step=self.step, offset=self.offset)


class LRN(Layer):
    """Local response normalisation across channels (AlexNet: size 5, alpha 1e-4, beta 0.75, k 2)."""
    type_name = "LRN"
    default_name = "lrn"

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, input_shape=None, name=None, trainable=True,
                 dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def call(self, x, training, activation):
        return F.lrn(x, self.size, self.alpha, self.beta, self.k)


class LeakyReLU(Layer):
    """x where x >= 0, else negative_slope * x (Keras's LeakyReLU, negative_slope 0.3 by default)."""
    type_name = "LeakyReLU"
    default_name = "leaky_re_lu"

    def __init__(self, negative_slope=0.3, input_shape=None, name=None, trainable=True, dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
                or not 0.0 <= negative_slope < float("inf"):
            raise ValueError(f"LeakyReLU negative_slope must be a finite number >= 0, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}

    def call(self, x, training, activation):
        return F.leaky_relu(x, self.negative_slope)


class Activation(Layer):
    type_name = "Activation"
    default_name = "activation"

    def __init__(self, activation, input_shape=None, name=None, trainable=True, dtype=None):
        super().__init__(input_shape, name, trainable, dtype)
        self.activation = _check_activation(activation)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation or "linear"}

    def call(self, x, training, activation):
        if activation == "relu":
            return F.relu(x)
        if activation == "softmax":
            return F.softmax(x)
        return x
