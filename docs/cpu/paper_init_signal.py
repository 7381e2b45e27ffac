"""How much the logits depend on the image at initialisation, for each input and each ``init``.

The 2012 paper's initialisation (weights N(0, 0.01), biases of 1) is sized for its input, RGB
values in 0-255 less the mean image (``input_norm: paper``), about 128 times the write-up's
[-1, 1] (``input_norm: half``). For ``paper``, ``paper-lrn`` and ``torchvision``, each ``init``
(``default``, ``paper``) and each input, this builds the network as a training would (the same
seed for both inputs, so they see the same weights), feeds it the first N real training images
of a prepared npz (dropout off) and gives two standard deviations of the logits (N images x 10
classes):

- across images: per class, the standard deviation over the N images, averaged over the classes
  (how much the output depends on the image);
- across classes: per image, the standard deviation over the 10 classes, averaged over the images.

m is the mean image of the npz's training images, made as a training makes it
(:class:`alexnet_cifar.recipes.InputNorm`). Writes a markdown page with the device, the torch
version and the command::

    python docs/cpu/paper_init_signal.py --data cifar10.npz --out docs/cpu/paper-init-signal.md
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from alexnet_cifar.config import RunSettings
from alexnet_cifar.data import load_npz
from alexnet_cifar.engine import to_model_input
from alexnet_cifar.models import build_model, get_spec
from alexnet_cifar.recipes import InputNorm, paper_init

MODELS, INITS, INPUTS = ("paper", "paper-lrn", "torchvision"), ("default", "paper"), ("half", "paper")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@torch.no_grad()
def logit_spreads(data_path: str, images: int, seed: int) -> list[dict]:
    """One row per (model, init, input): the logits' mean standard deviation across images and
    across classes at initialisation."""
    data = load_npz(data_path)
    if len(data.train_images) < images:
        raise SystemExit(f"{data_path} has {len(data.train_images)} training images, fewer than --images {images}")
    batch = torch.from_numpy(data.train_images[:images])
    norms = {kind: InputNorm(RunSettings(model="paper", input_norm=kind), data.train_images, torch.device("cpu"))
             for kind in INPUTS}
    rows = []
    for model_name in MODELS:
        size = get_spec(model_name).input_size
        for init in INITS:
            torch.manual_seed(seed)  # as the Trainer seeds before it builds the model
            model = build_model(model_name)
            if init == "paper":
                paper_init(model)
            model.eval()
            for kind in INPUTS:
                logits = model(to_model_input(batch, size, norm=norms[kind])).double()
                rows.append({"model": model_name, "init": init, "input": kind,
                             "across_images": float(logits.std(dim=0).mean()),
                             "across_classes": float(logits.std(dim=1).mean())})
    return rows


def markdown(rows: list[dict], *, images: int, data_path: str, command: str, note: str | None,
             seconds: float) -> str:
    lines = [
        "# The logits at initialisation: how much they depend on the image",
        "",
        "Written by `docs/cpu/paper_init_signal.py` (its docstring says what it computes):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- device: CPU, {cpu_name()}, {torch.get_num_threads()} PyTorch threads",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}",
        f"- images: the first {images} training images of `{Path(data_path).name}`; m is the mean image of "
        "all its training images",
        *([f"- data: {note}"] if note else []),
        f"- time: {seconds:.0f} s for the whole page",
        "",
        "Standard deviation of the logits (N images x 10 classes) at initialisation, dropout off:",
        "across images (per class over the images, averaged over the classes) and across classes",
        "(per image over the classes, averaged over the images). `half`: (x/255 - 0.5)/0.5; `paper`:",
        "x - m, x in 0-255.",
        "",
        "| model | init | across images, half | across images, paper | paper / half | across classes, half | "
        "across classes, paper |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_key = {(r["model"], r["init"], r["input"]): r for r in rows}
    for model in MODELS:
        for init in INITS:
            half, paper = by_key[(model, init, "half")], by_key[(model, init, "paper")]
            lines.append(f"| {model} | {init} | {half['across_images']:.3g} | {paper['across_images']:.3g} | "
                         f"{paper['across_images'] / half['across_images']:.0f} | {half['across_classes']:.3g} | "
                         f"{paper['across_classes']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an npz written by 'python -m alexnet_cifar prepare'")
    parser.add_argument("--images", type=int, default=64, help="how many training images to feed (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the initial weights (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    parser.add_argument("--out", help="the markdown page to write (default: print it)")
    parser.add_argument("--note", help="a line for the page on where the npz came from")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = logit_spreads(args.data, args.images, args.seed)
    command = "python docs/cpu/paper_init_signal.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    page = markdown(rows, images=args.images, data_path=args.data, command=command, note=args.note,
                    seconds=time.perf_counter() - started)
    if args.out:
        Path(args.out).write_text(page)
    else:
        print(page, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
