"""fastcnn train: the optimizer (the papers' defaults), the schedule, fit with checkpoints, the
files a run writes."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .common import (DEFAULT_BATCH, DEFAULT_CLASSES, UsageError, build_model, current_gpu, eval_label,
                     is_augmented, kernel_choices, kernels_for, place, say_precision, using_kernels)
from .data import close_sources, load_data, xy


def optimizer_for(args):
    """Adam for LeNet-5 (the Keras seed); for AlexNet the paper's SGD: momentum 0.9, weight
    decay 0.0005, learning rate 0.01.  Every option given on the command line wins."""
    from fastcnn import optimizers
    paper = args.model == "alexnet"
    name = args.optimizer or ("sgd" if paper else "adam")
    if name in ("adam", "adamw", "rmsprop"):
        applies = {"--weight-decay": ["adamw"], "--momentum": ["rmsprop"], "--nesterov": []}
        for option, value in (("--weight-decay", args.weight_decay), ("--momentum", args.momentum),
                              ("--nesterov", args.nesterov or None)):
            if value is not None and name not in applies[option]:
                raise UsageError(f"{option} applies to --optimizer {' or '.join(['sgd'] + applies[option])}, "
                                 f"not {name}")
        lr = args.lr if args.lr is not None else 0.001
        if name == "rmsprop":
            return optimizers.RMSprop(learning_rate=lr, momentum=args.momentum or 0.0)
        if name == "adamw":
            return optimizers.AdamW(learning_rate=lr,
                                    weight_decay=args.weight_decay if args.weight_decay is not None else 0.004)
        return optimizers.Adam(learning_rate=lr)
    momentum = args.momentum if args.momentum is not None else (0.9 if paper else 0.0)
    weight_decay = args.weight_decay if args.weight_decay is not None else (5e-4 if paper else 0.0)
    return optimizers.SGD(learning_rate=args.lr if args.lr is not None else 0.01, momentum=momentum,
                          nesterov=args.nesterov, weight_decay=weight_decay)


def _schedule(args) -> list:
    """--reduce-lr / --early-stop as Keras callbacks watching the validation accuracy."""
    from fastcnn import callbacks
    found = []
    if args.reduce_lr is not None:
        found.append(callbacks.ReduceLROnPlateau(monitor="val_accuracy", factor=0.1, patience=args.reduce_lr))
    if args.early_stop is not None:
        found.append(callbacks.EarlyStopping(monitor="val_accuracy", patience=args.early_stop,
                                             restore_best_weights=True))
    return found


RUN_FILES = ("checkpoint.npz", "weights.npz", "history.json")   # a folder with one of them holds a run


def _claim_run_folder(args, out: Path):
    """--out checked before anything is loaded or trained: a folder that can be written, holding
    no run unless --resume or --overwrite says what to do with it, and no other training (its
    lock, returned held)."""
    from fastcnn.saving import RunLock, RunLockHeld
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if args.data == "folder" and args.data_dir:   # a folder among the classes would be read as one
        from fastcnn.datasets import class_roots
        where = out.resolve()
        if any(where == r or r in where.parents for r in map(Path.resolve, class_roots(args.data_dir))):
            raise UsageError(f"--out {out} is among the class folders of --data-dir {args.data_dir}: it would be "
                             f"read as a class of images; choose an --out outside them")
    if args.resume and not (out / "checkpoint.npz").is_file():
        raise UsageError(f"--resume: no checkpoint at {out / 'checkpoint.npz'}; train once without --resume "
                         f"(with the same --out) first")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not (args.resume or args.overwrite):
        raise UsageError(f"{out} holds a run ({', '.join(held)}): continue it with --resume, or replace it "
                         f"with --overwrite (or choose another --out)")
    lock = RunLock(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except RunLockHeld as exc:
        raise UsageError(f"{exc}: two trainings cannot share a folder") from None
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return lock


def _fit(model, args, data, batch_size, initial_epoch, saver, logger, checkpoint) -> int:
    """Train from initial_epoch to args.epochs: 0 when done, 1 when the loss stopped being finite
    (the last good files kept), 130 after Ctrl-C (a checkpoint of the step it stopped at)."""
    import numpy as np
    from fastcnn.callbacks import TerminateOnNaN
    from fastcnn.training_state import ResumeMismatch
    if initial_epoch >= args.epochs:
        print(f"nothing to train: {initial_epoch} epoch(s) already done (raise --epochs to train more)")
    try:   # (with nothing to train, fit restores the checkpoint's record for the files written below)
        with np.errstate(over="ignore", invalid="ignore"):   # a diverging run: TerminateOnNaN says it once
            model.fit(*xy(data.train), epochs=args.epochs, batch_size=batch_size, validation_data=data.validation,
                      shuffle=True, verbose=args.verbose, initial_epoch=initial_epoch,
                      callbacks=[TerminateOnNaN()] + _schedule(args) + [c for c in (saver, logger) if c],
                      graph=False if args.no_graph else None)
    except ResumeMismatch as exc:
        raise UsageError(f"--resume: {exc}") from None
    except KeyboardInterrupt:
        if saver is None:   # data-parallel: rank 0 saves and says
            return 130
        done = saver.completed if saver.completed is not None else initial_epoch
        try:
            model.save_checkpoint(checkpoint)
        except RuntimeError:   # a second Ctrl-C cut a step: nothing whole to save
            print(f"\ninterrupted inside a step: no checkpoint taken; {checkpoint} (after epoch {done}) is "
                  f"kept as it was. Continue with the same command and --resume.", file=sys.stderr)
            return 130
        at = model.training_state.position
        where = f"after epoch {at['epoch']}" + (f" and {at['batch']} batch(es) of the next" if at["batch"] else "")
        print(f"\ninterrupted: saved {checkpoint} ({where}). Continue with the same command and --resume: "
              f"it goes on from that step.", file=sys.stderr)
        return 130
    if model.stop_reason:
        if saver is None:
            return 1
        done = saver.completed if saver.completed is not None else initial_epoch
        kept = (f"{checkpoint} and history.json are kept as they were after epoch {done}"
                if checkpoint.is_file() else "nothing was saved")
        print(f"fastcnn train: {model.stop_reason}: training stopped ({kept}; weights.npz not written). "
              f"A lower --lr may help.", file=sys.stderr)
        return 1
    return 0


def cmd_train(args) -> int:
    if args.distributed:
        return _distributed(_cmd_train, args)
    return _cmd_train(args)


def _cmd_train(args) -> int:
    from fastcnn import distribution
    from fastcnn.saving import WriteError
    args.data = args.data or ("mnist-sample" if args.model == "lenet5" else "synthetic")
    out = Path(args.out or f"runs/{args.model}-{args.data}")
    lock = _claim_run_folder(args, out) if distribution.is_main() else None   # data-parallel: rank 0's
    try:
        return _train(args, out)
    except WriteError as exc:   # a full disk, say: the path named
        print(f"fastcnn train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()


def _distributed(train, args) -> int:
    """--distributed: join the MPI world and train data-parallel; ranks other than 0 print
    nothing to stdout.  A rank that fails or stops early stops every rank (MPI_Abort: the
    others would wait for it forever), the rank named."""
    from fastcnn import distribution
    dist = distribution.DataParallel()
    try:
        dist.local_batch(args.batch_size or DEFAULT_BATCH[args.model])
    except ValueError as exc:    # the same on every rank: said by rank 0
        if dist.rank:
            return 2
        raise UsageError(str(exc).replace("batch_size", "--batch-size")) from None
    if dist.rank:
        sys.stdout = open(os.devnull, "w")
    try:
        with dist.scope():
            code = train(args)
    except UsageError as exc:    # the same on every rank: said once
        if dist.rank == 0:
            print(f"fastcnn train: {exc}", file=sys.stderr, flush=True)
        dist.world.comm.Abort(2)
    except BaseException as exc:
        distribution.abort(exc)
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        dist.world.comm.Abort(code)
    return code


def _train(args, out: Path) -> int:
    import fastcnn
    from fastcnn import callbacks, distribution

    batch_size = args.batch_size or DEFAULT_BATCH[args.model]
    checkpoint = out / "checkpoint.npz"

    kernels = kernel_choices(args.kernel, args.precision)
    data = load_data(args)
    class_names = data.class_names
    num_classes = len(class_names) if class_names else DEFAULT_CLASSES[args.model]
    if args.data == "synthetic":
        print("NOTE: --data synthetic: random images and labels, for throughput only; "
              "the accuracies below mean nothing.")

    fastcnn.manual_seed(args.seed)
    model = build_model(args, num_classes)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer_for(args), metrics=["accuracy"])
    note = place(model, args.device)
    backend_name = model.backend.name
    if model.device == "cuda":
        note = f" ({current_gpu()})" + note
    print(f"device: {model.device}, backend: {backend_name}{note}")
    say_precision(args.precision, model)
    kernels = kernels_for(model, kernels)
    eval_name = data.eval_name
    print(f"data: {args.data}: {data.train_count:,} training images; evaluation on {data.eval_count:,} images: "
          f"{eval_name}")

    initial_epoch = 0
    if args.resume:
        try:   # under --precision: a checkpoint refuses to go on in another one
            with fastcnn.config.float32_matmul_precision(fastcnn.config.from_name(args.precision)):
                initial_epoch = int(model.load_checkpoint(checkpoint))
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"--resume: {exc}") from None
        within = model.training_state.resume["batch"]
        print(f"resuming from {checkpoint}: {initial_epoch} epoch(s) done"
              + (f" and {within} batch(es) of the next" if within else "") + f", training to {args.epochs}")
        try:
            if (out / "history.json").exists():
                callbacks.read_history(out / "history.json")
        except ValueError as exc:
            print(f"note: {exc}; it is written anew from the checkpoint's record", file=sys.stderr)
    main = distribution.is_main()   # data-parallel: rank 0 alone writes files
    if args.overwrite and main:
        removed = [name for name in RUN_FILES + ("curves.png",) if (out / name).exists()]
        for name in removed:
            (out / name).unlink()
        if removed:
            print(f"--overwrite: removed the run that was in {out} ({', '.join(removed)})")
    meta = {"model": args.model, "variant": args.variant if args.model == "alexnet" else None,
            "augment": is_augmented(args),
            "data": args.data, "data_dir": str(Path(args.data_dir).expanduser().absolute()) if args.data_dir else None,
            "split_seed": args.split_seed,
            "synthetic": args.data == "synthetic", "train_images": data.train_count,
            "eval_images": data.eval_count, "eval_set": eval_name, "classes": class_names,
            "epochs": args.epochs, "batch_size": batch_size,
            "optimizer": repr(model.optimizer), "seed": args.seed,
            "device": str(model.device), "backend": backend_name, "graph": model.device == "cuda" and not args.no_graph,
            "kernels": kernels, "precision": args.precision}
    if distribution.distribution():
        meta["processes"] = distribution.distribution().size
    saver = callbacks.ModelCheckpoint(checkpoint) if main else None
    logger = callbacks.JSONLogger(out / "history.json", meta=meta) if main else None   # its record: from the checkpoint

    with using_kernels(kernels, args.precision):  # --kernel and --precision hold for training and evaluation
        start = time.perf_counter()
        try:
            code = _fit(model, args, data, batch_size, initial_epoch, saver, logger, checkpoint)
            if code:
                return code
            seconds = time.perf_counter() - start
            loss, accuracy = model.evaluate(*xy(data.validation), batch_size=batch_size, verbose=0)
        finally:
            close_sources(data)
    if not main:
        return 0
    label = eval_label(args, eval_name)
    print(f"{label} accuracy: {accuracy:.4f} ({label} loss {loss:.4f}) on {data.eval_count:,} images, "
          f"{eval_name}; training took {seconds:.1f} s on {model.device} ({backend_name})")

    model.save_weights(out / "weights.npz")
    logger.data.update({f"{label}_loss": float(loss), f"{label}_accuracy": float(accuracy),
                        "train_seconds_this_run": round(seconds, 2)})
    logger.write()
    written = [out / "history.json", out / "weights.npz", checkpoint]
    try:
        from fastcnn.plotting import PlotUnavailable, plot_history
        try:
            title = f"{args.model} on {args.data}" + (" (SYNTHETIC)" if args.data == "synthetic" else "")
            written.append(Path(plot_history(logger.data, out / "curves.png", title=title)))
        except PlotUnavailable as exc:
            print(f"no plot: {exc}", file=sys.stderr)
    except ValueError as exc:  # no epochs to draw
        print(f"no plot: {exc}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
