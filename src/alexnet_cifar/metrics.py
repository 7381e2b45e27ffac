"""From a run's history to the numbers people read: the per-epoch CSV, the run's key facts, the
summary table over runs. Everything here is derived from ``history.jsonl`` and can be rebuilt
without retraining."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .atomic import atomic_path, write_text
from .errors import UserError

CSV_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "lr", "seconds"]
SUMMARY_COLUMNS = ["run", "setting", "seed", "model", "peak_test_acc", "peak_epoch", "test_at_best_val",
                   "best_val_epoch", "final_test_acc", "epochs", "train_seconds", "diverged_at_epoch"]
#: what summary.md and the report say about the two ways of picking an epoch
EPOCH_CHOICE = ("The peak test accuracy picks its epoch on the test set itself (the best of every epoch's "
                "evaluation of the same test images), so it flatters the run; the write-up's 81.47 % is such "
                "a peak. test_at_best_val picks the epoch by the validation accuracy, on training images the run "
                "never trained on, and reports the test accuracy there: the figure that does not choose on the "
                "test set (empty for a run without validation_images).")
CHECKPOINT_EPOCHS = (1, 5, 10, 25, 50)


def history_frame(history: list[dict]) -> pd.DataFrame:
    """The per-epoch table (accuracies in percent); empty losses where training went non-finite,
    empty validation cells in a run without validation; ``lr`` is each epoch's own."""
    frame = pd.DataFrame(history, columns=CSV_COLUMNS)
    return frame.astype({"epoch": int}) if len(frame) else frame


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def peak(frame: pd.DataFrame) -> tuple[float, int]:
    """(peak test accuracy, the first epoch that reaches it) of a table with epoch and test_acc."""
    best = frame["test_acc"].idxmax()  # idxmax returns the first maximum
    return float(frame.at[best, "test_acc"]), int(frame.at[best, "epoch"])


def run_facts(history: list[dict]) -> dict:
    """Peak (first epoch where the maximum test accuracy is reached), the test accuracy at the
    first epoch of best validation accuracy, final accuracy, time, and where training diverged
    (``None`` if it did not).

    The peak and the best validation epoch count only the epochs completed before a divergence:
    the accuracy measured after a non-finite update says nothing about what the run learned. A run
    that diverged in its first epoch has neither (``None``), nor has a run without validation a
    best validation epoch."""
    if not history:
        raise ValueError("the history is empty: the training wrote no epoch")
    frame = history_frame(history)
    diverged = next((r for r in history if r.get("diverged_at_step") is not None), None)
    completed = frame if diverged is None else frame[frame["epoch"] < diverged["epoch"]]
    peak_acc, peak_epoch = peak(completed) if len(completed) else (None, None)
    best_val_epoch = test_at_best_val = None
    if len(completed) and completed["val_acc"].notna().all():
        best = completed["val_acc"].astype(float).idxmax()  # the first maximum
        best_val_epoch, test_at_best_val = int(completed.at[best, "epoch"]), float(completed.at[best, "test_acc"])
    return {
        "peak_test_acc": peak_acc,
        "peak_epoch": peak_epoch,
        "test_at_best_val": test_at_best_val,
        "best_val_epoch": best_val_epoch,
        "final_test_acc": float(frame["test_acc"].iloc[-1]),
        "epochs": int(frame["epoch"].iloc[-1]),
        "train_seconds": float(frame["seconds"].sum()),
        "diverged_at_epoch": diverged["epoch"] if diverged else None,
        "diverged_at_step": diverged["diverged_at_step"] if diverged else None,
    }


