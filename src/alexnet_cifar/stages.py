"""One function per stage of the workflow, taking paths and plain values.

The Snakemake scripts and the command line are both thin translations into these calls, so every
stage can be run, debugged and benchmarked without Snakemake. Both report a failure the same way
(:func:`job`): a problem with the inputs, the config or the machine as one line
that names the file or key and the fix; anything else, a bug, with its traceback.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .errors import UserError

log = logging.getLogger("alexnet_cifar")


@contextlib.contextmanager
def logging_to(path: str | os.PathLike | None = None) -> Iterator[logging.Logger]:
    """Log the package's messages to stderr and, if given, to ``path`` (the rule's log file)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        formatter = _NoTraceback if handler is handlers[0] else logging.Formatter
        handler.setFormatter(formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
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


class _NoTraceback(logging.Formatter):
    """For stderr, where Python itself prints the traceback of an error that is raised on."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None}))


@contextlib.contextmanager
def job(log_path: str | os.PathLike | None) -> Iterator[logging.Logger]:
    """:func:`logging_to` for one job (a workflow script), which also writes why it failed into its log.

    A user's error (:class:`~alexnet_cifar.errors.UserError`, or an ``OSError``, which names its
    file) is logged as ``error: <message>`` and ends the process with status 1, with no traceback.
    Anything else is a bug: logged with its traceback, and raised on. ``SystemExit`` (a training
    stopped by a signal) and ``KeyboardInterrupt`` pass unchanged.
    """
    with logging_to(log_path) as logger:
        try:
            yield logger
        except (UserError, OSError) as exc:
            logger.error(f"error: {exc}")
            sys.exit(1)
        except Exception as exc:
            logger.exception(f"error: unexpected {type(exc).__name__} (a bug; please report it with this log): {exc}")
            raise


def download(url: str, dest, md5: str, *, retries: int = 3) -> None:
    from . import data

    data.download(url, dest, md5, retries=retries, log=log.info)
    log.info(f"downloaded {url} to {dest} (md5 {md5})")


def prepare(archive, out, *, md5: str | None = None, limit_train: int | None = None,
            limit_test: int | None = None) -> None:
    from . import data

    counts = data.prepare(archive, out, md5=md5, limit_train=limit_train, limit_test=limit_test)
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


def train(settings, data_path, out_dir, *, threads: int | None = None, on_epoch=None) -> list[dict]:
    """Train one run into ``out_dir``: its history (``history.jsonl``), model (``model.pt``), record
    of predictions (``predictions.npz``) and provenance (``run.json``), the names of
    :data:`alexnet_cifar.layout.RUN_FILES`; ``on_epoch`` sees the history after every epoch.

    SIGTERM/SIGINT stop it after the current step with exit status 128+signal; the checkpoint of
    the last completed epoch stays, so running it again continues the run.
    """
    import torch

    from . import data, devices, engine, layout, metrics, provenance

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
                                               log=log.info, stop=stop, progress=progress_bar(), on_epoch=on_epoch)
    except engine.TrainingInterrupted as exc:
        log.info(f"{exc}: the checkpoint of the last completed epoch is kept; run again to continue")
        raise SystemExit(128 + exc.signum) from None
    metrics.write_json(provenance.provenance(settings, device, data_md5=data_md5, started=started,
                                             resumed_from_epoch=resumed_from),
                       Path(out_dir) / layout.PROVENANCE_FILE)
    return history


def run_metrics(history_path, csv_path, facts_path) -> None:
    """A run's per-epoch CSV and its key facts (peak, final accuracy, divergence) from its history."""
    from . import history as histories
    from . import metrics

    history = histories.read_history(history_path)
    metrics.write_csv(metrics.history_frame(history), csv_path)
    metrics.write_json(metrics.run_facts(history), facts_path)


def _read_runs(runs: Mapping[str, Mapping], facts_paths: Mapping[str, str], csv_paths: Mapping[str, str] | None = None):
    """(facts by run, per-epoch frames by run or None), in the run table's order. Each mapping must
    name exactly the run table's runs (a wiring bug otherwise)."""
    import pandas as pd

    from . import metrics

    for what, paths in (("facts_paths", facts_paths), ("csv_paths", csv_paths)):
        if paths is not None and set(paths) != set(runs):
            raise ValueError(f"{what} names runs {sorted(paths)}, the run table {sorted(runs)}")
    facts = {run: metrics.read_json(facts_paths[run]) for run in runs}
    curves = None if csv_paths is None else {run: pd.read_csv(csv_paths[run]) for run in runs}
    return facts, curves


