"""The training engine: SGD over the whole data set held on the training device.

Batch 4 makes every step tiny, so the time goes to Python, data loading and kernel launches rather
than arithmetic. The engine therefore keeps the uint8 data set on the device and gathers, converts
and resizes each batch there; shuffles with a seeded generator on the device; sums loss, correct
count and the first non-finite step on the device, reading them once per epoch (and every
``poll_every`` steps, to stop a diverged run early); and on CUDA captures the whole step (gather,
resize, forward, loss, one ``loss.backward()``, one SGD update) as one CUDA graph and replays it.
The CPU runs the same step eagerly.

Measured (``docs/gpu/bench.md``; NVIDIA H200, 2026-11-26, commit d7d8525, which had this step;
the torch version was not recorded then, the GPU script records it now)::

    python -m alexnet_cifar bench --data cifar10.npz --models paper,torchvision --steps 400 \\
        --warmup 50 --device cuda --loops plain,engine,engine-eager,engine+bf16+channels_last

    ms/step      plain   engine (graph)   engine, eager
    paper        4.98    1.61             3.91
    torchvision  4.81    1.63             3.75

The graph and eager paths trained alike over two epochs with evaluation between them
(``docs/gpu/graph_vs_eager.json``). The update is PyTorch's multi-tensor (foreach) SGD, the one
measured there; the fused kernel (``fused_sgd``) is an option until a GPU shows it faster inside
the graph. Checkpoints: :mod:`alexnet_cifar.checkpoint`. Training recipes (augmentation inside the
step, the learning rate of each epoch, the paper's initialisation): :mod:`alexnet_cifar.recipes`;
a validation split held out of the training images is evaluated with the test set after every
epoch.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, classes, history, recipes
from .atomic import atomic_path
from .config import RunSettings, SettingsError
from .data import validation_split
from .models import build_model, get_spec

MODEL_FILE, CHECKPOINT_FILE = "model.pt", "checkpoint.pt"


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


class Trainer:
    """One run's training state (model, optimizer, data on the device, RNGs, learning-rate schedule,
    history so far): ``train_epoch`` and ``evaluate`` advance and measure it; :func:`fit` drives it."""

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
        #: each evaluated epoch's predicted classes (uint8 on the CPU): "test", and "val" with validation
        self.predictions: dict[str, list[torch.Tensor]] = {"test": [], "val": []}
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
    checkpoint_path = out_dir / CHECKPOINT_FILE
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
                trainer.predictions[split].append(result.predicted.to("cpu", torch.uint8))
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
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        torch.save({"model": settings.model, "num_classes": settings.num_classes,
                    "settings": settings.result_params(), "state_dict": trainer.model.state_dict()}, tmp)
    record = {split: torch.stack(rows).numpy() for split, rows in trainer.predictions.items() if rows}
    classes.write_predictions(out_dir / classes.PREDICTIONS_FILE, record["test"], record.get("val"),
                              trainer.val_index)
    history.write_history(out_dir / history.HISTORY_FILE, records)
    checkpoint_path.unlink(missing_ok=True)
    return records, resumed_from
