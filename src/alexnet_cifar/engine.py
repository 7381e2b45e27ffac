"""The training engine: SGD over the whole data set held on the training device.

Batch 4 makes every step tiny, so the time goes to Python, data loading and kernel launches rather
than arithmetic. The engine therefore keeps the uint8 data set on the device and gathers, converts
and resizes each batch there; shuffles with a seeded generator on the device; sums loss, correct
count and the first non-finite step on the device, reading them once per epoch (and every
``poll_every`` steps, to stop a diverged run early); and on CUDA captures the whole step (gather,
resize, forward, loss, one ``loss.backward()``, one SGD update) as one CUDA graph and replays it.
The CPU runs the same step eagerly.

How fast this step is against a plain training loop, and how alike the graph and eager paths
train, with the device, torch version and command: ``docs/speed.md``. The update is PyTorch's
multi-tensor (foreach) SGD, the one measured there; the fused kernel (``fused_sgd``) is an option
until a GPU shows it faster inside the graph. Checkpoints: :mod:`alexnet_cifar.checkpoint`.
Training recipes (augmentation inside the step, the learning rate of each epoch, the paper's
initialisation): :mod:`alexnet_cifar.recipes`; a validation split held out of the training images
is evaluated with the test set after every epoch.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import checkpoint, classes, history, layout, recipes
from .atomic import atomic_path
from .checkpoint import CheckpointError, check_rng_state, check_tensor
from .config import RunSettings, SettingsError
from .data import validation_split
from .models import build_model, get_spec


class TrainingInterrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT); the last completed epoch is in the checkpoint."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class StopFlag:
    """Set from a signal handler; the training loop looks at it between steps (no host sync)."""

    signum: int | None = None

    def check(self) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(self.signum)


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag, signums=(signal.SIGTERM, signal.SIGINT)) -> Iterator[StopFlag]:
    """Turn SIGTERM/SIGINT (what SLURM sends before a time limit or preemption) into ``flag``."""

    def handler(signum, _frame):
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Everything PyTorch needs for repeatable results (or the fastest kernels when off)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def to_model_input(images_u8: torch.Tensor, size: int, channels_last: bool = False,
                   augment: recipes.Augmenter | None = None, norm: recipes.InputNorm | None = None) -> torch.Tensor:
    """uint8 NCHW 32x32 -> the model's input at 32x32 (``norm``; without it, float in [-1, 1]:
    ToTensor + Normalize(0.5, 0.5)), bilinear to size x size; with ``augment``, the batch is
    augmented at 32x32 on its way there (``augment.norm`` then makes the input)."""
    if augment is not None and augment.active:
        x = augment(images_u8)
    elif norm is not None:
        x = norm(images_u8)
    else:
        x = images_u8.float().mul_(2.0 / 255.0).sub_(1.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def on_device(device: torch.device):
    """Make ``device`` the current CUDA device for the block (``cuda:N`` need not be the current
    one): streams, graph capture and the graph-safe RNG all follow the current device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@dataclass
class EpochTotals:
    """Per-epoch sums kept on the device; read with one sync at the end of the epoch."""

    device: torch.device
    loss_sum: torch.Tensor = field(init=False)
    correct: torch.Tensor = field(init=False)
    first_bad_step: torch.Tensor = field(init=False)
    step: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.step = torch.zeros((), dtype=torch.int64, device=self.device)

    def reset(self, first_step: int) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.step.fill_(first_step)


@dataclass
class Evaluation:
    """One split's evaluation: mean cross-entropy, accuracy (%) and each image's predicted class."""

    loss: float
    acc: float
    predicted: torch.Tensor  # int64 on the device, one class per image


