"""GPU check: the CUDA-graph step and the eager step train alike, with evaluation between epochs.

Not a pytest test (CI has no GPU). Run on a GPU machine with real images (part 3 of
``tests/gpu/gpu_session.sh``, or alone):

    python tests/gpu/check_graph_vs_eager.py --data cifar10.npz --epochs 2 --out check.json

For each model, trains from the same seed eagerly and then once per graph variant: the captured
CUDA graph with the default (foreach) SGD update, with the fused SGD kernel (``fused_sgd``), which
must run inside the graph before it can become the default, and with a training recipe
(augmentation inside the graph, a cosine schedule whose lr changes every epoch), against an eager
run of the same recipe. The test set is evaluated after every epoch (the replay-after-evaluation
case that crashed a prototype). A variant passes with per-epoch train loss within 1 % relative
and test accuracy within 1 point of its eager run.

Two checks read the graph's effect directly:

- ``lr_change``: SGD with momentum moves each weight by -lr x its new momentum buffer, so
  (weight before - weight after) / buffer is the lr a step applied. A step captured at lr 0.01 is
  replayed, then the lr is set to 0.001 as the schedule does between epochs: the next replayed
  step must apply 0.001 (a graph that kept the number it was captured with would apply 0.01).
- ``augmentation_replays``: the augmentation alone, captured as a graph and replayed twice on the
  same images, must give new flips and shifts at every replay (needs CUDA).

Exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from alexnet_cifar.atomic import write_text
from alexnet_cifar.config import RunSettings
from alexnet_cifar.data import Cifar10Arrays, load_npz
from alexnet_cifar.engine import Trainer
from alexnet_cifar.recipes import Augmenter

#: augmentation and a schedule whose lr changes every epoch (with 2 epochs: 0.001, then 0.0005)
RECIPE = {"augment_flip": True, "augment_translate": 4, "augment_pca_colour": 0.1, "lr_schedule": "cosine"}
#: variant -> (its settings, the eager run it is compared with)
VARIANTS = {"graph": ({"cuda_graph": True}, "eager"),
            "graph+fused": ({"cuda_graph": True, "fused_sgd": True}, "eager"),
            "graph+recipe": ({"cuda_graph": True, **RECIPE}, "eager+recipe")}
EAGER = {"eager": {"cuda_graph": False}, "eager+recipe": {"cuda_graph": False, **RECIPE}}
LR_BEFORE, LR_AFTER = 0.01, 0.001


def train(model: str, data: Cifar10Arrays, epochs: int, device: torch.device, **options) -> list[dict]:
    settings = RunSettings(model=model, epochs=epochs, device=str(device), **options)
    trainer = Trainer(settings, data, device)
    records = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        trainer.set_lr(trainer.schedule.lr(epoch))
        train_loss, train_acc, diverged = trainer.train_epoch()
        test = trainer.evaluate()
        records.append({"epoch": epoch, "lr": trainer.lr, "train_loss": train_loss, "test_acc": test.acc,
                        "diverged": diverged, "seconds": time.perf_counter() - started})
        print(f"{model} {options} {records[-1]}", flush=True)
    return records


def applied_lr(trainer: Trainer, idx: torch.Tensor) -> float:
    """The lr one training step applies, read from the weights (see the module's docstring)."""
    params = [p for p in trainer.model.parameters()]
    before = [p.detach().clone() for p in params]
    trainer.train_step(idx)
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params, strict=True)])
    buffers = torch.cat([trainer.optimizer.state[p]["momentum_buffer"].flatten() for p in params])
    usable = buffers.abs() > 1e-3 * buffers.abs().max()  # far from 0, where rounding would dominate
    return float((moved[usable] / buffers[usable]).median())


def lr_change(model: str, data: Cifar10Arrays, device: torch.device) -> dict:
    settings = RunSettings(model=model, lr=LR_BEFORE, device=str(device), cuda_graph=True)
    trainer = Trainer(settings, data, device)
    n = trainer.train_x.shape[0]
    batches = iter(torch.arange(4 * 64, device=device).remainder(n).view(-1, 4))
    for _ in range(trainer.warmup_left + 2 if trainer.use_graph else 1):  # warm-up, capture, a replay
        trainer.train_step(next(batches))
    before = applied_lr(trainer, next(batches))
    trainer.set_lr(LR_AFTER)
    after = applied_lr(trainer, next(batches))
    passed = abs(before - LR_BEFORE) <= 0.02 * LR_BEFORE and abs(after - LR_AFTER) <= 0.02 * LR_AFTER
    return {"graph": trainer.use_graph, "lr_before": before, "lr_after": after, "expected": [LR_BEFORE, LR_AFTER],
            "passed": passed}


def augmentation_replays(data: Cifar10Arrays, device: torch.device) -> dict:
    if device.type != "cuda":
        return {"passed": True, "skipped": "a CUDA graph needs CUDA"}
    settings = RunSettings(model="torchvision", augment_flip=True, augment_translate=4, device=str(device))
    augment = Augmenter(settings, data.train_images[:64], device)
    images = torch.as_tensor(data.train_images[:64]).to(device)
    augment(images)  # eager once, as before any capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = augment(images)
    replays = []
    for _ in range(2):
        graph.replay()
        replays.append(out.clone())
    differ = not torch.equal(replays[0], replays[1])
    per_image = not all(torch.equal(replays[0][0], replays[0][i]) for i in range(1, 64))
    return {"replays_differ": differ, "passed": differ and per_image, "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", default="paper,torchvision")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit-train", type=int, help="use the first N training images")
    parser.add_argument("--limit-test", type=int, help="use the first N test images (a dry run on the CPU)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated from {', '.join(VARIANTS)}")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    data = load_npz(args.data)
    data = data._replace(train_images=data.train_images[:args.limit_train],
                         train_labels=data.train_labels[:args.limit_train],
                         test_images=data.test_images[:args.limit_test], test_labels=data.test_labels[:args.limit_test])
    device = torch.device(args.device)
    models = args.models.split(",")
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    report, ok = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "train_images": len(data.train_labels),
                  "test_images": len(data.test_labels)}, True
    report["augmentation_replays"] = augmentation_replays(data, device)
    ok &= report["augmentation_replays"]["passed"]
    for model in models:
        report[model] = {"lr_change": lr_change(model, data, device)}
        ok &= report[model]["lr_change"]["passed"]
        for name in dict.fromkeys(baseline for _, baseline in variants.values()):
            report[model][name] = train(model, data, args.epochs, device, **EAGER[name])
        for variant, (options, baseline) in variants.items():
            graph, eager = train(model, data, args.epochs, device, **options), report[model][baseline]
            checks = [{"epoch": g["epoch"],
                       "loss_rel_diff": abs(g["train_loss"] - e["train_loss"]) / abs(e["train_loss"]),
                       "acc_diff_points": abs(g["test_acc"] - e["test_acc"]), "lr": [g["lr"], e["lr"]]}
                      for g, e in zip(graph, eager, strict=True)]
            passed = all(c["loss_rel_diff"] <= 0.01 and c["acc_diff_points"] <= 1.0 and c["lr"][0] == c["lr"][1]
                         for c in checks)
            ok &= passed
            report[model][variant] = {"records": graph, "checks": checks, "passed": passed}
            write_text(args.out, json.dumps(report, indent=2) + "\n")  # kept if a later variant is cut off
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps({m: {"lr_change": report[m]["lr_change"], **{v: report[m][v]["checks"] for v in variants}}
                      for m in models}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
