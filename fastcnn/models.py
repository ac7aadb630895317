"""The classic networks, built as the papers and textbooks describe them (NHWC), and
``load_model`` / ``model_from_json`` for models saved by Keras 3 or by fastcnn."""
from __future__ import annotations

from .layers import LRN, Conv2D, Dense, Dropout, Flatten, MaxPool2D, PCAColorNoise, RandomCrop, RandomFlip
from .model import Sequential
from .keras_files import load_model, model_from_config, model_from_json  # noqa: F401


def lenet5(input_shape=(28, 28, 1), num_classes=10) -> Sequential:
    """LeNet-5 as in the Keras seed: 61,706 parameters on 28x28x1.

    Conv2D(6, 5x5, 'same') - MaxPool 2x2 - Conv2D(16, 5x5, 'valid') - MaxPool 2x2 -
    Flatten(400) - Dense(120) - Dense(84) - Dense(10, softmax); ReLU elsewhere.
    """
    return Sequential([
        Conv2D(6, 5, padding="same", activation="relu", input_shape=input_shape),
        MaxPool2D(2),
        Conv2D(16, 5, padding="valid", activation="relu"),
        MaxPool2D(2),
        Flatten(),
        Dense(120, activation="relu"),
        Dense(84, activation="relu"),
        Dense(num_classes, activation="softmax"),
    ], name="lenet5")


def alexnet(num_classes=1000, variant="single", input_shape=None, augment=False) -> Sequential:
    """AlexNet on 227x227x3.

    variant='single': one tower, no LRN, 62,378,344 parameters (1000 classes).
    variant='original': the paper's two groups on conv2/4/5 and LRN after conv1 and
    conv2 (size 5, alpha 1e-4, beta 0.75, k 2), 60,965,224 parameters.
    augment=True: the paper's augmentation in front, RandomCrop(227, 227),
    RandomFlip('horizontal') and PCAColorNoise(0.1) (ImageNet's principal components) on
    256x256x3 input (in evaluation: the centre 227x227); the weights are the same as
    without it, under the same names.
    """
    if variant not in ("single", "original"):
        raise ValueError(f"AlexNet variant must be 'single' or 'original', got {variant!r}")
    original = variant == "original"
    groups = 2 if original else 1
    if augment:
        layers = [RandomCrop(227, 227, input_shape=input_shape or (256, 256, 3)), RandomFlip("horizontal"),
                  PCAColorNoise(0.1), Conv2D(96, 11, strides=4, padding="valid", activation="relu")]
    else:
        layers = [Conv2D(96, 11, strides=4, padding="valid", activation="relu",
                         input_shape=input_shape or (227, 227, 3))]
    layers += [LRN()] if original else []
    layers += [MaxPool2D(3, strides=2),
               Conv2D(256, 5, padding="same", activation="relu", groups=groups)]
    layers += [LRN()] if original else []
    layers += [MaxPool2D(3, strides=2),
               Conv2D(384, 3, padding="same", activation="relu"),
               Conv2D(384, 3, padding="same", activation="relu", groups=groups),
               Conv2D(256, 3, padding="same", activation="relu", groups=groups),
               MaxPool2D(3, strides=2),
               Flatten(),
               Dense(4096, activation="relu"), Dropout(0.5),
               Dense(4096, activation="relu"), Dropout(0.5),
               Dense(num_classes, activation="softmax")]
    return Sequential(layers, name=f"alexnet_{variant}")
