"""One function per stage of the workflow, taking paths and plain values.

The Snakemake scripts and the command line are both thin translations into these calls, so every
stage can be run, debugged and benchmarked without Snakemake. A stage takes keyword-only
arguments named like its rule's ``input:``, ``output:`` and ``params:`` keys; a rule over every
run gets each run's files as a mapping run -> path, in the run table's order (``runs``).
:func:`download`, :func:`prepare` and :func:`train` are the exceptions, called positionally by
scripts that stay byte-identical. Both report a failure the same way
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
    """Writes ``dest``: the archive at ``url``, once its MD5 is ``md5``."""
    from . import data

    data.download(url, dest, md5, retries=retries, log=log.info)
    log.info(f"downloaded {url} to {dest} (md5 {md5})")


def prepare(archive, out, *, md5: str | None = None, limit_train: int | None = None,
            limit_test: int | None = None) -> None:
    """Writes ``out``: the npz of uint8 images and labels of ``archive`` (checked against ``md5``
    first, if given), cut to the first ``limit_train`` and ``limit_test`` images, if given."""
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


def run_metrics(*, history, csv, facts) -> None:
    """From a run's ``history`` (history.jsonl): writes ``csv``, its table of one row per epoch,
    and ``facts``, its key facts as JSON (peak, final accuracy, divergence)."""
    from . import history as histories
    from . import metrics

    records = histories.read_history(history)
    metrics.write_csv(metrics.history_frame(records), csv)
    metrics.write_json(metrics.run_facts(records), facts)


def _read_runs(runs: Mapping[str, Mapping], facts: Mapping[str, str], csv: Mapping[str, str] | None = None):
    """(facts by run, per-epoch frames by run or None), in the run table's order. Each mapping must
    name exactly the run table's runs (a wiring bug otherwise)."""
    import pandas as pd

    from . import metrics

    for what, paths in (("facts", facts), ("csv", csv)):
        if paths is not None and set(paths) != set(runs):
            raise ValueError(f"{what} names runs {sorted(paths)}, the run table {sorted(runs)}")
    read_facts = {run: metrics.read_json(facts[run]) for run in runs}
    curves = None if csv is None else {run: pd.read_csv(csv[run]) for run in runs}
    return read_facts, curves


def summary(*, runs: Mapping[str, Mapping], facts: Mapping[str, str], csv: Mapping[str, str], reference,
            swept_keys: Sequence[str], summary_csv, summary_md, replicates_csv, settings_csv) -> None:
    """The tables over runs, from each run's ``facts`` and ``csv`` (the metrics stage's, by run)
    and the ``reference`` curve. Writes ``summary_csv`` (one row per run), ``replicates_csv`` (per
    setting and epoch: test accuracy across seeds), ``settings_csv`` (per setting: peak and final
    accuracy across seeds) and ``summary_md`` (every run against the reported curve, then where
    the reported curve lies in each setting's seed distribution).

    ``runs`` is the run table: run -> {"setting", "seed", "model", "swept": {key: value}}.
    """
    from . import metrics, replicates
    from .atomic import write_text

    swept_keys = list(swept_keys)
    table = replicates.run_table(runs, swept_keys)
    run_facts, curves = _read_runs(runs, facts, csv)
    reference_curve = metrics.read_reference(reference)
    stats = replicates.replicate_stats(table, curves, run_facts)
    settings = replicates.setting_stats(table, run_facts, swept_keys)
    metrics.write_csv(metrics.summary_frame(run_facts, runs), summary_csv)
    metrics.write_csv(stats, replicates_csv)
    metrics.write_csv(settings, settings_csv)
    write_text(summary_md, metrics.summary_markdown(curves, run_facts, reference_curve) + "\n"
               + replicates.seed_distribution_markdown(table, run_facts, stats, settings, reference_curve, swept_keys))
    log.info(f"summarised {len(runs)} run(s) in {len(settings)} setting(s)")


def replicates_figure(*, runs: Mapping[str, Mapping], csv: Mapping[str, str], facts: Mapping[str, str], reference,
                      png) -> None:
    """Writes ``png`` and its SVG beside it: each setting's mean test accuracy per epoch with its
    seeds' min-max band, the ``reference`` curve dashed (``runs``: the run table, as for
    :func:`summary`). The facts say where a run diverged: its curve counts up to the epoch before."""
    from . import metrics, plots, replicates

    table = replicates.run_table(runs, swept_keys=None)
    run_facts, curves = _read_runs(runs, facts, csv)
    plots.plot_replicates(replicates.replicate_stats(table, curves, run_facts),
                          replicates.setting_stats(table, run_facts), metrics.read_reference(reference),
                          plots.figure_paths(png))


