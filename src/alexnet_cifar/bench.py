"""Speed benchmark: the original experiment's training loop against the engine, on one device.

Each row times ``steps`` SGD steps (after ``warmup`` untimed ones) of one model with one training
loop, all in this process on the same device, at the protocol's batch 4 or at the batch size and
training recipe given (``--batch-size 128 --augment-flip ...``, the options ``train`` has), so that
a rung of the ladder can be timed:

- ``plain``: the original loop: a DataLoader over PIL images resized on the CPU, and
  ``loss.item()`` (a host sync) every step;
- ``engine`` and its variants (:data:`ENGINE_LOOPS`): :class:`alexnet_cifar.engine.Trainer`, data on
  the device, the whole step captured as a CUDA graph on CUDA.

``epoch_minutes`` projects one epoch over the training split (50,000 images less any
``validation_images``) at the bench's batch size from the measured step time, ``protocol_minutes``
the write-up's 50 such epochs; evaluation is not included.
"""
from __future__ import annotations

import argparse
import gc
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from .atomic import write_text
from .config import RunSettings, value_label
from .data import load_npz
from .errors import UserError
from .models import MODELS, build_model, get_spec

LR, MOMENTUM = 0.001, 0.9  # the protocol's (the step's speed does not depend on them)
TRAIN_IMAGES, PROTOCOL_EPOCHS = 50_000, 50
COLUMNS = ["model", "loop", "device_name", "batch_size", "ms_per_step", "images_per_s", "epoch_minutes",
           "protocol_minutes", "peak_mem_mb"]
#: RunSettings the bench takes as options (the rest are the protocol's, or the loop's)
SETTINGS = ("batch_size", "weight_decay", "augment_flip", "augment_translate", "augment_pca_colour", "lr_schedule",
            "lr_milestones", "lr_gamma", "lr_patience", "lr_max_drops", "warmup_epochs", "nesterov",
            "label_smoothing", "init", "validation_images", "tta_flip", "input_norm", "bias_decay")
PROFILE_COLUMNS = ["model", "kernel", "calls_per_step", "us_per_step", "share_pct"]
#: Engine loops by name: RunSettings fields that differ from the engine's defaults.
ENGINE_LOOPS: dict[str, dict] = {
    "engine": {},
    "engine-eager": {"cuda_graph": False},  # on the CPU the same as "engine": it never uses a graph
    "engine-fused": {"fused_sgd": True},  # the fused SGD kernel instead of the multi-tensor update
    "engine+bf16+channels_last": {"bf16": True, "channels_last": True},
}
DEFAULT_LOOPS = ("plain", "engine")


class BenchError(UserError, ValueError):
    """Bench arguments that cannot work (unknown loop, too few images, no such device)."""


