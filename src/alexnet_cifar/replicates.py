"""Runs that differ only in their seed, taken together: the spread of test accuracy across seeds
per epoch, each setting's peak and final accuracy, and where the reported curve lies among them.

A *setting* is the set of runs that differ only in their seed (its name is the run name without
``-seed{N}``); a run without seeds is a setting of its own with n = 1. The workflow hands the
run table in as ``runs: {run: {"setting", "seed", "model", "swept": {key: value}}}``.

A run that diverged counts in the per-epoch statistics only for the epochs it completed before the
one in which it diverged: the accuracy measured after a non-finite update says nothing about the
setting's curve. Its peak (from its facts, which count the same epochs) still counts in the
setting's peak statistics, and it is left out of the final accuracy. Standard deviations are
sample ones (ddof=1), missing (an empty CSV cell) where n = 1.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from .config import value_label
from .errors import UserError

RUN_COLUMNS = ["run", "setting", "seed", "model"]
REPLICATES_COLUMNS = ["setting", "model", "epoch", "n", "mean", "sd", "min", "max"]
SETTINGS_STATS = ["n_seeds", "n_diverged", "peak_mean", "peak_sd", "peak_min", "peak_max",
                  "peak_epoch_median", "test_at_best_val_mean", "test_at_best_val_sd", "final_mean", "final_sd"]
#: a seed that ends this many points (or more) below its own peak falls as the reported run does
DROP_POINTS = 10.0


class RunTableError(UserError, ValueError):
    """A run table whose settings are not runs that differ only in their seed; the message names the runs."""


def run_table(runs: Mapping[str, Mapping], swept_keys: Sequence[str] | None = ()) -> pd.DataFrame:
    """One row per run, in the given order: run, setting, seed, model, then one column per swept key.

    Checks what makes a setting a setting: its runs share the model and the swept values and have
    different seeds; every run gives exactly ``swept_keys``. ``None`` leaves the swept values out
    unchecked (for what needs only the settings).
    """
    rows = []
    for run, entry in runs.items():
        missing = [key for key in ("setting", "seed", "model", "swept") if key not in entry]
        if missing:
            raise RunTableError(f"run {run}: the run table lacks {', '.join(missing)}")
        swept = dict(entry["swept"])
        if swept_keys is not None and set(swept) != set(swept_keys):
            raise RunTableError(f"run {run}: swept values for {sorted(swept)}, but the swept keys are "
                                f"{list(swept_keys)}")
        rows.append({"run": run, "setting": entry["setting"], "seed": entry["seed"], "model": entry["model"],
                     **{key: swept[key] for key in swept_keys or ()}})
    swept_keys = list(swept_keys or ())
    table = pd.DataFrame(rows, columns=RUN_COLUMNS + list(swept_keys))
    shared = ["model", *swept_keys]
    for setting, group in table.groupby("setting", sort=False):
        differing = [column for column in shared if group[column].nunique(dropna=False) > 1]
        if differing:
            raise RunTableError(f"setting {setting}: runs {', '.join(group['run'])} differ in "
                                f"{', '.join(differing)}, not only in their seed")
        repeated = group["seed"][group["seed"].duplicated()]
        if len(repeated):
            raise RunTableError(f"setting {setting}: seed {repeated.iloc[0]} is given to more than one run "
                                f"({', '.join(group['run'][group['seed'] == repeated.iloc[0]])})")
    return table


def _settings_in_order(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["setting"]))


def diverged_epoch(facts: Mapping) -> int | None:
    """The epoch a run's facts say it diverged in, or None."""
    epoch = facts.get("diverged_at_epoch")
    return None if epoch is None or (isinstance(epoch, float) and math.isnan(epoch)) else int(epoch)


def completed_epochs(curve: pd.DataFrame, diverged_at_epoch: int | None) -> pd.DataFrame:
    """The epochs of a run's curve that count: all of them, or those before the one it diverged in."""
    return curve if diverged_at_epoch is None else curve[curve["epoch"] < diverged_at_epoch]