class PredictionRecord:
    """Each evaluated epoch's predicted classes, uint8 on the CPU: of the ``test`` split and, in a
    run with validation images, of ``val``; written at the end as ``predictions.npz``
    (:func:`alexnet_cifar.classes.write_predictions`) and kept in the checkpoint between epochs."""

    def __init__(self, test_images: int, val_images: int | None, num_classes: int) -> None:
        self.images = {"test": test_images, "val": val_images}  # None: the run has no such split
        self.num_classes = num_classes
        self.rows: dict[str, list[torch.Tensor]] = {"test": [], "val": []}

    def add(self, split: str, predicted: torch.Tensor) -> None:
        """One epoch's predicted classes of ``split``."""
        self.rows[split].append(predicted.to("cpu", torch.uint8))

    def write(self, path: Path, val_index) -> None:
        """Every epoch so far into ``path``, with which training images were held out (``val_index``)."""
        arrays = {split: torch.stack(rows).numpy() for split, rows in self.rows.items() if rows}
        classes.write_predictions(path, arrays["test"], arrays.get("val"), val_index)

    # -- the state a checkpoint keeps (alexnet_cifar.checkpoint.Stateful) ----------------------
    def state_dict(self) -> dict[str, torch.Tensor | None]:
        """Per split, the rows so far as one uint8 tensor (epochs x images), None without any."""
        return {split: torch.stack(rows) if rows else None for split, rows in self.rows.items()}

    def check_state(self, saved: Any, *, epochs: int) -> dict[str, list[torch.Tensor]]:
        """``saved`` checked: uint8, one row per epoch of ``epochs`` and image of the split, each a
        class of the model's outputs; validation rows exactly when the run validates."""
        if not isinstance(saved, dict) or set(saved) != {"test", "val"}:
            raise CheckpointError("its predictions are not a record of 'test' and 'val'")
        rows = {}
        for split, images in self.images.items():
            value = saved[split]
            if images is None:
                if value is not None:
                    raise CheckpointError(f"its predictions hold '{split}' rows, but this run has no validation images")
                rows[split] = []
                continue
            if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.shape != (epochs, images):
                found = (f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                         else type(value).__name__)
                raise CheckpointError(f"its predictions of '{split}' should be uint8 ({epochs} epochs, {images} "
                                      f"images), found {found}")
            if len(value) and int(value.max()) >= self.num_classes:
                raise CheckpointError(f"its predictions of '{split}' hold class {int(value.max())}, beyond the "
                                      f"model's {self.num_classes} outputs")
            rows[split] = list(value.clone())
        return rows

    def apply_state(self, checked: dict[str, list[torch.Tensor]]) -> None:
        self.rows = checked


