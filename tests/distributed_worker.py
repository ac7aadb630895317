"""Run by tests/test_distributed.py under mpirun: data-parallel fits on the CPU reference.

    python3 distributed_worker.py MODE OUT [options]

MODE train: LeNet-5 and a small AlexNet-shaped model (random crops, flips, colour noise,
dropout) trained with fastcnn.distribution; rank 0 writes OUT.npz (weights after each model's
fit and its History).  MODE resume: fit --epochs more epochs from a checkpoint.  MODE fail:
rank --fail-rank raises in the middle of an epoch.  MODE interrupt: every rank is interrupted
in the middle of an epoch and rank 0 saves a checkpoint there.
"""
import argparse
import json
import sys

import numpy as np

import fastcnn
from fastcnn import callbacks, distribution, optimizers
from fastcnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, PCAColorNoise, RandomCrop, RandomFlip


def data(shape, n, classes=10, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + shape, dtype=np.float32)
    labels = rng.integers(0, classes, n)
    return x, np.eye(classes, dtype=np.float32)[labels]


def small_alexnet():
    return fastcnn.Sequential([
        RandomCrop(14, 14, input_shape=(17, 17, 3)), RandomFlip(), PCAColorNoise(0.1),
        Conv2D(8, 3, strides=2, activation="relu"), MaxPool2D(2), Flatten(),
        Dense(24, activation="relu"), Dropout(0.5), Dense(10, activation="softmax")])


MODELS = {"lenet5": (fastcnn.models.lenet5, (28, 28, 1)), "alexnet": (small_alexnet, (17, 17, 3))}


def build(name):
    fastcnn.manual_seed(7)
    make, shape = MODELS[name]
    model = make()
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"],
                  optimizer=optimizers.SGD(learning_rate=0.05, momentum=0.9, weight_decay=5e-4))
    return model, shape


class FailAt(callbacks.Callback):
    def __init__(self, rank, epoch, batch):
        self.rank, self.epoch, self.batch, self.now = rank, epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.now = epoch

    def on_batch_end(self, batch, logs=None):
        """rank None: every rank is interrupted there (Ctrl-C)."""
        if (self.now, batch) != (self.epoch, self.batch):
            return
        if self.rank is None:
            raise KeyboardInterrupt
        if distribution.distribution().rank == self.rank:
            raise RuntimeError(f"injected failure at epoch {self.now} batch {batch}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "resume", "fail", "interrupt"])
    p.add_argument("out")
    p.add_argument("--models", default="lenet5,alexnet")
    p.add_argument("--samples", type=int, default=52)     # 52 = 4 batches of 12 and one of 4
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--checkpoint", help="prefix of each model's checkpoint file")
    p.add_argument("--fail-rank", type=int, default=1)
    args = p.parse_args()

    dist = distribution.DataParallel()
    distribution.set_distribution(dist)
    results = {}
    for name in args.models.split(","):
        model, shape = build(name)
        x, y = data(shape, args.samples)
        vx, vy = data(shape, 20, seed=2)
        cbs, initial = [], 0
        checkpoint = f"{args.checkpoint}-{name}.npz"
        if args.mode == "resume":
            initial = model.load_checkpoint(checkpoint)
        elif args.checkpoint and distribution.is_main():
            cbs.append(callbacks.ModelCheckpoint(checkpoint))
        if args.mode in ("fail", "interrupt"):
            cbs.append(FailAt(args.fail_rank if args.mode == "fail" else None, 1, 2))
        try:
            history = model.fit(x, y, batch_size=args.batch_size, epochs=initial + args.epochs, initial_epoch=initial,
                                validation_data=(vx, vy), callbacks=cbs, verbose=0)
        except KeyboardInterrupt:   # as fastcnn train: rank 0 saves where every rank stopped
            if distribution.is_main():
                model.save_checkpoint(checkpoint)
            continue
        loss, accuracy = model.evaluate(vx, vy, batch_size=7, verbose=0)
        for i, w in enumerate(model.get_weights()):
            results[f"{name}/w{i}"] = w
        results[f"{name}/history"] = np.array(json.dumps(history.history))
        results[f"{name}/evaluate"] = np.array([loss, accuracy])
    if distribution.is_main():
        np.savez(args.out, **results)
    print(f"rank {dist.rank} of {dist.size}: done", file=sys.stderr)


if __name__ == "__main__":
    main()