def sweep_figure(*, runs: Mapping[str, Mapping], facts: Mapping[str, str], swept_keys: Sequence[str], png) -> None:
    """Writes ``png`` and its SVG beside it: peak test accuracy against each swept key (only for a
    config with a sweep; ``runs``: the run table)."""
    from . import plots, replicates

    swept_keys = list(swept_keys)
    table = replicates.run_table(runs, swept_keys)
    run_facts, _ = _read_runs(runs, facts)
    plots.plot_sweep(replicates.run_outcomes(table, run_facts), replicates.setting_stats(table, run_facts, swept_keys),
                     swept_keys, plots.figure_paths(png))


def run_figure(*, csv, facts, png, title: str) -> None:
    """Writes ``png`` and its SVG beside it: one run's test accuracy per epoch (from its ``csv``),
    its peak marked (from its ``facts``)."""
    import pandas as pd

    from . import metrics, plots

    plots.plot_run(pd.read_csv(csv), metrics.read_json(facts), plots.figure_paths(png), title=title)


def comparison_figure(*, runs: Mapping[str, Mapping], csv: Mapping[str, str], facts: Mapping[str, str], reference,
                      png) -> None:
    """Writes ``png`` and its SVG beside it: every run's test accuracy per epoch against the
    ``reference`` curve (``runs``: the run table, whose order the legend follows)."""
    from . import metrics, plots

    run_facts, curves = _read_runs(runs, facts, csv)
    plots.plot_comparison(curves, run_facts, metrics.read_reference(reference), plots.figure_paths(png))


def _class_record(history, predictions, data):
    """(history, test labels, checked predictions) of one run: the inputs of its per-class results."""
    from . import classes
    from . import data as datasets
    from . import history as histories

    records = histories.read_history(history)
    train_labels, test_labels = datasets.load_labels(data)
    record = classes.read_predictions(predictions, len(records), len(test_labels),
                                      validated=records[0]["val_acc"] is not None, train_images=len(train_labels))
    return records, test_labels, record


def class_results(*, history, predictions, data, csv, png, title: str) -> None:
    """From a run's ``history``, its record of ``predictions`` and the ``data`` it trained on (for
    the labels): writes ``csv``, its test accuracy per class and epoch, and ``png`` with its SVG
    beside it, that table's figure."""
    from . import classes, metrics, plots

    records, labels, record = _class_record(history, predictions, data)
    table = classes.class_table(record["test"], labels)
    metrics.write_csv(table, csv)
    plots.plot_classes(table, metrics.run_facts(records)["peak_epoch"], plots.figure_paths(png), title=title)
    log.info(f"wrote {csv} and its figure: {len(records)} epochs x {len(table) // len(records)} classes")


def confusion_results(*, history, predictions, data, csv, png, title: str) -> None:
    """From a run's ``history``, its record of ``predictions`` and the ``data`` it trained on:
    writes ``csv``, its confusion counts at its peak and its last epoch (long form), and ``png``
    with its SVG beside it, the two matrices side by side."""
    from . import classes, metrics, plots

    records, labels, record = _class_record(history, predictions, data)
    table = classes.confusion_table(record["test"], labels, metrics.run_facts(records)["peak_epoch"])
    metrics.write_csv(table, csv)
    blocks = [(which, *classes.confusion_matrix(table, which)) for which in dict.fromkeys(table["which"])]
    plots.plot_confusion(blocks, plots.figure_paths(png), title=title)
    log.info(f"wrote {csv} and its figure: {', '.join(f'{w} epoch {e}' for w, e, _ in blocks)}")


def class_settings(*, runs: Mapping[str, Mapping], classes: Mapping[str, str], facts: Mapping[str, str],
                   csv) -> None:
    """From each run's ``classes`` table (the classes stage's CSV, by run) and ``facts``: writes
    ``csv``, per setting, epoch and class the mean and sample sd of the class's test accuracy over
    the setting's seeds (``runs``: the run table, as for :func:`summary`)."""
    from . import classes as per_class
    from . import metrics, replicates

    table = replicates.run_table(runs, swept_keys=None)
    run_facts, tables = _read_runs(runs, facts, classes)
    stats = per_class.class_settings(table, tables, run_facts)
    metrics.write_csv(stats, csv)
    log.info(f"wrote {csv}: {stats['setting'].nunique() if len(stats) else 0} setting(s)")
