"""A run's checkpoint: everything needed to continue a training after its last completed epoch.

:func:`save` writes it after every epoch; :func:`resume` takes it back all or nothing. Every part
(model, optimizer, RNG states (the augmentation's included), history, step count, the learning-rate
schedule's state and the current lr, the predictions so far, the mean image of ``input_norm:
paper``) is read and checked into fresh objects
first, and the trainer changes only once all of them passed. A checkpoint that fails any check is set
aside (``checkpoint.set-aside-*.pt``) with a log line naming the part, and the run starts exactly
as if there had been none.
"""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import history
from .atomic import atomic_path

if TYPE_CHECKING:
    from .engine import Trainer
    from .recipes import LrSchedule

#: 4: with the augmentation generator, the schedule's state, the lr and the predictions. (3 had one
#: optimizer state; 2 one per part of a cut backward pass; 1 came before it.)
FORMAT = 4


class CheckpointError(ValueError):
    """A checkpoint that cannot be taken back; the message names the part and what is wrong."""


def state(trainer: Trainer, fingerprint: str) -> dict:
    cuda = trainer.device.type == "cuda"
    return {
        "format": FORMAT, "fingerprint": fingerprint, "epoch": len(trainer.history),
        "steps_done": trainer.steps_done, "history": trainer.history,
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "data_order": trainer.order_rng.get_state(),
                "cuda": torch.cuda.get_rng_state(trainer.device) if cuda else None,
                "augment": None if trainer.augment.generator is None else trainer.augment.generator.get_state()},
        "schedule": trainer.schedule.state_dict(), "lr": trainer.lr,
        "predictions": {split: torch.stack(rows) if rows else None for split, rows in trainer.predictions.items()},
        "input_norm": trainer.input_norm.state_dict(),
    }


