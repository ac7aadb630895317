"""Keras-style layers: Conv2D, MaxPool2D, Flatten, Dense, Dropout, LRN, Activation,
and the augmentation layers RandomCrop, RandomFlip and PCAColorNoise.

A layer knows its output shape from its input shape (``build``), owns its
Parameters (Keras's initialisers: Glorot-uniform kernels, zero biases) and
calls the functional API in ``call``.  Shapes exclude the batch axis, NHWC.
"""
from __future__ import annotations

import math

import numpy as np

from . import distribution
from . import functional as F
from . import profiler
from .seeding import generator, next_seed
from .tensor import Function, Parameter


class Layer:
    type_name = "Layer"  # as Keras's summary shows it
    default_name = "layer"
    activation = None

    @property
    def offset(self) -> int:
        """Random layers: the global index of the batch's first sample (0, or where this
        process's slice of the batch starts in data-parallel training: fastcnn.distribution)."""
        return distribution.sample_offset()

    def __init__(self, input_shape=None, name=None):
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.name = name
        self.output_shape = None
        self.params: list[Parameter] = []
        self.built = False

    def build(self, input_shape):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def count_params(self) -> int:
        return sum(int(p.size) for p in self.params)

    def weight_names(self) -> list[str]:
        return [f"{self.name}/{p.name}" for p in self.params]

    def __call__(self, x, training=False, activation="default"):
        activation = self.activation if activation == "default" else activation
        if profiler.state.profile is not None:  # name this layer's calls in the profile
            with profiler.scope(self.name, "forward"):
                return self.call(F._tensor(x), training, activation)
        return self.call(F._tensor(x), training, activation)

    def call(self, x, training, activation):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, output_shape={self.output_shape})"


def glorot_uniform(shape, fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return generator().uniform(-limit, limit, size=shape).astype(np.float32)


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
                 use_bias=True, input_shape=None, groups=1, name=None):
        super().__init__(input_shape, name)
        self.filters = int(filters)
        self.kernel_size = F.pair(kernel_size, "kernel_size")
        self.strides = F.pair(strides, "strides")
        self.padding = padding
        self.activation = _check_activation(activation)
        self.use_bias = use_bias
        self.groups = int(groups)
        if self.filters < 1 or self.groups < 1 or self.filters % self.groups:
            raise ValueError(f"filters ({filters}) must be a positive multiple of groups ({groups})")

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D expects input of shape (height, width, channels), got {tuple(input_shape)}")
        channels = input_shape[2]
        if channels % self.groups:
            raise ValueError(f"Conv2D: {channels} input channels do not split into {self.groups} groups")
        kh, kw = self.kernel_size
        cin = channels // self.groups
        fan_in, fan_out = kh * kw * cin, kh * kw * self.filters // self.groups
        self.params = [Parameter(glorot_uniform((kh, kw, cin, self.filters), fan_in, fan_out), "kernel")]
        if self.use_bias:
            self.params.append(Parameter(np.zeros(self.filters, np.float32), "bias"))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        pads = F.resolve_padding(self.padding, input_shape[:2], self.kernel_size, self.strides)
        p, q = F.output_hw(input_shape[:2], self.kernel_size, self.strides, pads)
        return (p, q, self.filters)

    def call(self, x, training, activation):
        w = self.params[0]
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
        gx = self.B.xp.zeros(self.shape, self.dtype)  # a memset, not a kernel
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

    def __init__(self, pool_size=2, strides=None, padding="valid", input_shape=None, name=None):
        super().__init__(input_shape, name)
        self.pool_size = F.pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else F.pair(strides, "strides")
        self.padding = padding

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"MaxPool2D expects input of shape (height, width, channels), got {input_shape}")
        pads = F.resolve_padding(self.padding, input_shape[:2], self.pool_size, self.strides)
        p, q = F.output_hw(input_shape[:2], self.pool_size, self.strides, pads)
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

    def __init__(self, units, activation=None, use_bias=True, input_shape=None, name=None):
        super().__init__(input_shape, name)
        self.units = int(units)
        if self.units < 1:
            raise ValueError(f"Dense units must be positive, got {units}")
        self.activation = _check_activation(activation)
        self.use_bias = use_bias

    def build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Dense expects flat input (features,), got {tuple(input_shape)}; add a Flatten layer")
        self.params = [Parameter(glorot_uniform((input_shape[0], self.units), input_shape[0], self.units), "kernel")]
        if self.use_bias:
            self.params.append(Parameter(np.zeros(self.units, np.float32), "bias"))
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

    def __init__(self, rate, seed=None, input_shape=None, name=None):
        super().__init__(input_shape, name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = next_seed() if seed is None else int(seed)
        self.step = None  # int32 array (1,) on the device, bound by the model: the training step

    def call(self, x, training, activation):
        return F.dropout(x, self.rate, training, self.seed, self.step, self.offset)


class RandomCrop(Layer):
    """Training: a random height x width window of each image, new every step (AlexNet: 227x227
    out of 256x256); inference: the centre window.  As Keras's RandomCrop (which resizes
    smaller inputs: here they are an error)."""
    type_name = "RandomCrop"
    default_name = "random_crop"

    def __init__(self, height, width, seed=None, input_shape=None, name=None):
        super().__init__(input_shape, name)
        self.height, self.width = F.pair((height, width), "RandomCrop height and width")
        self.seed = next_seed() if seed is None else int(seed)
        self.step = None  # int32 array (1,) on the device, bound by the model: the training step

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

    def __init__(self, mode="horizontal", seed=None, input_shape=None, name=None):
        super().__init__(input_shape, name)
        if mode != "horizontal":
            raise ValueError(f"RandomFlip mode {mode!r}: only 'horizontal' (left-right, AlexNet's) is built")
        self.mode = mode
        self.seed = next_seed() if seed is None else int(seed)
        self.step = None  # bound by the model, as Dropout's

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

    def __init__(self, stddev=0.1, eigenvalues=None, eigenvectors=None, seed=None, input_shape=None, name=None):
        from .backend.reference import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS
        super().__init__(input_shape, name)
        values = np.asarray(IMAGENET_EIGENVALUES if eigenvalues is None else eigenvalues, np.float64)
        vectors = np.asarray(IMAGENET_EIGENVECTORS if eigenvectors is None else eigenvectors, np.float64)
        if values.shape != (3,) or vectors.shape != (3, 3) or stddev < 0:
            raise ValueError(f"PCAColorNoise needs 3 eigenvalues, 3x3 eigenvectors (columns) and stddev >= 0, "
                             f"got shapes {values.shape}, {vectors.shape} and stddev {stddev}")
        self.stddev = float(stddev)
        self.basis = self.stddev * vectors * values[None, :]
        self.seed = next_seed() if seed is None else int(seed)
        self.step = None  # bound by the model, as Dropout's

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

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, input_shape=None, name=None):
        super().__init__(input_shape, name)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def call(self, x, training, activation):
        return F.lrn(x, self.size, self.alpha, self.beta, self.k)


class Activation(Layer):
    type_name = "Activation"
    default_name = "activation"

    def __init__(self, activation, input_shape=None, name=None):
        super().__init__(input_shape, name)
        self.activation = _check_activation(activation)

    def call(self, x, training, activation):
        if activation == "relu":
            return F.relu(x)
        if activation == "softmax":
            return F.softmax(x)
        return x