def epoch_accuracies(table: pd.DataFrame, curves: Mapping[str, pd.DataFrame],
                     facts: Mapping[str, Mapping]) -> pd.DataFrame:
    """Long table of the test accuracies that count: run, setting, model, epoch, test_acc."""
    parts = [completed_epochs(curves[row.run], diverged_epoch(facts[row.run]))[["epoch", "test_acc"]]
             .assign(run=row.run, setting=row.setting, model=row.model)
             for row in table.itertuples(index=False)]
    columns = ["run", "setting", "model", "epoch", "test_acc"]
    frames = [part[columns] for part in parts if len(part)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def replicate_stats(table: pd.DataFrame, curves: Mapping[str, pd.DataFrame],
                    facts: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per setting and epoch with at least one run (:data:`REPLICATES_COLUMNS`): the test
    accuracy across the setting's seeds at that epoch, not rounded; sd missing where n = 1."""
    accuracies = epoch_accuracies(table, curves, facts)
    if accuracies.empty:
        return pd.DataFrame(columns=REPLICATES_COLUMNS)
    stats = (accuracies.astype({"test_acc": float})
             .groupby(["setting", "model", "epoch"], sort=False)["test_acc"]
             .agg(n="count", mean="mean", sd="std", min="min", max="max")  # std: ddof=1, NaN for n = 1
             .reset_index())
    order = {setting: rank for rank, setting in enumerate(_settings_in_order(table))}
    stats = stats.sort_values(["setting", "epoch"], key=lambda c: c.map(order) if c.name == "setting" else c,
                              ignore_index=True)
    return stats[REPLICATES_COLUMNS]


def run_outcomes(table: pd.DataFrame, facts: Mapping[str, Mapping]) -> pd.DataFrame:
    """The run table with each run's facts: peak_test_acc, peak_epoch, test_at_best_val (``<NA>``
    without validation), final_test_acc, diverged_at_epoch (``<NA>`` when it did not) and
    diverged (bool)."""
    runs = list(table["run"])
    diverged_at = pd.array([diverged_epoch(facts[run]) for run in runs], dtype="Int64")
    return table.assign(peak_test_acc=pd.array([facts[run]["peak_test_acc"] for run in runs], dtype="Float64"),
                        peak_epoch=pd.array([facts[run]["peak_epoch"] for run in runs], dtype="Int64"),
                        test_at_best_val=pd.array([facts[run].get("test_at_best_val") for run in runs],
                                                  dtype="Float64"),
                        final_test_acc=[float(facts[run]["final_test_acc"]) for run in runs],
                        diverged_at_epoch=diverged_at, diverged=~diverged_at.isna())


def setting_stats(table: pd.DataFrame, facts: Mapping[str, Mapping],
                  swept_keys: Sequence[str] = ()) -> pd.DataFrame:
    """One row per setting: setting, model, the swept keys' values, then :data:`SETTINGS_STATS`.

    peak_* are over every run's peak (a diverged run's counts the epochs before it diverged, and
    one that diverged in its first epoch has none), test_at_best_val_* likewise over the runs'
    test accuracy at their best validation epoch (missing without validation); final_* leave
    diverged runs out, so they are missing when every run diverged.
    """
    outcomes = run_outcomes(table, facts)
    finished = outcomes[~outcomes["diverged"]]
    by_setting = ["setting", "model", *swept_keys]
    peaks = (outcomes.groupby(by_setting, sort=False, dropna=False)
             .agg(n_seeds=("run", "count"), n_diverged=("diverged", "sum"),
                  peak_mean=("peak_test_acc", "mean"), peak_sd=("peak_test_acc", "std"),
                  peak_min=("peak_test_acc", "min"), peak_max=("peak_test_acc", "max"),
                  peak_epoch_median=("peak_epoch", "median"),
                  test_at_best_val_mean=("test_at_best_val", "mean"), test_at_best_val_sd=("test_at_best_val", "std")))
    finals = (finished.groupby(by_setting, sort=False, dropna=False)["final_test_acc"]
              .agg(final_mean="mean", final_sd="std"))
    stats = peaks.join(finals).reset_index()
    return stats.astype({"n_seeds": int, "n_diverged": int})[by_setting + SETTINGS_STATS]


def _pct(value: float) -> str:
    return f"{value:.2f} %"


def distance_in_sd(value: float, mean: float, sd: float) -> str:
    """``value`` as a signed distance from ``mean`` in standard deviations, e.g. "+1.8 sd";
    "–" where there is no spread to measure by (n = 1, or sd = 0)."""
    if sd is None or pd.isna(sd) or sd == 0:
        return "–"
    return f"{(value - mean) / sd:+.1f} sd"


def epochs_within_range(stats: pd.DataFrame, reference: pd.DataFrame) -> tuple[int, int]:
    """(epochs at which the reference lies within [min, max] of ``stats``, epochs both have)."""
    both = stats[["epoch", "min", "max"]].merge(reference[["epoch", "test_acc"]], on="epoch")
    return int(both["test_acc"].between(both["min"], both["max"]).sum()), len(both)


def _dropped(peak: float, final: float) -> bool:
    return round(peak - final, 9) >= DROP_POINTS  # rounded: 64.02 - 54.02 is 9.999999999999993


def setting_section(setting: str, settings_row: Mapping, outcomes: pd.DataFrame, stats: pd.DataFrame,
                    reference: pd.DataFrame, swept_keys: Sequence[str] = ()) -> str:
    """Markdown for one setting: the reported peak in the seeds' standard deviations, the share of
    epochs at which the reported curve lies within the seeds' range, and which seeds fall 10 points
    or more from their peak by their last epoch."""
    n = int(settings_row["n_seeds"])
    described = [f"model {settings_row['model']}"] + [f"{key} {value_label(settings_row[key])}" for key in swept_keys]
    counted = f"{n} seed{'s' if n != 1 else ''}" + (f", {settings_row['n_diverged']} diverged"
                                                     if settings_row["n_diverged"] else "")
    lines = [f"### {setting} ({', '.join(described)}; {counted})", ""]

    ref_peak = float(reference["test_acc"].max())
    distance = distance_in_sd(ref_peak, settings_row["peak_mean"], settings_row["peak_sd"])
    peaks = int(outcomes["peak_test_acc"].notna().sum())  # a run that diverged in epoch 1 has none
    if peaks == 0:
        why = " (no run completed an epoch before diverging, so none has a peak)"
        seeds = "no peak among the seeds"
    elif peaks == 1:
        why = " (one seed: no spread to measure by)" if n == 1 else " (one peak: the others diverged in epoch 1)"
        seeds = f"the one seed's peak {_pct(settings_row['peak_mean'])}"
    else:
        why = " (the seeds' peaks are all equal)" if distance == "–" else " from the seeds' mean"
        seeds = (f"the seeds' peaks {_pct(settings_row['peak_mean'])} on average (sd {settings_row['peak_sd']:.2f}, "
                 f"{settings_row['peak_min']:.2f}-{settings_row['peak_max']:.2f} %)")
    lines.append(f"- Peak: reported {_pct(ref_peak)}, {seeds}: **{distance}**{why}.")

    chosen = outcomes["test_at_best_val"].dropna()
    if len(chosen):
        spread = f" (sd {settings_row['test_at_best_val_sd']:.2f})" if len(chosen) > 1 else ""
        lines.append(f"- Test accuracy at the epoch of best validation accuracy (chosen without the test set): "
                     f"{_pct(settings_row['test_at_best_val_mean'])}{spread} over {len(chosen)} seed"
                     f"{'s' if len(chosen) != 1 else ''}, against the peak's {_pct(settings_row['peak_mean'])}.")

    within, common = epochs_within_range(stats, reference)
    if common:
        single = " (with one seed the range is its curve)" if n == 1 else ""
        lines.append(f"- Range: the reported curve lies within the seeds' min-max at {within} of {common} "
                     f"epochs ({100 * within / common:.0f} %), the epochs both have{single}.")
    else:
        lines.append("- Range: the reported curve and the seeds have no epoch in common.")

    finished = outcomes[~outcomes["diverged"]]
    falls = finished["peak_test_acc"] - finished["final_test_acc"]
    fell = finished[[_dropped(p, f)
                     for p, f in zip(finished["peak_test_acc"], finished["final_test_acc"], strict=True)]]
    if finished.empty:
        answer = "no seed finished without diverging"
    elif fell.empty:
        largest = finished.loc[falls.idxmax()]
        answer = f"no; the largest fall is {largest['run']}'s, {falls.max():.2f} points"
    else:
        named = "; ".join(f"{r.run} ({r.peak_test_acc:.2f} % at epoch {r.peak_epoch} -> {r.final_test_acc:.2f} %, "
                          f"-{r.peak_test_acc - r.final_test_acc:.2f})" for r in fell.itertuples(index=False))
        answer = f"yes, {len(fell)} of {len(finished)}: {named}"
    ref_fall = float(reference["test_acc"].max() - reference["test_acc"].iloc[-1])
    lines.append(f"- Fall of {DROP_POINTS:g} points or more from a seed's peak to its last epoch, as in the "
                 f"reported run (-{ref_fall:.2f}): {answer}.")

    diverged = outcomes[outcomes["diverged"]]
    if len(diverged):
        named = ", ".join(f"{r.run} in epoch {r.diverged_at_epoch}" for r in diverged.itertuples(index=False))
        lines.append(f"- Diverged: {named}; its peak and its place in the range count only the epochs "
                     "before the one it diverged in, and it is left out of the final accuracy and the fall.")
    return "\n".join(lines) + "\n"


def seed_distribution_markdown(table: pd.DataFrame, facts: Mapping[str, Mapping], stats: pd.DataFrame,
                               settings: pd.DataFrame, reference: pd.DataFrame,
                               swept_keys: Sequence[str] = ()) -> str:
    """The sections that place the reported curve in each setting's seed distribution
    (:func:`setting_section`), under one heading that states the reported run's own fall."""
    peak_row = reference["test_acc"].idxmax()
    ref_peak, ref_peak_epoch = float(reference.at[peak_row, "test_acc"]), int(reference.at[peak_row, "epoch"])
    ref_final, ref_last = float(reference["test_acc"].iloc[-1]), int(reference["epoch"].iloc[-1])
    intro = (f"## Where the reported curve lies among the seeds\n\n"
             f"Per setting: the reported peak as a distance from the seeds' mean peak in their standard "
             f"deviation, the share of epochs at which the reported accuracy lies within the seeds' "
             f"min-max, and whether a seed falls from its peak as the reported run does "
             f"({_pct(ref_peak)} at epoch {ref_peak_epoch} -> {_pct(ref_final)} at epoch {ref_last}, "
             f"-{ref_peak - ref_final:.2f} points).\n")
    outcomes = run_outcomes(table, facts)
    sections = [setting_section(row["setting"], row, outcomes[outcomes["setting"] == row["setting"]],
                                stats[stats["setting"] == row["setting"]], reference, swept_keys)
                for row in settings.to_dict("records")]
    return "\n".join([intro, *sections])