class PilImages(torch.utils.data.Dataset):
    """The original data path: each uint8 image becomes a PIL image, then goes through ``transform``."""

    def __init__(self, images_nchw: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))  # HWC, as torchvision's CIFAR10
        self.labels = labels.astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def resolve_device(requested: str) -> torch.device:
    """auto: the current CUDA GPU if there is one, else the CPU (the bench may run anywhere)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if not requested.startswith("cuda"):
        raise BenchError(f"device: must be auto, cpu, cuda or cuda:N, got {requested!r}")
    if not torch.cuda.is_available():
        raise BenchError(f"device {requested}: no CUDA GPU is available; use --device cpu or auto")
    device = torch.device(requested)
    index = torch.cuda.current_device() if device.index is None else device.index
    torch.cuda.set_device(index)  # the bench's cache clean-up between rows acts on the current device
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_cuda() -> None:
    # cuBLAS keeps a workspace (tens of MB) for every stream it ran on, and the engine warms up on
    # new side streams: without clearing them, every row's peak memory includes earlier rows'.
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()


def _time_steps(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Milliseconds per call of ``step`` over ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps * 1000


def _plain_ms(model_name: str, data, device: torch.device, warmup: int, steps: int, batch_size: int) -> float:
    cuda = device.type == "cuda"
    # The original ran with PyTorch's defaults; an earlier engine row turns cudnn.benchmark on.
    torch.backends.cudnn.benchmark = False
    size = get_spec(model_name).input_size
    transform = transforms.Compose([
        transforms.Resize(size), transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    loader = torch.utils.data.DataLoader(
        PilImages(data.train_images, data.train_labels, transform), batch_size=batch_size,
        shuffle=True, num_workers=4 if cuda else 0, pin_memory=cuda)

    def batches() -> Iterator:
        while True:  # a new epoch (and, as in the original, new workers) when the data run out
            yield from loader

    torch.manual_seed(0)
    model = build_model(model_name).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    source = batches()

    def step() -> None:
        x, y = next(source)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()  # the original read the loss every step: a host sync per step

    try:
        return _time_steps(step, warmup, steps, device)
    finally:
        source.close()  # drops the DataLoader iterator, which stops its workers


def _trainer(model_name: str, data, device: torch.device, overrides: Mapping):
    """The engine at the bench's lr and momentum with ``overrides`` of its settings (the bench's
    batch size and recipe, then the loop's)."""
    from .engine import Trainer

    settings = RunSettings.from_mapping({"model": model_name, "lr": LR, "momentum": MOMENTUM, "device": str(device),
                                         **overrides})
    return Trainer(settings, data, device)


