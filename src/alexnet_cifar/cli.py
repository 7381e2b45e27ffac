"""``python -m alexnet_cifar``: every stage of the workflow without Snakemake.

The ``train`` options are made from the config schema's train settings (name, type, default,
description), so a setting added there is an option here too. The commands over runs (``summary``,
``compare``, ``replicates``, ``sweep``) read the run names, seeds and swept values from the same
config files the workflow reads, and each run's metrics from a folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

from . import bench, config, layout, stages

_TYPES = {"integer": int, "number": float, "string": str}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def _whole_numbers(text: str) -> list[int]:
    """``30,60`` -> [30, 60] (a list setting such as --lr-milestones)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas (30,60), got {text!r}") from None


def add_settings_options(parser: argparse.ArgumentParser, keys=None, *, model: bool = True) -> None:
    """One option per train setting of the schema (or per one of ``keys``), and ``--model``. A
    boolean is a switch away from its default: ``--deterministic`` (default off), ``--no-cuda-graph``
    (default on); a list is written with commas (``--lr-milestones 30,60``); a setting that may be
    unset is unset unless given."""
    if model:
        parser.add_argument("--model", required=True, choices=config.model_names())
    for key, spec in config.train_schema().items():
        if keys is not None and key not in keys:
            continue
        default, text = spec["default"], spec["description"]
        kinds = [kind for kind in config.types_of(spec) if kind != "null"]
        shown = "unset" if default is None else default
        if kinds == ["boolean"]:
            flag = f"--no-{key.replace('_', '-')}" if default else _option(key)
            parser.add_argument(flag, dest=key, action="store_false" if default else "store_true",
                                help=f"off: {text}" if default else text)
        elif "enum" in spec:
            parser.add_argument(_option(key), dest=key, choices=spec["enum"], default=default,
                                help=f"{text} (default: {shown})")
        elif kinds == ["array"]:
            parser.add_argument(_option(key), dest=key, type=_whole_numbers, default=default, metavar="N,N,...",
                                help=f"{text} (default: {shown})")
        else:
            parser.add_argument(_option(key), dest=key, type=_TYPES[kinds[0]], default=default,
                                help=f"{text} (default: {shown})")


def settings_from(args: argparse.Namespace, keys=None) -> config.RunSettings:
    """The run settings the options give (or those of ``keys``, the others at their defaults, for
    the model ``args.model`` or, without such an option, paper), checked as the workflow checks a run."""
    keys = list(config.train_schema()) if keys is None else keys
    values = {"model": getattr(args, "model", "paper"), **{key: getattr(args, key) for key in keys}}
    problems = config.settings_problems(values)
    if problems:
        raise config.SettingsError("invalid settings: " + "; ".join(
            f"{_option(p.split(':', 1)[0])}:{p.split(':', 1)[1]}" for p in problems))
    return config.RunSettings.from_mapping(values)


def add_runs_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--config", action="append", required=True, metavar="YAML",
                        help="config file(s), merged in order as the workflow does (config/config.yaml first)")
    parser.add_argument("--metrics", required=True, help="folder with each run's RUN.csv and RUN.facts.json")
    parser.add_argument("--out", required=True, help=out_help)


