"""Choosing the device a training runs on.

Snakemake counts GPUs (``resources: gpu=1``) but does not say which one a job gets. With several
visible GPUs each training claims one by holding an exclusive lock file for its lifetime, so two
trainings never share a GPU; the lock is released by the kernel when the process ends, even on a
crash. Under SLURM (``--gpus=1``) only the granted GPU is visible and it is simply ``cuda:0``.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # imported where it is used: claiming a GPU needs no torch
    import torch

# One SGD step at batch 4 on a 2-core CPU, 2 threads (docs/cpu/README.md: command, machine, torch).
CPU_SECONDS_PER_STEP = {"paper": 0.84, "paper-lrn": 0.81, "torchvision": 0.62}

_held_locks: list[IO] = []  # open lock files: closing them would release the GPU


class DeviceError(UserError, RuntimeError):
    """The requested device cannot be used; the message says what to set instead."""


def default_lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"alexnet_cifar-gpu-locks-{os.getuid()}"
    return Path(os.environ.get("ALEXNET_CIFAR_GPU_LOCK_DIR") or default)


def claim_gpu(count: int, lock_dir: Path | None = None, *, wait_seconds: float = 0.0,
              poll: float = 2.0, log: Callable[[str], None] = lambda _: None) -> int:
    """Claim a free GPU index in ``range(count)`` with a non-blocking exclusive ``flock``.

    Returns the index; the lock stays held until the process exits. Waits up to ``wait_seconds``
    when all are taken, then raises :class:`DeviceError`.
    """
    lock_dir = Path(lock_dir or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        for index in range(count):
            handle = open(lock_dir / f"gpu{index}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held_locks.append(handle)
            return index
        if time.monotonic() >= deadline:
            raise DeviceError(
                f"all {count} GPUs are in use by other trainings (locks in {lock_dir}); "
                f"run with --resources gpu=N no larger than the number of GPUs")
        log(f"all {count} GPUs busy; waiting")
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def estimate_cpu_seconds(model: str, epochs: int, train_images: int, batch_size: int) -> float:
    """Training time on a 2-core CPU: the measured step at batch 4, scaled by the batch size."""
    steps = epochs * -(-train_images // batch_size)
    return steps * CPU_SECONDS_PER_STEP[model] * batch_size / 4


def about(seconds: float) -> str:
    """A duration as people say it: about 6.1 days, about 3.2 hours, about 5 minutes."""
    for unit, length in (("days", 86400), ("hours", 3600)):
        if seconds >= length:
            return f"about {seconds / length:.1f} {unit}"
    minutes = round(seconds / 60)
    if minutes < 1:
        return "less than a minute"
    return f"about {minutes} minute{'s' if minutes > 1 else ''}"


def resolve_device(requested: str, *, model: str, epochs: int, train_images: int, batch_size: int,
                   log: Callable[[str], None] = lambda _: None) -> torch.device:
    """``auto`` means a CUDA GPU; without one it refuses rather than silently training for weeks."""
    import torch

    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        duration = about(estimate_cpu_seconds(model, epochs, train_images, batch_size))
        run = f"{model}, {epochs} epoch{'s' if epochs != 1 else ''}, {train_images} images, batch {batch_size}"
        raise DeviceError(
            f"no CUDA GPU is available (train.device: {requested}). On a 2-core CPU this run ({run}) would "
            f"take {duration}. Run it on a GPU machine, or set train.device: cpu (e.g. "
            f"--config train='{{device: cpu}}' or use config/quick.yaml) to train on the CPU anyway.")
    if requested.startswith("cuda:"):
        index, count = torch.device(requested).index, torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"train.device: {requested} asks for GPU {index}, but {count} GPU(s) are visible "
                              f"(cuda:0 to cuda:{count - 1}); pick one of those, or auto")
        return torch.device("cuda", index)  # the engine runs everything on it, whatever the current device
    count = torch.cuda.device_count()
    index = 0 if count == 1 else claim_gpu(count, wait_seconds=600, log=log)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
