"""From a run's history to the numbers people read: the per-epoch CSV, the run's key facts, the
summary table over runs. Everything here is derived from ``history.jsonl`` and can be rebuilt
without retraining."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from .atomic import atomic_path, write_text

CSV_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
SUMMARY_COLUMNS = ["run", "model", "peak_test_acc", "peak_epoch", "final_test_acc", "epochs",
                   "train_seconds", "diverged_at_epoch"]
CHECKPOINT_EPOCHS = (1, 5, 10, 25, 50)


def history_frame(history: list[dict]) -> pd.DataFrame:
    """The per-epoch table (accuracies in percent); empty losses where training went non-finite."""
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
    """Peak (first epoch where the maximum test accuracy is reached), final accuracy, time,
    and where training diverged (``None`` if it did not)."""
    if not history:
        raise ValueError("the history is empty: the training wrote no epoch")
    frame = history_frame(history)
    peak_acc, peak_epoch = peak(frame)
    diverged = next((r for r in history if r.get("diverged_at_step") is not None), None)
    return {
        "peak_test_acc": peak_acc,
        "peak_epoch": peak_epoch,
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


def summary_frame(facts_by_run: dict[str, dict], models: dict[str, str]) -> pd.DataFrame:
    rows = [{"run": run, "model": models[run], **facts} for run, facts in facts_by_run.items()]
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return frame.astype({"diverged_at_epoch": "Int64"})  # empty cell when the run did not diverge


def read_reference(path: str | os.PathLike) -> pd.DataFrame:
    """The reported curve: columns epoch, test_acc (percent)."""
    frame = pd.read_csv(path)
    missing = {"epoch", "test_acc"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: the reference curve needs columns epoch,test_acc; missing {sorted(missing)}")
    return frame


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_markdown(runs: dict[str, pd.DataFrame], facts_by_run: dict[str, dict],
                     reference: pd.DataFrame) -> str:
    """Every run against the reported curve: peak and its epoch, final accuracy, accuracy at
    epochs 1, 5, 10, 25, 50 where reached, and wall time."""
    ref_peak, ref_peak_epoch = peak(reference)
    ref_facts = {"peak_test_acc": ref_peak, "peak_epoch": ref_peak_epoch,
                 "final_test_acc": float(reference["test_acc"].iloc[-1]), "train_seconds": None,
                 "diverged_at_epoch": None}
    header = (["run", "peak %", "peak epoch", "final %"] + [f"epoch {e} %" for e in CHECKPOINT_EPOCHS]
              + ["train time", "diverged at epoch"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, frame, facts in ([("reported", reference, ref_facts)]
                               + [(run, runs[run], facts_by_run[run]) for run in runs]):
        acc = dict(zip(frame["epoch"], frame["test_acc"]))
        seconds = facts["train_seconds"]
        cells = [name, _fmt(facts["peak_test_acc"]), _fmt(facts["peak_epoch"]), _fmt(facts["final_test_acc"])]
        cells += [_fmt(float(acc[e])) if e in acc else "–" for e in CHECKPOINT_EPOCHS]
        cells += ["–" if seconds is None else f"{seconds / 60:.1f} min", _fmt(facts["diverged_at_epoch"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "# Test accuracy of every run against the reported curve\n\n" + "\n".join(lines) + "\n"