def runs_from(args: argparse.Namespace) -> tuple[dict, dict, dict, list[str], str]:
    """(run table, facts paths, CSV paths, swept keys, reference curve) of the configs' runs."""
    cfg = config.with_defaults(config.load_config(*args.config))
    config.check_config(cfg)
    runs = {name: run.table_row() for name, run in config.expand_runs(cfg).items()}
    metrics_dir = Path(args.metrics)
    facts = {run: metrics_dir / layout.RUN_METRICS["facts"].format(run=run) for run in runs}
    csvs = {run: metrics_dir / layout.RUN_METRICS["csv"].format(run=run) for run in runs}
    return runs, facts, csvs, list(cfg["sweep"]), cfg["reference_curve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alexnet_cifar", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch the CIFAR-10 archive and check its MD5")
    p.add_argument("url", help="http(s) or file URL, or a local path")
    p.add_argument("out", help="where to write the archive")
    p.add_argument("--md5", required=True)

    p = sub.add_parser("prepare", help="archive -> npz of uint8 images and labels")
    p.add_argument("archive")
    p.add_argument("out")
    p.add_argument("--md5", help="refuse the archive unless it has this MD5 (checked before it is read)")
    p.add_argument("--limit-train", type=_positive_int)
    p.add_argument("--limit-test", type=_positive_int)

    p = sub.add_parser("train", help=f"train one run: {', '.join('DIR/' + name for name in layout.RUN_FILES.values())}")
    p.add_argument("--data", required=True, help="npz written by 'prepare'")
    p.add_argument("--out", required=True, help="output folder")
    add_settings_options(p)
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

    for name, what in (("classes", "test accuracy per class and epoch (CSV) and its figure"),
                       ("confusion", "confusion counts at the peak and the last epoch (CSV) and the matrices")):
        p = sub.add_parser(name, help=f"a run folder's record of predictions -> {what} (PNG and SVG)")
        p.add_argument("run", help="the run's folder (history.jsonl and predictions.npz, as the training wrote them)")
        p.add_argument("--data", required=True, help="the npz the run was trained on (for the labels)")
        p.add_argument("--csv", required=True, help="the table to write")
        p.add_argument("--png", required=True, help="the figure's PNG path (the SVG goes beside it)")
        p.add_argument("--title", help="the figure's title (default: the run folder's name)")

    p = sub.add_parser("summary", help="every run's metrics -> summary.csv, summary.md, replicates.csv, settings.csv")
    add_runs_options(p, "folder for the four tables")
    p = sub.add_parser("compare", help="every run against the reported curve (PNG and SVG)")
    add_runs_options(p, "the figure's PNG path (the SVG goes beside it)")
    p = sub.add_parser("replicates", help="each setting's seeds: mean and min-max band (PNG and SVG)")
    add_runs_options(p, "the figure's PNG path (the SVG goes beside it)")
    p = sub.add_parser("sweep", help="peak accuracy against the swept values (PNG and SVG)")
    add_runs_options(p, "the figure's PNG path (the SVG goes beside it)")

    add_settings_options(bench.add_parser(sub), keys=bench.SETTINGS, model=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's error exits with status 1 and one line, as a workflow job does."""
    args = build_parser().parse_args(argv)
    with stages.job(getattr(args, "log", None)):
        if args.command == "download":
            stages.download(url=args.url, dest=args.out, md5=args.md5)
        elif args.command == "prepare":
            stages.prepare(archive=args.archive, out=args.out, md5=args.md5, limit_train=args.limit_train,
                           limit_test=args.limit_test)
        elif args.command == "train":
            stages.train(settings=settings_from(args), data_path=args.data, out_dir=args.out, threads=args.threads)
        elif args.command == "metrics":
            stages.run_metrics(history=args.history, csv=args.csv, facts=args.facts)
        elif args.command == "plot":
            stages.run_figure(csv=args.csv, facts=args.facts, png=args.png, title=args.title)
        elif args.command in ("classes", "confusion"):
            build = stages.class_results if args.command == "classes" else stages.confusion_results
            run = Path(args.run)
            build(history=run / layout.HISTORY_FILE, predictions=run / layout.PREDICTIONS_FILE, data=args.data,
                  csv=args.csv, png=args.png, title=args.title or run.resolve().name)
        elif args.command in ("summary", "compare", "replicates", "sweep"):
            runs, facts, csvs, swept, reference = runs_from(args)
            out = Path(args.out)
            if args.command == "summary":
                tables = {output: out / PurePosixPath(path).name
                          for output, path in layout.WORKFLOW_FILES["summary"].items()}
                stages.summary(runs=runs, facts=facts, csv=csvs, reference=reference, swept_keys=swept, **tables)
            elif args.command == "compare":
                stages.comparison_figure(runs=runs, csv=csvs, facts=facts, reference=reference, png=out)
            elif args.command == "replicates":
                stages.replicates_figure(runs=runs, csv=csvs, facts=facts, reference=reference, png=out)
            elif not swept:
                raise config.SettingsError("sweep: the configs set no sweep, so there is no sweep figure")
            else:
                stages.sweep_figure(runs=runs, facts=facts, swept_keys=swept, png=out)
        elif args.command == "bench":
            settings = settings_from(args, bench.SETTINGS)
            bench.main(args, {key: getattr(settings, key) for key in bench.SETTINGS
                              if getattr(settings, key) != config.DEFAULTS[key]})
    return 0
