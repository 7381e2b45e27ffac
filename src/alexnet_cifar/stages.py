"""One function per stage of the workflow, taking paths and plain values.

The Snakemake scripts and the command line are both thin translations into these calls, so every
stage can be run, debugged and benchmarked without Snakemake.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Mapping

log = logging.getLogger("alexnet_cifar")


@contextlib.contextmanager
def logging_to(path: str | os.PathLike | None = None) -> Iterator[logging.Logger]:
    """Log the package's messages to stderr and, if given, to ``path`` (the rule's log file)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.INFO)
    try:
        yield log
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(previous_level)


def download(url: str, dest, md5: str, *, retries: int = 3) -> None:
    from . import data

    data.download(url, dest, md5, retries=retries, log=log.info)
    log.info(f"downloaded {url} to {dest} (md5 {md5})")


def prepare(archive, out, *, limit_train: int | None = None, limit_test: int | None = None) -> None:
    from . import data

    counts = data.prepare(archive, out, limit_train=limit_train, limit_test=limit_test)
    log.info(f"wrote {out}: {counts['train']} training and {counts['test']} test images")


def progress_bar(stream=sys.stderr, width: int = 30):
    """A one-line progress bar for an interactive terminal; ``None`` elsewhere (logs, clusters)."""
    if not stream.isatty():
        return None

    def show(done: int, total: int) -> None:
        filled = width * done // total
        stream.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} steps")
        stream.write("\n" if done == total else "")
        stream.flush()
    return show


def train(settings, data_path, out_dir, *, threads: int | None = None) -> list[dict]:
    """Train one run into ``out_dir`` (``history.jsonl``, ``model.pt``, ``run.json``).

    SIGTERM/SIGINT stop it after the current step with exit status 128+signal; the checkpoint of
    the last completed epoch stays, so running it again continues the run.
    """
    import torch

    from . import data, devices, engine, metrics, provenance

    if threads:
        torch.set_num_threads(threads)
    started = provenance.now()
    arrays = data.load_npz(data_path)
    data_md5 = data.file_md5(data_path)
    device = devices.resolve_device(settings.device, model=settings.model, epochs=settings.epochs,
                                    train_images=len(arrays.train_labels), batch_size=settings.batch_size,
                                    log=log.info)
    log.info(f"training {settings.model} on {device} ({torch.get_num_threads()} threads): "
             f"{len(arrays.train_labels)} training / {len(arrays.test_labels)} test images, "
             f"settings {settings.result_params()}")
    stop = engine.StopFlag()
    try:
        with engine.stop_on_signals(stop):
            history, resumed_from = engine.fit(settings, arrays, out_dir, device, data_md5=data_md5,
                                               log=log.info, stop=stop, progress=progress_bar())
    except engine.TrainingInterrupted as exc:
        log.info(f"{exc}: the checkpoint of the last completed epoch is kept; run again to continue")
        raise SystemExit(128 + exc.signum) from None
    metrics.write_json(provenance.provenance(settings, device, data_md5=data_md5, started=started,
                                             resumed_from_epoch=resumed_from),
                       Path(out_dir) / "run.json")
    return history


def run_metrics(history_path, csv_path, facts_path) -> None:
    """A run's per-epoch CSV and its key facts (peak, final accuracy, divergence) from its history."""
    from . import engine, metrics

    history = engine.read_history(history_path)
    metrics.write_csv(metrics.history_frame(history), csv_path)
    metrics.write_json(metrics.run_facts(history), facts_path)


def summary(facts_paths: Mapping[str, str], csv_paths: Mapping[str, str], models: Mapping[str, str],
            reference, summary_csv, summary_md) -> None:
    import pandas as pd

    from . import metrics
    from .atomic import write_text

    facts = {run: metrics.read_json(path) for run, path in facts_paths.items()}
    metrics.write_csv(metrics.summary_frame(facts, dict(models)), summary_csv)
    runs = {run: pd.read_csv(path) for run, path in csv_paths.items()}
    write_text(summary_md, metrics.summary_markdown(runs, facts, metrics.read_reference(reference)))


def run_figure(csv_path, facts_path, png, *, title: str) -> None:
    import pandas as pd

    from . import metrics, plots

    plots.plot_run(pd.read_csv(csv_path), metrics.read_json(facts_path), plots.figure_paths(png), title=title)


def comparison_figure(csv_paths: Mapping[str, str], reference, png) -> None:
    import pandas as pd

    from . import metrics, plots

    runs = {run: pd.read_csv(path) for run, path in csv_paths.items()}
    plots.plot_comparison(runs, metrics.read_reference(reference), plots.figure_paths(png))