def write_json(data: dict, path: str | os.PathLike) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def summary_frame(facts_by_run: Mapping[str, dict], runs: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per run (:data:`SUMMARY_COLUMNS`): who it is (its setting, seed and model, from the
    run table ``runs``) and its facts."""
    rows = [{"run": run, "setting": runs[run]["setting"], "seed": runs[run]["seed"], "model": runs[run]["model"],
             **facts} for run, facts in facts_by_run.items()]
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    # Int64: an empty cell when the run did not diverge (or has no peak), never a float like 1.0
    return frame.astype({column: "Int64" for column in ("seed", "peak_epoch", "best_val_epoch", "diverged_at_epoch")})


class CurveError(UserError, ValueError):
    """A reference curve that is not test accuracy in percent per epoch; the message names the file and the fix."""


def read_reference(path: str | os.PathLike) -> pd.DataFrame:
    """The reported curve: epoch (unique integers >= 1, returned in order) and test_acc (percent,
    in [0, 100]); other columns are ignored. Raises :class:`CurveError` naming the line at fault."""
    def fail(problem: str) -> CurveError:
        return CurveError(f"reference curve {path}: {problem} (see reference_curve in the config)")

    try:
        # the cells as written, for messages; blank lines kept, so that line numbers are the file's
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, ValueError) as e:  # missing, unreadable, empty, not CSV
        raise fail(f"cannot be read as CSV ({e})") from e
    missing = {"epoch", "test_acc"} - set(frame.columns)
    if missing:
        raise fail(f"it needs columns epoch,test_acc; missing {sorted(missing)} "
                   f"(found {list(frame.columns)})")
    if frame.empty:
        raise fail("it has no rows; write one line epoch,test_acc per epoch")
    epoch = pd.to_numeric(frame["epoch"], errors="coerce")
    acc = pd.to_numeric(frame["test_acc"], errors="coerce")
    line = frame.index.to_numpy() + 2  # the header is line 1
    for column, values, bad, expected in (
            ("epoch", frame["epoch"], ~((epoch >= 1) & (epoch % 1 == 0)), "an integer >= 1"),
            ("test_acc", frame["test_acc"], ~acc.between(0, 100), "a number in [0, 100] (percent)")):
        if bad.any():
            first = bad.to_numpy().argmax()
            raise fail(f"{column} should be {expected}, found {values.iloc[first]!r} on line {line[first]} "
                       f"({bad.sum()} such row(s))")
    repeated = epoch[epoch.duplicated()]
    if len(repeated):
        raise fail(f"epoch {int(repeated.iloc[0])} appears more than once (lines "
                   f"{', '.join(str(n) for n in line[(epoch == repeated.iloc[0]).to_numpy()])}); "
                   "give each epoch one row")
    if (acc <= 1.0).all():
        raise fail(f"every test_acc is at most 1.0 (largest {acc.max():g}): this looks like fractions; "
                   "write percent (multiply by 100)")
    return pd.DataFrame({"epoch": epoch.astype(int), "test_acc": acc.astype(float)}).sort_values(
        "epoch", ignore_index=True)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_markdown(runs: dict[str, pd.DataFrame], facts_by_run: dict[str, dict],
                     reference: pd.DataFrame) -> str:
    """Every run against the reported curve: peak and its epoch, final accuracy, accuracy at
    epochs 1, 5, 10, 25, 50 where reached, and wall time."""
    ref_peak, ref_peak_epoch = peak(reference)
    ref_facts = {"peak_test_acc": ref_peak, "peak_epoch": ref_peak_epoch, "test_at_best_val": None,
                 "best_val_epoch": None, "final_test_acc": float(reference["test_acc"].iloc[-1]),
                 "train_seconds": None, "diverged_at_epoch": None}
    header = (["run", "peak %", "peak epoch", "test at best val %", "best val epoch", "final %"]
              + [f"epoch {e} %" for e in CHECKPOINT_EPOCHS] + ["train time", "diverged at epoch"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, frame, facts in ([("reported", reference, ref_facts)]
                               + [(run, runs[run], facts_by_run[run]) for run in runs]):
        acc = dict(zip(frame["epoch"], frame["test_acc"], strict=True))
        seconds = facts["train_seconds"]
        cells = [name, _fmt(facts["peak_test_acc"]), _fmt(facts["peak_epoch"]), _fmt(facts.get("test_at_best_val")),
                 _fmt(facts.get("best_val_epoch")), _fmt(facts["final_test_acc"])]
        cells += [_fmt(float(acc[e])) if e in acc else "–" for e in CHECKPOINT_EPOCHS]
        cells += ["–" if seconds is None else f"{seconds / 60:.1f} min", _fmt(facts["diverged_at_epoch"])]
        lines.append("| " + " | ".join(cells) + " |")
    return ("# Test accuracy of every run against the reported curve\n\n" + EPOCH_CHOICE + "\n\n"
            + "\n".join(lines) + "\n")
