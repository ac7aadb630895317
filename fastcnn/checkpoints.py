"""Checkpoints: a model's TrainingState and weights in one .npz file, and back.

The file holds every weight under its name (as save_weights' .npz), the optimizer's slots
(``__optimizer__/NAME``), the step counter (``__step__``), the completed epochs
(``__epoch__``), the running totals inside an epoch (``__totals__``), the callbacks' arrays
(``__callback__/KEY/FIELD/I``) and the rest as JSON in ``__state__``: where training stands,
the random generator's and the batch source's states, the optimizer's name and settings, the
float32 matmul precision, each layer's dtype policy and the callbacks' other fields.  ``Sequential.save_checkpoint`` /
``load_checkpoint`` call save / load.
"""
from __future__ import annotations

import json

import numpy as np

from . import config as precision
from .callbacks import callback_states
from .saving import load_npz, save_npz
from .seeding import generator


def save(model, path, epoch: int | None = None) -> None:
    save_npz(path, arrays(model, epoch))


def arrays(model, epoch: int | None = None) -> dict:
    """A checkpoint's arrays: where fit left off, or ``epoch`` completed epochs when given."""
    model.require_compiled()
    state = model.training_state
    at = state.position if epoch is None else None
    if at is not None and not at["clean"]:
        raise RuntimeError("training was stopped inside a step or an epoch's end: its state is torn, "
                           "no checkpoint can be taken of it")
    if at is None:
        batches = state.batches
        at = {"epoch": int(epoch or 0), "batch": 0, "seen": 0, "generator": generator().bit_generator.state,
              "steps": batches.steps if batches is not None else None,
              "source": batches.get_state() if batches is not None else None}
    out = dict(zip(model.weight_names(), model.get_weights()))
    out.update({f"__optimizer__/{k}": v for k, v in model.optimizer.get_state().items()})
    out["__step__"] = state.backend.to_host(state.step)
    out["__epoch__"] = np.array(at["epoch"])  # completed epochs
    if at["batch"]:
        out["__totals__"] = state.read_totals()
    callbacks = {}
    for key, values in callback_states(state.callbacks).items():
        callbacks[key] = {}
        for k, v in values.items():
            if isinstance(v, list) and v and all(isinstance(a, np.ndarray) for a in v):
                out.update({f"__callback__/{key}/{k}/{i}": a for i, a in enumerate(v)})
                v = {"arrays": len(v)}
            callbacks[key][k] = v
    record = {"epoch": at["epoch"], "batch": at["batch"], "seen": at["seen"], "steps": at["steps"],
              "generator": at["generator"], "source": at["source"], "optimizer": type(model.optimizer).__name__,
              "optimizer_config": plain_config(model.optimizer.get_config()),
              "precision": precision.get_float32_matmul_precision(), "dtype_policies": model.policy_names(),
              "callbacks": callbacks}
    out["__state__"] = np.array(json.dumps(record))
    return out


def load(model, path) -> int:
    """Restore a checkpoint into ``model`` (see Sequential.load_checkpoint); every part is read
    and checked before the model is changed.  Returns the completed epochs."""
    saved = load_npz(path)
    if "__epoch__" not in saved:
        raise ValueError(f"{path} is a weights file, not a checkpoint (no epoch recorded)")
    if "__state__" not in saved:
        raise ValueError(f"{path} is a checkpoint of an older fastcnn without the random generator's and "
                         f"the callbacks' states: training cannot go on exactly from it (load_weights "
                         f"takes its weights)")
    if model.optimizer is None:
        raise RuntimeError("call compile(...) with the checkpoint's optimizer before load_checkpoint")
    record, callbacks = _read_record(saved, path)
    optimizer = model.optimizer
    name, config, settings = type(optimizer).__name__, plain_config(optimizer.get_config()), record["optimizer_config"]
    if record["optimizer"] != name:
        raise ValueError(f"{path} was saved training with the {record['optimizer']} optimizer; this model is "
                         f"compiled with {name}: resume with the same optimizer")
    differ = [k for k in config if k != "learning_rate" and settings.get(k) != config[k]]
    if differ:
        raise ValueError(f"{path} was saved training with {name}("
                         + ", ".join(f"{k}={settings.get(k)}" for k in differ) + "); this model's has "
                         + ", ".join(f"{k}={config[k]}" for k in differ) + ": resume with the same settings")
    slots = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("__optimizer__/")}
    missing = [k for k in optimizer.state_names if k not in slots]
    if missing:
        raise ValueError(f"{path} lacks the {name} optimizer's state ({', '.join(missing)}): training "
                         f"cannot go on exactly from it")
    # A checkpoint without the field was written in fp32 (precision came later than checkpoints).
    was, now = record.get("precision", "highest"), precision.get_float32_matmul_precision()
    if was != now:
        raise ValueError(f"{path} was saved training with float32 matmul precision {was!r}; it is {now!r} "
                         f"now: resume with the same precision (--precision "
                         f"{'tf32' if was == 'high' else 'fp32'}) for the run to go on exactly")
    # A checkpoint without the field was written by float32 layers (policies came later).
    was, now = record.get("dtype_policies", ["float32"] * len(model.layers)), model.policy_names()
    if was != now:
        raise ValueError(f"{path} was saved training with dtype policies {_policies_text(was)}; this model's "
                         f"are {_policies_text(now)}: resume with the same policy (--precision "
                         f"{'bf16' if 'mixed_bfloat16' in was else 'fp32 or tf32'}) for the run to go on exactly")
    model.set_named_weights(saved, path)
    state = model.training_state
    state.set_step(saved["__step__"])
    optimizer.set_state(slots)
    optimizer.learning_rate = float(settings["learning_rate"])
    generator().bit_generator.state = record["generator"]
    state.resume = {"epoch": record["epoch"], "batch": record["batch"], "seen": record["seen"],
                    "steps": record["steps"], "source": record["source"], "totals": saved.get("__totals__"),
                    "callbacks": callbacks}
    return int(record["epoch"])


def _read_record(saved: dict, path):
    """(the JSON record, the callbacks' states with their arrays), every part looked up once:
    a damaged file is refused before the model is changed."""
    try:
        record = json.loads(str(saved["__state__"]))
        _ = ([record[k] for k in ("epoch", "seen", "steps", "generator", "source", "optimizer")],
             float(record["optimizer_config"]["learning_rate"]), saved["__step__"],
             saved["__totals__"] if record["batch"] else None)
        callbacks = {key: {k: ([saved[f"__callback__/{key}/{k}/{i}"] for i in range(v["arrays"])]
                               if isinstance(v, dict) and set(v) == {"arrays"} else v)
                           for k, v in values.items()}
                     for key, values in record["callbacks"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable checkpoint: its training state is damaged "
                         f"({type(exc).__name__}: {exc})") from None
    return record, callbacks


def _policies_text(names) -> str:
    """'mixed_bfloat16' when every layer has that policy, else the list."""
    return repr(names[0]) if len(set(names)) == 1 else str(names)


def plain_config(config: dict) -> dict:
    """An optimizer's settings that are plain numbers, strings or flags (what a checkpoint records)."""
    return {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str, type(None)))}
