"""GPU check: the CUDA-graph step and the eager step train alike, with evaluation between epochs.

Not a pytest test (CI has no GPU). Run on a GPU machine with real images (part 3 of
``tests/gpu/gpu_session.sh``, or alone):

    python tests/gpu/check_graph_vs_eager.py --data cifar10.npz --epochs 2 --out check.json

For each model, trains from the same seed eagerly and then once per graph variant: the captured
CUDA graph with the default (foreach) SGD update, and with the fused SGD kernel (``fused_sgd``),
which must run inside the graph before it can become the default. The test set is evaluated after
every epoch (the replay-after-evaluation case that crashed a prototype). A variant passes with
per-epoch train loss within 1 % relative and test accuracy within 1 point of the eager run.
Exits 1 if any variant is outside those bounds.
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

VARIANTS = {"graph": {"cuda_graph": True}, "graph+fused": {"cuda_graph": True, "fused_sgd": True}}


def train(model: str, data: Cifar10Arrays, epochs: int, device: torch.device, **options) -> list[dict]:
    settings = RunSettings(model=model, epochs=epochs, device=str(device), **options)
    trainer = Trainer(settings, data, device)
    records = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        train_loss, train_acc, diverged = trainer.train_epoch()
        test_loss, test_acc = trainer.evaluate()
        records.append({"epoch": epoch, "train_loss": train_loss, "test_acc": test_acc, "diverged": diverged,
                        "seconds": time.perf_counter() - started})
        print(f"{model} {options} {records[-1]}", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", default="paper,torchvision")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit-train", type=int, help="use the first N training images")
    parser.add_argument("--limit-test", type=int, help="use the first N test images (a dry run on the CPU)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    data = load_npz(args.data)
    data = data._replace(train_images=data.train_images[:args.limit_train],
                         train_labels=data.train_labels[:args.limit_train],
                         test_images=data.test_images[:args.limit_test], test_labels=data.test_labels[:args.limit_test])
    device = torch.device(args.device)
    models = args.models.split(",")
    report, ok = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "train_images": len(data.train_labels),
                  "test_images": len(data.test_labels)}, True
    for model in models:
        eager = train(model, data, args.epochs, device, cuda_graph=False)
        report[model] = {"eager": eager}
        for variant, options in VARIANTS.items():
            graph = train(model, data, args.epochs, device, **options)
            checks = [{"epoch": g["epoch"],
                       "loss_rel_diff": abs(g["train_loss"] - e["train_loss"]) / abs(e["train_loss"]),
                       "acc_diff_points": abs(g["test_acc"] - e["test_acc"])}
                      for g, e in zip(graph, eager, strict=True)]
            passed = all(c["loss_rel_diff"] <= 0.01 and c["acc_diff_points"] <= 1.0 for c in checks)
            ok &= passed
            report[model][variant] = {"records": graph, "checks": checks, "passed": passed}
            write_text(args.out, json.dumps(report, indent=2) + "\n")  # kept if a later variant is cut off
    print(json.dumps({m: {v: report[m][v]["checks"] for v in VARIANTS} for m in models}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