class Trainer:
    """One run's training state (model, optimizer, data on the device, RNGs, learning-rate schedule,
    history so far, record of predictions): ``train_epoch`` and ``evaluate`` advance and measure it;
    :func:`fit` drives it. It owns the state a checkpoint keeps (:meth:`state_dict`,
    :meth:`check_state`, :meth:`apply_state`), its parts' included."""

    #: what :meth:`state_dict` holds
    STATE_KEYS = ("epoch", "steps_done", "history", "model", "optimizer", "rng", "schedule", "lr", "predictions")

    def __init__(self, settings: RunSettings, data, device: torch.device, *,
                 stop: StopFlag | None = None, poll_every: int = 1000,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.s, self.device = settings, device
        self.progress = progress  # called with (steps done, steps) about 100 times an epoch
        self.stop = stop or StopFlag()
        self.poll_every = poll_every
        self.input_size = get_spec(settings.model).input_size
        configure_determinism(settings.deterministic, device)
        torch.manual_seed(settings.seed)
        self.model = build_model(settings.model, settings.num_classes, settings.deterministic)
        if settings.init == "paper":
            recipes.paper_init(self.model)
        self.model = self.model.to(device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = self.make_optimizer(self.model)
        self.order_rng = torch.Generator(device=device)
        self.order_rng.manual_seed(settings.seed)
        train_images, train_labels = data.train_images, data.train_labels
        self.val_index = None  # which training images are held out for validation
        if settings.validation_images:
            keep, self.val_index = validation_split(train_labels, settings.validation_images)
            self.val_x = torch.as_tensor(train_images[self.val_index]).to(device)
            self.val_y = torch.as_tensor(train_labels[self.val_index], dtype=torch.int64).to(device)
            train_images, train_labels = train_images[keep], train_labels[keep]
        if settings.validation_images and len(train_labels) < settings.batch_size:
            raise SettingsError(
                f"validation_images: {settings.validation_images} held out leaves {len(train_labels)} training "
                f"image(s), fewer than one batch of {settings.batch_size}; lower validation_images or batch_size")
        self.train_x = torch.as_tensor(train_images).to(device)
        self.train_y = torch.as_tensor(train_labels, dtype=torch.int64).to(device)
        self.test_x = torch.as_tensor(data.test_images).to(device)
        self.test_y = torch.as_tensor(data.test_labels, dtype=torch.int64).to(device)
        self.input_norm = recipes.InputNorm(settings, train_images, device)  # the mean image of the trained ones
        self.augment = recipes.Augmenter(settings, train_images, device, self.input_norm)
        self.schedule = recipes.LrSchedule(settings)
        self.totals = EpochTotals(device)
        self.batch_idx = torch.zeros(settings.batch_size, dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.use_graph = device.type == "cuda" and settings.cuda_graph
        self.history: list[dict] = []
        self.predictions = PredictionRecord(len(self.test_y), len(self.val_y) if self.validating else None,
                                            settings.num_classes)
        self.steps_done = 0  # optimizer steps so far, over all epochs
        self.warmup_left = 3  # eager steps before capturing the CUDA graph

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.SGD:
        """SGD with this run's settings over ``model`` (the checkpoint loader builds one too), its
        parameter groups as ``bias_decay`` says (:func:`recipes.parameter_groups`)."""
        s = self.s
        return torch.optim.SGD(recipes.parameter_groups(model, s), lr=s.lr, momentum=s.momentum,
                               weight_decay=s.weight_decay, nesterov=s.nesterov, fused=s.fused_sgd,
                               foreach=not s.fused_sgd)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        """The learning rate of the steps to come (it changes between epochs only).

        The SGD update takes the lr as a number, and a captured CUDA graph replays the number it was
        captured with: a graph made before a change would silently train at the old lr. So a change
        drops the graph, and the next full batch captures the step anew (the optimizer's state
        exists by then: no warm-up). The alternative, an lr tensor on the device that the update
        reads at every replay, works only with the fused SGD kernel, which stays an option until a
        GPU has measured it; one capture an epoch costs milliseconds. GPU part 3 checks, from the
        weights, that a replay after a change applies the new lr."""
        if lr == self.lr:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.graph = None

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_x.shape[0] // self.s.batch_size)

    # -- the state a checkpoint keeps (alexnet_cifar.checkpoint.Stateful) ----------------------
    def state_dict(self) -> dict:
        """Everything needed to continue after the last completed epoch: the epoch, step count,
        history, model, optimizer, RNG states (the augmenter's among them), the schedule's state,
        the lr, the record of predictions and the mean image of ``input_norm: paper`` (the layout of
        checkpoint format 4)."""
        cuda = self.device.type == "cuda"
        return {
            "epoch": len(self.history), "steps_done": self.steps_done, "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data_order": self.order_rng.get_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if cuda else None, **self.augment.state_dict()},
            "schedule": self.schedule.state_dict(), "lr": self.lr, "predictions": self.predictions.state_dict(),
            "input_norm": self.input_norm.state_dict(),
        }

    def check_state(self, saved: dict) -> dict:
        """Every part of ``saved`` (a :meth:`state_dict`) checked against this run and loaded into
        fresh objects, in the order model, history, optimizer, RNG states, schedule, lr,
        predictions, mean image; a CheckpointError names the first bad one. Changes nothing."""
        missing = sorted(set(self.STATE_KEYS) - set(saved))
        if missing:
            raise CheckpointError(f"it has no {', '.join(missing)}")
        model = self._checked_model(saved["model"])
        records = self._checked_history(saved)
        return {
            "model": model,
            "optimizer": self._checked_optimizer(saved["optimizer"], model),
            "rng": self._checked_rng(saved["rng"]),
            "augment": self.augment.check_state(saved["rng"]),
            "history": records,
            "steps_done": saved["steps_done"],
            "schedule": self.schedule.check_state(saved["schedule"], history=records),
            "lr": self._checked_lr(saved["lr"], records),
            "predictions": self.predictions.check_state(saved["predictions"], epochs=len(records)),
            # not among STATE_KEYS: a format-4 checkpoint written before input_norm has none, which
            # is what a half run keeps (no mean image)
            "input_norm": self.input_norm.check_state(saved.get("input_norm")),
        }

    def apply_state(self, checked: dict) -> None:
        """Move the checked parts in; nothing here can fail on a checked state."""
        self.model.load_state_dict(checked["model"].state_dict())
        self.optimizer.load_state_dict(checked["optimizer"].state_dict())
        rng = checked["rng"]
        torch.set_rng_state(rng["torch"])
        self.order_rng.set_state(rng["data_order"])
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.augment.apply_state(checked["augment"])
        self.history = list(checked["history"])
        self.steps_done = checked["steps_done"]
        self.schedule.apply_state(checked["schedule"])
        self.set_lr(checked["lr"])
        self.predictions.apply_state(checked["predictions"])
        self.input_norm.apply_state(checked["input_norm"])

    def _checked_model(self, saved: Any) -> torch.nn.Module:
        """A copy of the model (copying draws no random numbers) holding the saved weights."""
        if not isinstance(saved, dict):
            raise CheckpointError("its model is not a state dict")
        expected = self.model.state_dict()
        if set(saved) != set(expected):
            raise CheckpointError(f"its model's parameters differ: missing {sorted(set(expected) - set(saved))}, "
                                  f"unexpected {sorted(set(saved) - set(expected))}")
        for name, like in expected.items():
            check_tensor(saved[name], like, f"model parameter {name!r}")
        fresh = copy.deepcopy(self.model)
        fresh.load_state_dict(saved)
        return fresh

    def _checked_optimizer(self, saved: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
        """A fresh optimizer over ``model`` with the saved momenta and this run's own hyperparameters
        (the fingerprint says they define the same result; fused or foreach is this run's choice)."""
        if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
            raise CheckpointError("its optimizer is not an optimizer state dict")
        optimizer = self.make_optimizer(model)
        params = [p for group in optimizer.param_groups for p in group["params"]]  # the state's numbering
        momenta = saved["state"]
        # After an epoch every parameter has its momentum buffer; SGD without momentum keeps none.
        wanted = set(range(len(params))) if self.s.momentum else set()
        if set(momenta) != wanted:
            raise CheckpointError(f"its optimizer holds momenta for {len(momenta)} parameters, "
                                  f"expected {len(wanted)}")
        for index, entry in momenta.items():
            if not isinstance(entry, dict) or set(entry) != {"momentum_buffer"}:
                raise CheckpointError(f"its optimizer state of parameter {index} is not a momentum buffer")
            check_tensor(entry["momentum_buffer"], params[index], f"optimizer momentum of parameter {index}")
        optimizer.load_state_dict({"state": momenta, "param_groups": optimizer.state_dict()["param_groups"]})
        return optimizer

    def _checked_rng(self, saved: Any) -> dict[str, torch.Tensor]:
        """The trainer's own RNG states, each usable by a generator where the run draws it (the
        augmenter checks its own, ``augment``)."""
        if not isinstance(saved, dict):
            raise CheckpointError("its RNG states are not a dict")
        own = {"torch": torch.device("cpu"), "data_order": self.device}
        if self.device.type == "cuda":
            own["cuda"] = self.device
        for name, on in own.items():
            check_rng_state(saved.get(name), on, name)
        return {name: saved[name] for name in own}

    def _checked_history(self, saved: dict) -> list[dict]:
        """The history's records, checked, with the epoch and step counts that must go with them."""
        try:
            records = history.validate_history(saved["history"], "the checkpoint's history")
        except history.HistoryError as exc:
            raise CheckpointError(str(exc)) from None
        if any(r["diverged_at_step"] is not None for r in records):
            raise CheckpointError("its history ends in divergence, which is never checkpointed")
        if not all(isinstance(saved[key], int) and not isinstance(saved[key], bool) for key in ("epoch", "steps_done")):
            raise CheckpointError("its epoch or step count is not a whole number")
        if saved["epoch"] != len(records) or len(records) >= self.s.epochs:
            raise CheckpointError(f"it says epoch {saved['epoch']} but holds {len(records)} epochs of history "
                                  f"for a run of {self.s.epochs}")
        if saved["steps_done"] != len(records) * self.steps_per_epoch:
            raise CheckpointError(f"it counts {saved['steps_done']} steps, expected {len(records)} epochs "
                                  f"of {self.steps_per_epoch}")
        return records

    @staticmethod
    def _checked_lr(saved: Any, records: list[dict]) -> float:
        """The lr to continue with: the saved one, which must be the last epoch's."""
        if saved != records[-1]["lr"]:
            raise CheckpointError(f"its lr {saved!r} is not the lr of its last epoch, {records[-1]['lr']!r}")
        return records[-1]["lr"]

    # -- the step -------------------------------------------------------------------------
    def _autocast(self):
        # No cast cache under graph capture: the cache would hold tensors from outside the graph.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.bf16,
                              cache_enabled=not self.use_graph)

    def _step(self, idx: torch.Tensor) -> None:
        """One SGD step on the images at ``idx`` (augmented, if the recipe says so); everything it
        produces stays on the device."""
        t = self.totals
        x = to_model_input(self.train_x.index_select(0, idx), self.input_size, self.s.channels_last, self.augment,
                           self.input_norm)
        y = self.train_y.index_select(0, idx)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.s.label_smoothing)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        t.loss_sum.add_(loss * idx.numel())
        t.correct.add_((logits.detach().argmax(1) == y).sum())
        t.step.add_(1)  # global, 1-based number of this step
        bad = torch.logical_and(~torch.isfinite(loss), t.first_bad_step < 0)
        t.first_bad_step.copy_(torch.where(bad, t.step, t.first_bad_step))

    def train_step(self, idx: torch.Tensor) -> None:
        """One SGD step on a full batch of training-set indexes ``idx`` (on the device): replayed
        from the CUDA graph once captured, eager otherwise. Results stay on the device."""
        if not self.use_graph:
            self._step(idx)
            return
        self.batch_idx.copy_(idx)
        with on_device(self.device):
            if self.graph is None and self.warmup_left > 0:
                # Warm-up on a side stream, as the CUDA graph recipe asks: real training steps that
                # also create the optimizer's momentum buffers before capture.
                self.warmup_left -= 1
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    self._step(self.batch_idx)
                torch.cuda.current_stream(self.device).wait_stream(side)
                return
            if self.graph is None:  # capturing records the step without running it
                self.graph = torch.cuda.CUDAGraph()
                if self.augment.generator is not None and torch.__version__ < (2, 14):
                    # a generator of our own draws new numbers at every replay only once registered;
                    # from torch 2.14 on that is automatic and the call only warns
                    self.graph.register_generator_state(self.augment.generator)
                self.optimizer.zero_grad(set_to_none=True)
                with torch.cuda.graph(self.graph):
                    self._step(self.batch_idx)
            self.graph.replay()

    # -- the epoch ------------------------------------------------------------------------
    def train_epoch(self) -> tuple[float, float, int | None]:
        """One pass over the shuffled training set: (mean loss, accuracy %, diverged_at_step)."""
        bs, n = self.s.batch_size, self.train_x.shape[0]
        self.model.train()
        self.totals.reset(self.steps_done)
        order = torch.randperm(n, generator=self.order_rng, device=self.device)
        full = n // bs
        batches = order[: full * bs].view(full, bs)
        seen, report_every = 0, max(1, full // 100)
        for i in range(full):
            self.stop.check()
            self.train_step(batches[i])
            seen += bs
            if self.progress and (i + 1) % report_every == 0:
                self.progress(i + 1, full)
            if (i + 1) % self.poll_every == 0 and self.totals.first_bad_step.item() >= 0:
                break  # one host sync every poll_every steps lets a diverged run stop early
        else:
            if seen < n:  # the last, smaller batch runs eagerly (a graph has fixed shapes)
                self.stop.check()
                self._step(order[seen:])
                seen = n
        self.steps_done = int(self.totals.step.item())
        first_bad = int(self.totals.first_bad_step.item())
        return (float(self.totals.loss_sum.item()) / seen, 100.0 * int(self.totals.correct.item()) / seen,
                first_bad if first_bad >= 0 else None)

    # -- the evaluation -------------------------------------------------------------------
    @property
    def validating(self) -> bool:
        return self.val_index is not None

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> Evaluation:
        """Mean cross-entropy (without label smoothing), accuracy (%) and predictions on the
        ``test`` or ``val`` split, in large batches, dropout off, the input made as the training's
        (the same mean image under ``input_norm: paper``); with ``tta_flip`` each image's logits are
        averaged with its mirror's (under ``paper`` the mirrored image less m, as a flip in
        training gives it, not the mirror of x - m)."""
        images, labels = (self.test_x, self.test_y) if split == "test" else (self.val_x, self.val_y)
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        predicted = torch.empty(len(labels), dtype=torch.int64, device=self.device)
        n, eb = images.shape[0], self.s.eval_batch_size
        for start in range(0, n, eb):
            batch = images[start:start + eb]
            x = to_model_input(batch, self.input_size, self.s.channels_last, norm=self.input_norm)
            y = labels[start:start + eb]
            with self._autocast():
                logits = self.model(x).float()
                if self.s.tta_flip:
                    mirrored = x.flip(-1) if self.input_norm.mean is None else to_model_input(
                        batch.flip(-1), self.input_size, self.s.channels_last, norm=self.input_norm)
                    logits = 0.5 * (logits + self.model(mirrored).float())
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            predicted[start:start + eb] = logits.argmax(1)
            correct += (predicted[start:start + eb] == y).sum()
        self.model.train()
        return Evaluation(float(loss_sum.item()) / n, 100.0 * int(correct.item()) / n, predicted)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def format_epoch_line(record: dict, epochs: int, eta_seconds: float | None) -> str:
    def num(key, fmt):
        return "nan" if record[key] is None else format(record[key], fmt)

    line = (f"epoch {record['epoch']}/{epochs} train_loss {num('train_loss', '.4f')} "
            f"train_acc {num('train_acc', '.2f')}% test_loss {num('test_loss', '.4f')} "
            f"test_acc {num('test_acc', '.2f')}%")
    if record.get("val_acc") is not None:
        line += f" val_loss {num('val_loss', '.4f')} val_acc {num('val_acc', '.2f')}%"
    line += f" lr {record['lr']:.3g} {record['seconds']:.1f}s"
    if record.get("diverged_at_step") is not None:
        line += f" DIVERGED at step {record['diverged_at_step']}: training stopped"
    elif eta_seconds is not None:
        line += f" eta {time.strftime('%H:%M:%S', time.gmtime(eta_seconds))}"
    return line


def fit(settings: RunSettings, data, out_dir: str | os.PathLike, device: torch.device, *,
        data_md5: str, log: Callable[[str], None] = print, stop: StopFlag | None = None,
        poll_every: int = 1000, progress: Callable[[int, int], None] | None = None,
        on_epoch: Callable[[list[dict]], None] | None = None) -> tuple[list[dict], int]:
    """Train one run into ``out_dir``: ``history.jsonl``, ``predictions.npz`` and ``model.pt`` at the
    end, a checkpoint after every epoch (removed once the outputs exist). Resumes from a matching
    checkpoint.
    ``on_epoch`` sees the history after every epoch. Returns the history and the number of epochs
    taken over from the checkpoint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / layout.CHECKPOINT_FILE
    fingerprint = settings.fingerprint(data_md5)
    trainer = Trainer(settings, data, device, stop=stop, poll_every=poll_every, progress=progress)
    checkpoint.resume(checkpoint_path, trainer, fingerprint, log=log)
    records = trainer.history
    resumed_from = len(records)
    diverged = False
    while len(records) < settings.epochs and not diverged:
        started = time.perf_counter()
        epoch = len(records) + 1
        trainer.set_lr(trainer.schedule.lr(epoch))
        train_loss, train_acc, bad_step = trainer.train_epoch()
        test = trainer.evaluate("test")  # reads the results: the epoch's work is done
        val = trainer.evaluate("val") if trainer.validating else None
        if bad_step is None and not math.isfinite(test.loss):
            bad_step = trainer.steps_done  # every loss was finite, but the last updates were not
        for split, result in (("test", test), ("val", val)):
            if result is not None:  # the classes behind the epoch's accuracy, for per-class results
                trainer.predictions.add(split, result.predicted)
        records.append({
            "epoch": epoch, "train_loss": _finite_or_none(train_loss), "train_acc": train_acc,
            "test_loss": _finite_or_none(test.loss), "test_acc": test.acc,
            "val_loss": None if val is None else _finite_or_none(val.loss), "val_acc": None if val is None else val.acc,
            "lr": trainer.lr, "seconds": time.perf_counter() - started, "diverged_at_step": bad_step,
        })
        diverged = bad_step is not None
        if not diverged:
            trainer.schedule.observe(records[-1]["val_acc"])
        mean_seconds = sum(r["seconds"] for r in records) / len(records)
        log(format_epoch_line(records[-1], settings.epochs, mean_seconds * (settings.epochs - len(records))))
        if not diverged and len(records) < settings.epochs:
            checkpoint.save(checkpoint_path, trainer, fingerprint)
        if on_epoch is not None:
            on_epoch(records)
    with atomic_path(out_dir / layout.MODEL_FILE) as tmp:
        torch.save({"model": settings.model, "num_classes": settings.num_classes,
                    "settings": settings.result_params(), "state_dict": trainer.model.state_dict()}, tmp)
    trainer.predictions.write(out_dir / layout.PREDICTIONS_FILE, trainer.val_index)
    history.write_history(out_dir / layout.HISTORY_FILE, records)
    checkpoint_path.unlink(missing_ok=True)
    return records, resumed_from
