"""``python -m alexnet_cifar``: every stage of the workflow without Snakemake."""
from __future__ import annotations

import argparse
import sys

from . import bench, stages
from .data import DataError
from .config import RunSettings


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alexnet_cifar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch the CIFAR-10 archive and check its MD5")
    p.add_argument("url", help="http(s) or file URL, or a local path")
    p.add_argument("out", help="where to write the archive")
    p.add_argument("--md5", required=True)

    p = sub.add_parser("prepare", help="archive -> npz of uint8 images and labels")
    p.add_argument("archive")
    p.add_argument("out")
    p.add_argument("--limit-train", type=_positive_int)
    p.add_argument("--limit-test", type=_positive_int)

    p = sub.add_parser("train", help="train one run: DIR/history.jsonl, DIR/model.pt, DIR/run.json")
    p.add_argument("--data", required=True, help="npz written by 'prepare'")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="output folder")
    defaults = RunSettings(model="paper")
    for name, kind in (("epochs", int), ("batch-size", int), ("lr", float), ("momentum", float),
                       ("weight-decay", float), ("seed", int), ("num-classes", int), ("eval-batch-size", int)):
        p.add_argument(f"--{name}", type=kind, default=getattr(defaults, name.replace("-", "_")))
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU, else an error), cuda, cuda:N or cpu")
    p.add_argument("--deterministic", action="store_true", help="repeatable results (slower)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (not the reported protocol)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false")
    p.add_argument("--no-fused-sgd", dest="fused_sgd", action="store_false",
                   help="the multi-tensor (foreach) SGD update instead of the fused kernel")
    p.add_argument("--overlap-update", action="store_true",
                   help="on CUDA, update the classifier on a second stream during the features' backward")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for PyTorch")
    p.add_argument("--log", help="also write the log to this file")

    p = sub.add_parser("metrics", help="history.jsonl -> per-epoch CSV and the run's facts (JSON)")
    p.add_argument("history")
    p.add_argument("csv")
    p.add_argument("facts")

    p = sub.add_parser("plot", help="per-epoch CSV + facts -> figure (PNG and SVG)")
    p.add_argument("csv")
    p.add_argument("facts")
    p.add_argument("png")
    p.add_argument("--title", default="Test accuracy on CIFAR-10")

    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stages.logging_to(getattr(args, "log", None)):
            if args.command == "download":
                stages.download(args.url, args.out, args.md5)
            elif args.command == "prepare":
                stages.prepare(args.archive, args.out, limit_train=args.limit_train, limit_test=args.limit_test)
            elif args.command == "train":
                settings = RunSettings(
                    model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
                    num_classes=args.num_classes, deterministic=args.deterministic, bf16=args.bf16,
                    channels_last=args.channels_last, device=args.device, cuda_graph=args.cuda_graph,
                    fused_sgd=args.fused_sgd, overlap_update=args.overlap_update,
                    eval_batch_size=args.eval_batch_size)
                stages.train(settings, args.data, args.out, threads=args.threads)
            elif args.command == "metrics":
                stages.run_metrics(args.history, args.csv, args.facts)
            elif args.command == "plot":
                stages.run_figure(args.csv, args.facts, args.png, title=args.title)
            elif args.command == "bench":
                bench.main(args)
    except (DataError, ValueError, RuntimeError, OSError) as exc:  # bad input, no device, bad settings
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