def save(path: Path, trainer: Trainer, fingerprint: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(state(trainer, fingerprint), tmp)


def resume(path: Path, trainer: Trainer, fingerprint: str, *, log: Callable[[str], None]) -> bool:
    """Continue ``trainer`` from ``path`` if it belongs to this run and every part checks out;
    otherwise set the file aside, leave ``trainer`` untouched and return False."""
    if not path.exists():
        return False
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, not a torch file: all mean "cannot be read"
        problem = f"it cannot be read ({type(exc).__name__}: {exc})"
    else:
        try:
            parts = _checked_parts(ck, trainer, fingerprint)
        except CheckpointError as exc:
            problem = str(exc)
        else:
            _apply(parts, trainer)
            log(f"resuming from {path} after epoch {len(trainer.history)}")
            return True
    aside = path.with_name(f"{path.stem}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    os.replace(path, aside)
    log(f"not resuming from {path}: {problem}; moved it to {aside.name}, starting fresh")
    return False


def _checked_parts(ck: Any, trainer: Trainer, fingerprint: str) -> dict:
    """Every part of ``ck`` loaded into fresh objects, or a CheckpointError naming the first bad one."""
    if not isinstance(ck, dict):
        raise CheckpointError(f"it holds a {type(ck).__name__}, not a checkpoint")
    if ck.get("format") != FORMAT:
        raise CheckpointError(f"it has format {ck.get('format')}, this version reads format {FORMAT}")
    if ck.get("fingerprint") != fingerprint:
        raise CheckpointError("it was written by other settings or data")
    missing = sorted({"epoch", "steps_done", "history", "model", "optimizer", "rng", "schedule", "lr",
                      "predictions"} - set(ck))
    if missing:
        raise CheckpointError(f"it has no {', '.join(missing)}")
    model = _checked_model(ck["model"], trainer.model)
    history_part = _checked_history(ck, trainer)
    return {
        "model": model,
        "optimizer": _checked_optimizer(ck["optimizer"], trainer, model),
        "rng": _checked_rng(ck["rng"], trainer),
        "history": history_part,
        "schedule": _checked_schedule(ck, trainer, history_part["records"]),
        "predictions": _checked_predictions(ck["predictions"], trainer, len(history_part["records"])),
        "input_norm": trainer.input_norm.check_state(ck.get("input_norm")),  # absent in format 4 before it
    }


def _checked_tensor(value: Any, like: torch.Tensor, where: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{where} is a {type(value).__name__}, not a tensor")
    if value.shape != like.shape or value.dtype != like.dtype:
        raise CheckpointError(f"{where} is {value.dtype} {tuple(value.shape)}, "
                              f"expected {like.dtype} {tuple(like.shape)}")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise CheckpointError(f"{where} holds non-finite values")


def _checked_model(saved: Any, model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (copying draws no random numbers) holding the saved weights."""
    if not isinstance(saved, dict):
        raise CheckpointError("its model is not a state dict")
    expected = model.state_dict()
    if set(saved) != set(expected):
        raise CheckpointError(f"its model's parameters differ: missing {sorted(set(expected) - set(saved))}, "
                              f"unexpected {sorted(set(saved) - set(expected))}")
    for name, like in expected.items():
        _checked_tensor(saved[name], like, f"model parameter {name!r}")
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(saved)
    return fresh


def _checked_optimizer(saved: Any, trainer: Trainer, model: torch.nn.Module) -> torch.optim.Optimizer:
    """A fresh optimizer over ``model`` with the saved momenta and this run's own hyperparameters
    (the fingerprint says they define the same result; fused or foreach is this run's choice)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise CheckpointError("its optimizer is not an optimizer state dict")
    optimizer = trainer.make_optimizer(model)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the state's numbering
    momenta = saved["state"]
    # After an epoch every parameter has its momentum buffer; SGD without momentum keeps none.
    wanted = set(range(len(params))) if trainer.s.momentum else set()
    if set(momenta) != wanted:
        raise CheckpointError(f"its optimizer holds momenta for {len(momenta)} parameters, "
                              f"expected {len(wanted)}")
    for index, entry in momenta.items():
        if not isinstance(entry, dict) or set(entry) != {"momentum_buffer"}:
            raise CheckpointError(f"its optimizer state of parameter {index} is not a momentum buffer")
        _checked_tensor(entry["momentum_buffer"], params[index], f"optimizer momentum of parameter {index}")
    optimizer.load_state_dict({"state": momenta, "param_groups": optimizer.state_dict()["param_groups"]})
    return optimizer


def _checked_rng(saved: Any, trainer: Trainer) -> dict:
    """Each RNG state set on a fresh generator, which refuses a state of the wrong kind or size."""
    if not isinstance(saved, dict):
        raise CheckpointError("its RNG states are not a dict")
    device = trainer.device
    checks = {"torch": torch.device("cpu"), "data_order": device}
    if device.type == "cuda":
        checks["cuda"] = device
    if trainer.augment.generator is not None:
        checks["augment"] = device
    elif saved.get("augment") is not None:
        raise CheckpointError("its RNG state 'augment' is there, but this run does not augment")
    for name, on in checks.items():
        value = saved.get(name)
        try:
            if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
                raise TypeError(f"a {type(value).__name__}, not a uint8 tensor")
            torch.Generator(device=on).set_state(value)
        except (TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"its RNG state {name!r} is unusable ({exc})") from None
    return {name: saved[name] for name in checks}


def _checked_history(ck: dict, trainer: Trainer) -> dict:
    try:
        records = history.validate_history(ck["history"], "the checkpoint's history")
    except history.HistoryError as exc:
        raise CheckpointError(str(exc)) from None
    if any(r["diverged_at_step"] is not None for r in records):
        raise CheckpointError("its history ends in divergence, which is never checkpointed")
    if not all(isinstance(ck[key], int) and not isinstance(ck[key], bool) for key in ("epoch", "steps_done")):
        raise CheckpointError("its epoch or step count is not a whole number")
    if ck["epoch"] != len(records) or len(records) >= trainer.s.epochs:
        raise CheckpointError(f"it says epoch {ck['epoch']} but holds {len(records)} epochs of history "
                              f"for a run of {trainer.s.epochs}")
    if ck["steps_done"] != len(records) * trainer.steps_per_epoch:
        raise CheckpointError(f"it counts {ck['steps_done']} steps, expected {len(records)} epochs "
                              f"of {trainer.steps_per_epoch}")
    return {"records": records, "steps_done": ck["steps_done"]}


def _checked_schedule(ck: dict, trainer: Trainer, records: list[dict]) -> LrSchedule:
    """The learning-rate schedule after the checkpoint's epochs, replayed from its history (each
    epoch's lr must be the schedule's); the saved state and lr must be what the replay gives."""
    try:
        schedule = type(trainer.schedule).replayed(trainer.s, records)
    except ValueError as exc:
        raise CheckpointError(f"its history does not follow the lr schedule: {exc}") from None
    if ck["schedule"] != schedule.state_dict():
        raise CheckpointError(f"its schedule state {ck['schedule']!r} is not the one its history gives, "
                              f"{schedule.state_dict()!r}")
    if ck["lr"] != records[-1]["lr"]:
        raise CheckpointError(f"its lr {ck['lr']!r} is not the lr of its last epoch, {records[-1]['lr']!r}")
    return schedule


def _checked_predictions(saved: Any, trainer: Trainer, epochs: int) -> dict[str, list[torch.Tensor]]:
    """The predicted classes of each epoch so far: uint8, one row per epoch and image of the split,
    each a class of the model's outputs; validation rows exactly when the run validates."""
    if not isinstance(saved, dict) or set(saved) != {"test", "val"}:
        raise CheckpointError("its predictions are not a record of 'test' and 'val'")
    rows = {}
    for split, labels in (("test", trainer.test_y), ("val", trainer.val_y if trainer.validating else None)):
        value = saved[split]
        if labels is None:
            if value is not None:
                raise CheckpointError(f"its predictions hold '{split}' rows, but this run has no validation images")
            rows[split] = []
            continue
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.shape != (epochs, len(labels)):
            found = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"its predictions of '{split}' should be uint8 ({epochs} epochs, {len(labels)} "
                                  f"images), found {found}")
        if len(value) and int(value.max()) >= trainer.s.num_classes:
            raise CheckpointError(f"its predictions of '{split}' hold class {int(value.max())}, beyond the model's "
                                  f"{trainer.s.num_classes} outputs")
        rows[split] = list(value.clone())
    return rows


def _apply(parts: dict, trainer: Trainer) -> None:
    """Move the checked parts into ``trainer``; nothing here can fail on a checked checkpoint."""
    trainer.model.load_state_dict(parts["model"].state_dict())
    trainer.optimizer.load_state_dict(parts["optimizer"].state_dict())
    rng = parts["rng"]
    torch.set_rng_state(rng["torch"])
    trainer.order_rng.set_state(rng["data_order"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], trainer.device)
    if "augment" in rng:
        trainer.augment.generator.set_state(rng["augment"])
    trainer.history = list(parts["history"]["records"])
    trainer.steps_done = parts["history"]["steps_done"]
    trainer.schedule = parts["schedule"]
    trainer.set_lr(trainer.history[-1]["lr"])
    trainer.predictions = parts["predictions"]
    trainer.input_norm.apply_state(parts["input_norm"])