def summary(runs: Mapping[str, Mapping], facts_paths: Mapping[str, str], csv_paths: Mapping[str, str],
            reference, swept_keys: Sequence[str], summary_csv, summary_md, replicates_csv, settings_csv) -> None:
    """The tables over runs: ``summary.csv`` (one row per run), ``replicates.csv`` (per setting and
    epoch: test accuracy across seeds), ``settings.csv`` (per setting: peak and final accuracy
    across seeds), and ``summary.md`` (every run against the reported curve, then where the
    reported curve lies in each setting's seed distribution).

    ``runs`` is the run table: run -> {"setting", "seed", "model", "swept": {key: value}}.
    """
    from . import metrics, replicates
    from .atomic import write_text

    swept_keys = list(swept_keys)
    table = replicates.run_table(runs, swept_keys)
    facts, curves = _read_runs(runs, facts_paths, csv_paths)
    reference_curve = metrics.read_reference(reference)
    stats = replicates.replicate_stats(table, curves, facts)
    settings = replicates.setting_stats(table, facts, swept_keys)
    metrics.write_csv(metrics.summary_frame(facts, runs), summary_csv)
    metrics.write_csv(stats, replicates_csv)
    metrics.write_csv(settings, settings_csv)
    write_text(summary_md, metrics.summary_markdown(curves, facts, reference_curve) + "\n"
               + replicates.seed_distribution_markdown(table, facts, stats, settings, reference_curve, swept_keys))
    log.info(f"summarised {len(runs)} run(s) in {len(settings)} setting(s)")


def replicates_figure(runs: Mapping[str, Mapping], csv_paths: Mapping[str, str], facts_paths: Mapping[str, str],
                      reference, png) -> None:
    """Each setting's mean test accuracy per epoch with its seeds' min-max band, the reported
    curve dashed (PNG and SVG). The facts say where a run diverged: its curve counts up to the
    epoch before."""
    from . import metrics, plots, replicates

    table = replicates.run_table(runs, swept_keys=None)
    facts, curves = _read_runs(runs, facts_paths, csv_paths)
    plots.plot_replicates(replicates.replicate_stats(table, curves, facts), replicates.setting_stats(table, facts),
                          metrics.read_reference(reference), plots.figure_paths(png))


def sweep_figure(runs: Mapping[str, Mapping], facts_paths: Mapping[str, str], swept_keys: Sequence[str], png) -> None:
    """Peak test accuracy against each swept key (PNG and SVG); only for a config with a sweep."""
    from . import plots, replicates

    swept_keys = list(swept_keys)
    table = replicates.run_table(runs, swept_keys)
    facts, _ = _read_runs(runs, facts_paths)
    plots.plot_sweep(replicates.run_outcomes(table, facts), replicates.setting_stats(table, facts, swept_keys),
                     swept_keys, plots.figure_paths(png))


def run_figure(csv_path, facts_path, png, *, title: str) -> None:
    import pandas as pd

    from . import metrics, plots

    plots.plot_run(pd.read_csv(csv_path), metrics.read_json(facts_path), plots.figure_paths(png), title=title)


def comparison_figure(csv_paths: Mapping[str, str], facts_paths: Mapping[str, str], reference, png) -> None:
    from . import metrics, plots

    facts, curves = _read_runs(csv_paths, facts_paths, csv_paths)
    plots.plot_comparison(curves, facts, metrics.read_reference(reference), plots.figure_paths(png))


def _class_record(history_path, predictions_path, data_path):
    """(history, test labels, checked predictions) of one run: the inputs of its per-class results."""
    from . import classes, data
    from . import history as histories

    history = histories.read_history(history_path)
    train_labels, test_labels = data.load_labels(data_path)
    predictions = classes.read_predictions(predictions_path, len(history), len(test_labels),
                                           validated=history[0]["val_acc"] is not None, train_images=len(train_labels))
    return history, test_labels, predictions


def class_results(history_path, predictions_path, data_path, csv_path, png, *, title: str) -> None:
    """One run's test accuracy per class and epoch (CSV) and its figure (PNG and SVG), from the
    record of its predictions."""
    from . import classes, metrics, plots

    history, labels, predictions = _class_record(history_path, predictions_path, data_path)
    table = classes.class_table(predictions["test"], labels)
    metrics.write_csv(table, csv_path)
    plots.plot_classes(table, metrics.run_facts(history)["peak_epoch"], plots.figure_paths(png), title=title)
    log.info(f"wrote {csv_path} and its figure: {len(history)} epochs x {len(table) // len(history)} classes")


def confusion_results(history_path, predictions_path, data_path, csv_path, png, *, title: str) -> None:
    """One run's confusion counts at its peak and its last epoch (CSV, long form) and the two
    matrices side by side (PNG and SVG), from the record of its predictions."""
    from . import classes, metrics, plots

    history, labels, predictions = _class_record(history_path, predictions_path, data_path)
    table = classes.confusion_table(predictions["test"], labels, metrics.run_facts(history)["peak_epoch"])
    metrics.write_csv(table, csv_path)
    blocks = [(which, *classes.confusion_matrix(table, which)) for which in dict.fromkeys(table["which"])]
    plots.plot_confusion(blocks, plots.figure_paths(png), title=title)
    log.info(f"wrote {csv_path} and its figure: {', '.join(f'{w} epoch {e}' for w, e, _ in blocks)}")


def class_settings(runs: Mapping[str, Mapping], class_paths: Mapping[str, str], facts_paths: Mapping[str, str],
                   out_csv) -> None:
    """Per setting, epoch and class: the mean and sample sd of the class's test accuracy over the
    setting's seeds (``runs``: the run table, as for :func:`summary`)."""
    from . import classes, metrics, replicates

    table = replicates.run_table(runs, swept_keys=None)
    facts, tables = _read_runs(runs, facts_paths, class_paths)
    stats = classes.class_settings(table, tables, facts)
    metrics.write_csv(stats, out_csv)
    log.info(f"wrote {out_csv}: {stats['setting'].nunique() if len(stats) else 0} setting(s)")
