"""A run's checkpoint: everything needed to continue a training after its last completed epoch.

This module holds what every checkpoint shares: the format number, the fingerprint of the
settings and data that wrote it, reading the file, taking it back all or nothing, and setting a
bad one aside. What the state is belongs to its owner (:class:`Stateful`): the trainer
(:class:`alexnet_cifar.engine.Trainer`) gives its own state and its parts' (the learning-rate
schedule, the augmenter, the record of predictions) as one plain dict, checks a saved one against
itself and applies the checked value. :func:`save` writes it after every epoch; :func:`resume`
has every part checked first, and the owner changes only once all of them passed. A checkpoint
that fails any check is set aside (``checkpoint.set-aside-*.pt``) with a log line naming the
part, and the run starts exactly as if there had been none.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from .atomic import atomic_path

#: 4: with the augmentation generator, the schedule's state, the lr and the predictions. (3 had one
#: optimizer state; 2 one per part of a cut backward pass; 1 came before it.)
FORMAT = 4
_HEADER = ("format", "fingerprint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be taken back; the message names the part and what is wrong."""


class Stateful(Protocol):
    """An owner of state a checkpoint keeps: what :func:`save` and :func:`resume` take (the
    trainer). Its parts have the same three methods; a part whose check needs what its owner
    holds takes that as keyword arguments (the schedule the history, the record of predictions
    the number of epochs)."""

    def state_dict(self) -> dict:
        """Its state as a plain dict of tensors, numbers, strings, lists and dicts."""

    def check_state(self, saved: Any) -> Any:
        """``saved`` (a :meth:`state_dict`, as read back) checked against this owner, into a value
        :meth:`apply_state` takes; raises :class:`CheckpointError` naming the part, changes nothing."""

    def apply_state(self, checked: Any) -> None:
        """Take over a checked state; cannot fail."""


def state(owner: Stateful, fingerprint: str) -> dict:
    """What :func:`save` writes: the format, the fingerprint and the owner's state, whose ``epoch``
    says after which epoch it was taken."""
    return {"format": FORMAT, "fingerprint": fingerprint, **owner.state_dict()}


def save(path: Path, owner: Stateful, fingerprint: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(state(owner, fingerprint), tmp)


def resume(path: Path, owner: Stateful, fingerprint: str, *, log: Callable[[str], None]) -> bool:
    """Continue ``owner`` from ``path`` if it belongs to this run and every part checks out;
    otherwise set the file aside, leave ``owner`` untouched and return False."""
    if not path.exists():
        return False
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, not a torch file: all mean "cannot be read"
        problem = f"it cannot be read ({type(exc).__name__}: {exc})"
    else:
        try:
            checked = _checked(ck, owner, fingerprint)
        except CheckpointError as exc:
            problem = str(exc)
        else:
            owner.apply_state(checked)
            log(f"resuming from {path} after epoch {ck['epoch']}")
            return True
    aside = path.with_name(f"{path.stem}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    os.replace(path, aside)
    log(f"not resuming from {path}: {problem}; moved it to {aside.name}, starting fresh")
    return False


def _checked(ck: Any, owner: Stateful, fingerprint: str) -> Any:
    """The owner's check of ``ck``, once it is a checkpoint of this format and run."""
    if not isinstance(ck, dict):
        raise CheckpointError(f"it holds a {type(ck).__name__}, not a checkpoint")
    if ck.get("format") != FORMAT:
        raise CheckpointError(f"it has format {ck.get('format')}, this version reads format {FORMAT}")
    if ck.get("fingerprint") != fingerprint:
        raise CheckpointError("it was written by other settings or data")
    return owner.check_state({key: value for key, value in ck.items() if key not in _HEADER})


# -- checks the owners share ------------------------------------------------------------------

def check_tensor(value: Any, like: torch.Tensor, where: str) -> None:
    """``value`` must be a tensor of the dtype and shape of ``like``, finite if floating."""
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{where} is a {type(value).__name__}, not a tensor")
    if value.shape != like.shape or value.dtype != like.dtype:
        raise CheckpointError(f"{where} is {value.dtype} {tuple(value.shape)}, "
                              f"expected {like.dtype} {tuple(like.shape)}")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise CheckpointError(f"{where} holds non-finite values")


def check_rng_state(value: Any, device: torch.device, name: str) -> None:
    """``value`` must be a state a generator on ``device`` takes (a fresh one, set and dropped,
    refuses a state of the wrong kind or size)."""
    try:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
            raise TypeError(f"a {type(value).__name__}, not a uint8 tensor")
        torch.Generator(device=device).set_state(value)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"its RNG state {name!r} is unusable ({exc})") from None

