"""The training engine: SGD over the whole data set held on the training device.

Batch 4 makes every step tiny, so the time goes to Python, data loading and kernel launches rather
than arithmetic. The engine therefore
- keeps the uint8 data set on the device and gathers, converts and resizes each batch there;
- shuffles with a seeded generator on the device;
- accumulates loss, correct count and the first non-finite step on the device, reading them once per
  epoch (and every ``poll_every`` steps, to stop a diverged run early) instead of every step;
- updates the weights with PyTorch's fused SGD kernel (one pass over parameters, gradients, momenta);
- runs the backward pass in two parts, cut where the classifier begins, so the classifier's update
  (94-96 % of the parameters) can run on a second CUDA stream while the convolutions' gradients are
  computed (``overlap_update``);
- on CUDA, captures the whole step (gather, resize, forward, loss, backward, SGD update) as one CUDA
  graph and replays it. The CPU runs the same step eagerly.

After every epoch it writes a checkpoint (model, optimizer, RNG states, history), so a killed job
resumes from the last completed epoch; ``history.jsonl`` and ``model.pt`` are written once, at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .atomic import atomic_path, write_text
from .config import RunSettings
from .models import build_model, get_spec

HISTORY_FILE, MODEL_FILE, CHECKPOINT_FILE = "history.jsonl", "model.pt", "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: one optimizer state for the features, one for the classifier


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


def to_model_input(images_u8: torch.Tensor, size: int, channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW 32x32 -> float in [-1, 1] (ToTensor + Normalize(0.5, 0.5)), bilinear to size x size."""
    x = images_u8.float().mul_(2.0 / 255.0).sub_(1.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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


class Trainer:
    """One run's training state (model, optimizer, data on the device, RNGs): ``train_epoch`` and
    ``evaluate`` advance and measure it, ``fit`` drives it epoch by epoch with checkpoints."""

    def __init__(self, settings: RunSettings, data, device: torch.device, *,
                 log: Callable[[str], None] = print, stop: StopFlag | None = None,
                 poll_every: int = 1000, progress: Callable[[int, int], None] | None = None) -> None:
        self.s, self.device, self.log = settings, device, log
        self.progress = progress  # called with (steps done, steps) about 100 times an epoch
        self.stop = stop or StopFlag()
        self.poll_every = poll_every
        spec = get_spec(settings.model)
        self.input_size, self.body = spec.input_size, spec.body
        configure_determinism(settings.deterministic, device)
        torch.manual_seed(settings.seed)
        self.model = build_model(settings.model, settings.num_classes, settings.deterministic).to(device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Fused: one kernel reads parameter, gradient and momentum and writes parameter and momentum
        # (5 passes over model-sized tensors); foreach needs three kernels and 8 passes. At batch 4
        # most of a step's memory traffic is the optimizer's.
        self.sgd_impl = {"fused": settings.fused_sgd, "foreach": not settings.fused_sgd}
        classifier = list(self.model.classifier.parameters())
        in_classifier = set(classifier)
        # Two optimizers, one per part of the cut backward pass (see _step); same SGD, same settings.
        self.optimizers = {
            part: torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                  weight_decay=settings.weight_decay, **self.sgd_impl)
            for part, params in (
                ("features", [p for p in self.model.parameters() if p not in in_classifier]),
                ("classifier", classifier))}
        self.update_stream = (torch.cuda.Stream(device) if device.type == "cuda" and settings.overlap_update
                              else None)
        self.order_rng = torch.Generator(device=device)
        self.order_rng.manual_seed(settings.seed)
        self.train_x = torch.as_tensor(data.train_images).to(device)
        self.train_y = torch.as_tensor(data.train_labels, dtype=torch.int64).to(device)
        self.test_x = torch.as_tensor(data.test_images).to(device)
        self.test_y = torch.as_tensor(data.test_labels, dtype=torch.int64).to(device)
        self.totals = EpochTotals(device)
        self.batch_idx = torch.zeros(settings.batch_size, dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.use_graph = device.type == "cuda" and settings.cuda_graph
        self.history: list[dict] = []
        self.steps_done = 0  # optimizer steps so far, over all epochs
        self.warmup_left = 3  # eager steps before capturing the CUDA graph

    # -- the step -------------------------------------------------------------------------
    def _autocast(self):
        # No cast cache under graph capture: the cache would hold tensors from outside the graph.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.bf16,
                              cache_enabled=not self.use_graph)

    def _zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def _beside_backward(self) -> Iterator[None]:
        """Run the block on ``update_stream``, after the work queued so far (or inline without one)."""
        if self.update_stream is None:
            yield
            return
        self.update_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.update_stream):
            yield

    def _step(self, idx: torch.Tensor) -> None:
        """One SGD step on the images at ``idx``; everything it produces stays on the device.

        The backward pass is cut where the classifier begins: first the classifier's gradients (and
        the gradient of its input), then its update, then the features' gradients and update. The
        arithmetic is that of one ``loss.backward()`` and one SGD step. With ``update_stream`` the
        classifier's update, which moves most of the step's bytes, runs beside the features' backward.
        """
        t = self.totals
        x = to_model_input(self.train_x.index_select(0, idx), self.input_size, self.s.channels_last)
        y = self.train_y.index_select(0, idx)
        self._zero_grad()
        with self._autocast():
            features = self.body(self.model, x)
            cut = features.detach().requires_grad_()
            logits = self.model.classifier(cut)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()  # stops at the cut: the classifier's gradients and cut.grad
        with self._beside_backward():
            self.optimizers["classifier"].step()
        features.backward(cut.grad)  # on the forward's stream, as autograd always runs it
        self.optimizers["features"].step()
        if self.update_stream is not None:  # the step ends when both streams are done
            torch.cuda.current_stream(self.device).wait_stream(self.update_stream)
        loss = loss.detach()
        t.loss_sum.add_(loss * idx.numel())
        t.correct.add_((logits.detach().argmax(1) == y).sum())
        t.step.add_(1)  # global, 1-based number of this step
        bad = torch.logical_and(~torch.isfinite(loss), t.first_bad_step < 0)
        t.first_bad_step.copy_(torch.where(bad, t.step, t.first_bad_step))

    def _capture(self) -> None:
        """Capture ``_step`` on ``batch_idx`` as a CUDA graph (after eager warm-up steps)."""
        self.graph = torch.cuda.CUDAGraph()
        self._zero_grad()
        with torch.cuda.graph(self.graph):
            self._step(self.batch_idx)

    def train_step(self, idx: torch.Tensor) -> None:
        """One SGD step on a full batch of training-set indexes ``idx`` (on the device): replayed
        from the CUDA graph once captured, eager otherwise. Results stay on the device."""
        if not self.use_graph:
            self._step(idx)
            return
        self.batch_idx.copy_(idx)
        if self.graph is None and self.warmup_left > 0:
            self.warmup_left -= 1
            # Warm-up on a side stream, as the CUDA graph recipe asks: real training steps that
            # also create the optimizer's momentum buffers before capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(self.batch_idx)
            torch.cuda.current_stream().wait_stream(side)
            return
        if self.graph is None:
            self._capture()  # capturing records the step without running it
        self.graph.replay()

    # -- epochs ---------------------------------------------------------------------------
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

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean cross-entropy and accuracy (%) on the test set, in large batches, dropout off."""
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        n, eb = self.test_x.shape[0], self.s.eval_batch_size
        for start in range(0, n, eb):
            x = to_model_input(self.test_x[start:start + eb], self.input_size, self.s.channels_last)
            y = self.test_y[start:start + eb]
            with self._autocast():
                logits = self.model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        self.model.train()
        return float(loss_sum.item()) / n, 100.0 * int(correct.item()) / n

    # -- checkpoints ----------------------------------------------------------------------
    def state(self, fingerprint: str) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": len(self.history),
            "steps_done": self.steps_done, "history": self.history,
            "model": self.model.state_dict(),
            "optimizers": {part: o.state_dict() for part, o in self.optimizers.items()},
            "rng": {"torch": torch.get_rng_state(), "data_order": self.order_rng.get_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if cuda else None},
        }

    def save_checkpoint(self, path: Path, fingerprint: str) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.state(fingerprint), tmp)

    def load_checkpoint(self, path: Path, fingerprint: str) -> bool:
        """Resume from ``path`` if it belongs to this run; set it aside (and start fresh) if not."""
        if not path.exists():
            return False
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            if ck.get("format") != CHECKPOINT_FORMAT:
                problem = f"it has format {ck.get('format')}, this version reads format {CHECKPOINT_FORMAT}"
            elif ck.get("fingerprint") != fingerprint:
                problem = "it was written by other settings or data"
            else:
                problem = None
            if problem is None:
                self.model.load_state_dict(ck["model"])
                for part, optimizer in self.optimizers.items():
                    optimizer.load_state_dict(ck["optimizers"][part])
                    for group in optimizer.param_groups:  # loading brought the writer's choice back
                        group.update(self.sgd_impl)
                torch.set_rng_state(ck["rng"]["torch"])
                self.order_rng.set_state(ck["rng"]["data_order"])
                if self.device.type == "cuda" and ck["rng"]["cuda"] is not None:
                    torch.cuda.set_rng_state(ck["rng"]["cuda"], self.device)
                self.history, self.steps_done = list(ck["history"]), int(ck["steps_done"])
                self.log(f"resuming from {path} after epoch {ck['epoch']}")
                return True
        except Exception as exc:  # unreadable: truncated, corrupt, another format
            problem = f"it cannot be read ({type(exc).__name__}: {exc})"
        aside = path.with_name(f"{path.stem}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        os.replace(path, aside)
        self.log(f"not resuming from {path}: {problem}; moved it to {aside.name}, starting fresh")
        return False


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def format_epoch_line(record: dict, epochs: int, eta_seconds: float | None) -> str:
    def num(key, fmt):
        return "nan" if record[key] is None else format(record[key], fmt)
    line = (f"epoch {record['epoch']}/{epochs} train_loss {num('train_loss', '.4f')} "
            f"train_acc {num('train_acc', '.2f')}% test_loss {num('test_loss', '.4f')} "
            f"test_acc {num('test_acc', '.2f')}% {record['seconds']:.1f}s")
    if record.get("diverged_at_step") is not None:
        line += f" DIVERGED at step {record['diverged_at_step']}: training stopped"
    elif eta_seconds is not None:
        line += f" eta {time.strftime('%H:%M:%S', time.gmtime(eta_seconds))}"
    return line


def fit(settings: RunSettings, data, out_dir: str | os.PathLike, device: torch.device, *,
        data_md5: str, log: Callable[[str], None] = print, stop: StopFlag | None = None,
        poll_every: int = 1000, progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], int]:
    """Train one run into ``out_dir``: ``history.jsonl`` and ``model.pt`` at the end, a checkpoint
    after every epoch (removed once the outputs exist). Resumes from a matching checkpoint.
    Returns the history and the number of epochs taken over from the checkpoint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT_FILE
    fingerprint = settings.fingerprint(data_md5)
    trainer = Trainer(settings, data, device, log=log, stop=stop, poll_every=poll_every, progress=progress)
    trainer.load_checkpoint(checkpoint, fingerprint)
    history = trainer.history
    resumed_from = len(history)
    diverged = any(r.get("diverged_at_step") is not None for r in history)
    while len(history) < settings.epochs and not diverged:
        started = time.perf_counter()
        train_loss, train_acc, bad_step = trainer.train_epoch()
        test_loss, test_acc = trainer.evaluate()  # reads the results: the epoch's work is done
        record = {
            "epoch": len(history) + 1, "train_loss": _finite_or_none(train_loss), "train_acc": train_acc,
            "test_loss": _finite_or_none(test_loss), "test_acc": test_acc,
            "lr": trainer.optimizers["classifier"].param_groups[0]["lr"], "seconds": time.perf_counter() - started,
            "diverged_at_step": bad_step,
        }
        history.append(record)
        diverged = bad_step is not None
        mean_seconds = sum(r["seconds"] for r in history) / len(history)
        log(format_epoch_line(record, settings.epochs, mean_seconds * (settings.epochs - len(history))))
        if not diverged and len(history) < settings.epochs:
            trainer.save_checkpoint(checkpoint, fingerprint)
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        torch.save({"model": settings.model, "num_classes": settings.num_classes,
                    "settings": settings.result_params(), "state_dict": trainer.model.state_dict()}, tmp)
    write_text(out_dir / HISTORY_FILE, "".join(json.dumps(r, allow_nan=False) + "\n" for r in history))
    checkpoint.unlink(missing_ok=True)
    return history, resumed_from


def read_history(path: str | os.PathLike) -> list[dict]:
    """The records of a ``history.jsonl``, one per epoch."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