def _engine_ms(model_name: str, data, device: torch.device, warmup: int, steps: int,
               overrides: Mapping) -> float:
    trainer = _trainer(model_name, data, device, overrides)
    batch = trainer.s.batch_size
    # Warm-up must include the CUDA graph's eager warm-up steps and its capture.
    warmup = max(warmup, trainer.warmup_left + 1) if trainer.use_graph else warmup
    # Shuffled full batches, as train_epoch draws them, made before timing (one randperm an epoch).
    n, total = trainer.train_x.shape[0], warmup + steps
    full = n // batch
    gen = torch.Generator(device=device).manual_seed(0)
    order = torch.cat([torch.randperm(n, generator=gen, device=device)[: full * batch]
                       for _ in range(-(-total // full))]).view(-1, batch)
    rows = iter(order)

    def step() -> None:
        trainer.train_step(next(rows))

    return _time_steps(step, warmup, steps, device)


def profile_engine(model_name: str, data, device: torch.device, steps: int, warmup: int = 5,
                   settings: Mapping = MappingProxyType({})) -> pd.DataFrame:
    """Where the engine's step spends its device time: ``steps`` eager steps under the PyTorch
    profiler, one row per kernel (per operator on the CPU) with its calls and time per step.

    Eager, because the kernels inside a replayed CUDA graph are the same but not all profilers see
    them; the graph's own ms/step minus the kernel total is what launch gaps cost."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    trainer = _trainer(model_name, data, device, {**settings, "cuda_graph": False})
    n, batch = trainer.train_x.shape[0], trainer.s.batch_size
    batches = torch.arange(batch * (warmup + steps), device=device).remainder(n).view(-1, batch)
    for idx in batches[:warmup]:
        trainer.train_step(idx)
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for idx in batches[warmup:]:
            trainer.train_step(idx)
        _sync(device)
    rows = []
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0 and (cuda or event.key.startswith("aten::")):
            rows.append({"model": model_name, "kernel": event.key, "calls_per_step": event.count / steps,
                         "us_per_step": us / steps})
    frame = pd.DataFrame(rows, columns=PROFILE_COLUMNS[:-1]).sort_values("us_per_step", ascending=False)
    frame["share_pct"] = 100 * frame["us_per_step"] / frame["us_per_step"].sum()
    return frame.reset_index(drop=True)


def profile_markdown(frame: pd.DataFrame, top: int = 8) -> str:
    """The ``top`` kernels of each model and the total device time per step."""
    lines = []
    for model_name, rows in frame.groupby("model", sort=False):
        total_ms = rows["us_per_step"].sum() / 1000
        lines += ["", f"{model_name}: {total_ms:.3f} ms of device time per eager step in "
                      f"{rows['calls_per_step'].sum():.0f} kernels (operators, on the CPU); the largest:", ""]
        lines += [f"- {row.us_per_step:,.1f} us ({row.share_pct:.1f} %, {row.calls_per_step:g}x) "
                  f"{row.kernel[:100]}" for row in rows.head(top).itertuples()]
    return "\n".join(lines) + "\n"


def run_bench(data_path, models: Sequence[str], steps: int, device: str | torch.device, out_dir, *,
              warmup: int = 20, loops: Sequence[str] = DEFAULT_LOOPS,
              engine_options: Mapping[str, Mapping] = ENGINE_LOOPS, settings: Mapping = MappingProxyType({}),
              profile_steps: int = 0, log: Callable[[str], None] = lambda _: None) -> pd.DataFrame:
    """Time every (model, loop) pair; write ``out_dir/bench.csv`` and ``out_dir/bench.md``.

    ``loops`` names ``plain`` and keys of ``engine_options`` (engine variants as RunSettings
    overrides). ``settings`` (keys of :data:`SETTINGS`) apply to every engine loop, and the batch
    size to the plain loop too; unset, the protocol's batch 4 and no recipe. With
    ``profile_steps``, also profile that many engine steps of each model (:func:`profile_engine`)
    into ``out_dir/profile.csv`` and a section of ``bench.md``. Returns the rows of ``bench.csv``.
    """
    models, loops = list(dict.fromkeys(models)), list(dict.fromkeys(loops))
    for name in models:
        get_spec(name)
    unknown = [loop for loop in loops if loop != "plain" and loop not in engine_options]
    if unknown:
        raise BenchError(f"unknown loop(s) {', '.join(unknown)}; choose from: plain, {', '.join(engine_options)}")
    if steps < 1 or warmup < 0 or profile_steps < 0:
        raise BenchError(f"steps must be >= 1, warmup and profile >= 0, got steps={steps}, "
                         f"warmup={warmup}, profile={profile_steps}")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise BenchError(f"the bench takes no setting {', '.join(unknown)}; it takes: {', '.join(SETTINGS)}")
    settings = {"batch_size": 4, **settings}
    batch = settings["batch_size"]
    epoch_steps = -(-(TRAIN_IMAGES - settings.get("validation_images", 0)) // batch)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    name, cuda = device_name(dev), dev.type == "cuda"
    data = load_npz(data_path)
    if len(data.train_labels) - settings.get("validation_images", 0) < batch:
        raise BenchError(f"the bench needs at least one batch of {batch} training images, got "
                         f"{len(data.train_labels)} (less {settings.get('validation_images', 0)} held out)")
    records = []
    for model_name in models:
        for loop in loops:
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            held = torch.cuda.memory_allocated(dev) if cuda else 0  # normally 0: see _free_cuda
            log(f"bench: {model_name} / {loop} on {name}: {warmup} warm-up + {steps} timed steps")
            if loop == "plain":
                ms = _plain_ms(model_name, data, dev, warmup, steps, batch)
            else:
                ms = _engine_ms(model_name, data, dev, warmup, steps, {**settings, **engine_options[loop]})
            peak = (torch.cuda.max_memory_allocated(dev) - held) / 2**20 if cuda else math.nan
            gc.collect()  # the row's model, optimizer, graph and loader went out of scope above
            if cuda:
                _free_cuda()
            records.append({"model": model_name, "loop": loop, "device_name": name, "batch_size": batch,
                            "ms_per_step": ms, "images_per_s": batch * 1000 / ms,
                            "epoch_minutes": ms * epoch_steps / 60000,
                            "protocol_minutes": ms * epoch_steps * PROTOCOL_EPOCHS / 60000, "peak_mem_mb": peak})
            log(f"bench: {model_name} / {loop}: {ms:.2f} ms/step")
    frame = pd.DataFrame(records, columns=COLUMNS)
    recipe = {key: value for key, value in settings.items() if key != "batch_size"}
    markdown = bench_markdown(frame, steps=steps, warmup=warmup, epoch_steps=epoch_steps, recipe=recipe)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if profile_steps:
        log(f"bench: profiling {profile_steps} eager engine steps of each model")
        profiles = pd.concat([profile_engine(m, data, dev, profile_steps, settings=settings) for m in models],
                             ignore_index=True)
        write_text(out_dir / "profile.csv", profiles.to_csv(index=False))
        markdown += f"\nDevice time of an eager engine step, from the PyTorch profiler ({profile_steps} steps):\n"
        markdown += profile_markdown(profiles)
    write_text(out_dir / "bench.csv", frame.to_csv(index=False))
    write_text(out_dir / "bench.md", markdown)
    return frame


def bench_markdown(frame: pd.DataFrame, *, steps: int, warmup: int, epoch_steps: int,
                   recipe: Mapping = MappingProxyType({})) -> str:
    """The bench table in markdown, with the device, the batch size, the step counts, the recipe
    (if any) and the speedups over ``plain``."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:,.2f}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for _, row in frame.iterrows()]
    devices = ", ".join(dict.fromkeys(frame["device_name"]))
    batch = ", ".join(map(str, dict.fromkeys(frame["batch_size"])))
    lines += ["", f"Device: {devices}; batch {batch}; {steps} timed steps per row after {warmup} warm-up steps; "
                  f"epoch_minutes = {epoch_steps:,} steps (one epoch), protocol_minutes = {PROTOCOL_EPOCHS} such "
                  f"epochs, training only."]
    if recipe:
        lines.append("Recipe: " + ", ".join(f"{key} {value_label(value)}" for key, value in recipe.items()) + ".")
    speedups = []
    for model_name, rows in frame.groupby("model", sort=False):
        ms = dict(zip(rows["loop"], rows["ms_per_step"], strict=True))
        if "plain" in ms:
            others = [f"{loop} {ms['plain'] / value:.2f}x" for loop, value in ms.items() if loop != "plain"]
            if others:
                speedups.append(f"{model_name}: {', '.join(others)}")
    if speedups:
        lines.append(f"Speedup over plain: {'; '.join(speedups)}.")
    return "\n".join(lines) + "\n"


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("bench", help="time the original training loop against the engine: "
                                            "DIR/bench.csv and DIR/bench.md")
    p.add_argument("--data", required=True, help="npz written by 'prepare'")
    p.add_argument("--models", type=_names, default=list(MODELS), help="comma-separated (default: all)")
    p.add_argument("--steps", type=int, required=True, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps per row first (default 20)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--loops", type=_names, default=list(DEFAULT_LOOPS),
                   help=f"comma-separated from: plain, {', '.join(ENGINE_LOOPS)} (default: plain,engine)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile STEPS eager engine steps of each model: DIR/profile.csv (default: off)")
    p.add_argument("--out", required=True, help="output folder")
    return p


def main(args: argparse.Namespace, settings: Mapping = MappingProxyType({})) -> None:
    """Run the bench from ``add_parser``'s arguments (``settings``: the checked values of the
    :data:`SETTINGS` options that differ from the protocol) and print the markdown table."""
    run_bench(args.data, args.models, args.steps, args.device, args.out, warmup=args.warmup,
              loops=args.loops, profile_steps=args.profile, settings=settings,
              log=lambda message: print(message, file=sys.stderr, flush=True))
    print((Path(args.out) / "bench.md").read_text(encoding="utf-8"), end="")
