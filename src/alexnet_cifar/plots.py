"""The figures: one run's test-accuracy curve with its peak marked, all runs against the
reported curve, each setting's seeds as a mean with a min-max band, peak accuracy against the
swept keys, and per run each class's accuracy and the confusion matrices. Each is saved in every
format asked for (PNG to look at, SVG for the report, its text kept as text)."""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: runs on clusters and in CI
matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text (searchable), not glyph outlines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .config import value_label  # noqa: E402
from .data import CLASSES  # noqa: E402


def save(fig, paths) -> None:
    """Write ``fig`` to each path (format from its extension), each atomically."""
    for path in paths:
        path = Path(path)
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _epoch_axis(ax) -> None:
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


TRAIN_ACC_LABEL = "training accuracy (measured during the epoch, dropout and augmentation on)"


def plot_run(frame: pd.DataFrame, facts: dict, paths, *, title: str) -> None:
    """Test accuracy against epoch (numbered from 1), the peak marked and labelled at its epoch
    (a run that diverged in its first epoch has none, and the legend says so); beside it the
    training accuracy and, where the run has validation images, the validation accuracy (with the
    test accuracy at the first epoch of best validation accuracy marked), so that over-fitting
    shows. A long title is wrapped."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.plot(frame["epoch"], frame["test_acc"], marker="o", markersize=3, label="test accuracy")
    ax.plot(frame["epoch"], frame["train_acc"], color="tab:green", linestyle="-.", linewidth=1.2,
            label=TRAIN_ACC_LABEL)
    if "val_acc" in frame and frame["val_acc"].notna().any():
        ax.plot(frame["epoch"], frame["val_acc"], color="tab:purple", linestyle="--", linewidth=1.2,
                label="validation accuracy (held-out training images)")
    if facts.get("best_val_epoch") is not None:
        ax.plot([facts["best_val_epoch"]], [facts["test_at_best_val"]], marker="D", markersize=7, color="tab:purple",
                linestyle="none", label=f"test at the best validation epoch: {facts['test_at_best_val']:.2f} % "
                                        f"(epoch {facts['best_val_epoch']})")
    peak_epoch, peak_acc = facts["peak_epoch"], facts["peak_test_acc"]
    if peak_acc is None:
        ax.plot([], [], linestyle="none", label="no peak: no epoch completed before the divergence")
    else:
        ax.plot([peak_epoch], [peak_acc], marker="*", markersize=14, color="tab:red", linestyle="none",
                label=f"peak: {peak_acc:.2f} % at epoch {peak_epoch}")
        ax.annotate(f"{peak_acc:.2f} %", (peak_epoch, peak_acc), xytext=(0, 10), textcoords="offset points",
                    ha="center", va="bottom", fontsize=11, fontweight="bold", color="tab:red")
    if facts.get("diverged_at_epoch") is not None:
        ax.axvline(facts["diverged_at_epoch"], color="black", linestyle=":",
                   label=f"diverged in epoch {facts['diverged_at_epoch']} "
                         f"(step {facts['diverged_at_step']}): training stopped")
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(0, max(100.0, (peak_acc or 0) + 8))
    ax.set_xlim(0.5, max(frame["epoch"].max(), 1) + 0.5)
    _epoch_axis(ax)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=10)
    ax.legend(loc="best", fontsize=8)
    save(fig, paths)


def plot_comparison(runs: dict[str, pd.DataFrame], facts: dict[str, dict], reference: pd.DataFrame, paths, *,
                    reference_label: str = "reported") -> None:
    """Left: test accuracy of every run, the reported curve dashed; each run's peak in the legend is
    its facts' (``metrics.run_facts``: before a divergence, if any). Right: training loss."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    acc_ax.plot(reference["epoch"], reference["test_acc"], linestyle="--", color="gray",
                label=f"{reference_label} (peak {reference['test_acc'].max():.2f} %)")
    for run, frame in runs.items():
        peak = facts[run]["peak_test_acc"]
        line, = acc_ax.plot(frame["epoch"], frame["test_acc"], marker="o", markersize=2,
                            label=f"{run} (peak {peak:.2f} %)" if peak is not None else f"{run} (no peak)")
        loss_ax.plot(frame["epoch"], frame["train_loss"], marker="o", markersize=2, color=line.get_color(),
                     label=run)
    acc_ax.set_ylabel("Test accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.set_title("Test accuracy on CIFAR-10")
    loss_ax.set_ylabel("Training loss (cross-entropy)")
    loss_ax.set_title("Training loss")
    for ax in (acc_ax, loss_ax):
        _epoch_axis(ax)
        ax.legend(loc="best")
    save(fig, paths)


def figure_paths(png: str | os.PathLike) -> list[Path]:
    """A figure's PNG and its SVG twin (what the HTML report shows)."""
    png = Path(png)
    return [png, png.with_suffix(".svg")]


def replicates_figure(stats: pd.DataFrame, settings: pd.DataFrame, reference: pd.DataFrame, *,
                      reference_label: str = "reported", columns: int = 3):
    """One panel per setting (a grid, shared 0-100 % y-axis): the mean test accuracy over the
    setting's seeds per epoch, the band from their minimum to their maximum, the reported curve
    dashed. ``stats`` is the replicates table, ``settings`` gives each setting's n_seeds and
    n_diverged (and the order of the panels)."""
    columns = max(1, min(columns, len(settings)))
    rows = max(1, math.ceil(len(settings) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.5 * rows), sharey=True, squeeze=False)
    for ax, setting in zip(axes.flat, settings.to_dict("records"), strict=False):  # more axes than settings
        curve = stats[stats["setting"] == setting["setting"]].sort_values("epoch")
        ax.plot(reference["epoch"], reference["test_acc"], linestyle="--", color="gray", label=reference_label)
        if len(curve):
            ax.fill_between(curve["epoch"], curve["min"], curve["max"], color="tab:blue", alpha=0.25,
                            linewidth=0, label="min-max over seeds")
            ax.plot(curve["epoch"], curve["mean"], color="tab:blue", marker="o", markersize=2,
                    label="mean over seeds")
        else:
            ax.text(0.5, 0.5, "no epoch completed\nbefore divergence", transform=ax.transAxes,
                    ha="center", va="center")
        diverged = f", {setting['n_diverged']} diverged" if setting["n_diverged"] else ""
        ax.set_title(f"{setting['setting']} (n = {setting['n_seeds']}{diverged})", fontsize=10)
        _epoch_axis(ax)
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("Test accuracy (%)")
    axes[0, 0].set_ylim(0, 100)
    axes[0, 0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_replicates(stats: pd.DataFrame, settings: pd.DataFrame, reference: pd.DataFrame, paths, **kwargs) -> None:
    """:func:`replicates_figure`, saved to ``paths``."""
    save(replicates_figure(stats, settings, reference, **kwargs), paths)


#: swept keys drawn on a log axis (their values are positive and span orders of magnitude)
LOG_KEYS = ("lr",)


def sweep_figure(outcomes: pd.DataFrame, settings: pd.DataFrame, swept_keys: list[str]):
    """Peak test accuracy against each swept key, one panel per key: per line (a model and a
    combination of the other swept keys' values) the mean over seeds, and each seed as a point,
    a diverged run as an ``x``. ``outcomes`` is one row per run (its peak_test_acc and diverged),
    ``settings`` one per setting (its peak_mean); both carry model and the swept keys."""
    if not swept_keys:
        raise ValueError("the sweep figure needs at least one swept key")
    fig, axes = plt.subplots(1, len(swept_keys), figsize=(6 * len(swept_keys), 4.5), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], swept_keys, strict=True):
        others = [k for k in swept_keys if k != key]
        for index, (group, means) in enumerate(settings.groupby(["model", *others], sort=False)):
            color = colors[index % len(colors)]
            others_values = [f"{k} {value_label(v)}" for k, v in zip(others, group[1:], strict=True)]
            label = ", ".join([str(group[0]), *others_values])
            means = means.sort_values(key)
            ax.plot(means[key], means["peak_mean"], color=color, marker="_", markersize=16, markeredgewidth=2,
                    label=label)
            runs = outcomes.merge(means[["setting"]], on="setting")
            for diverged, marker, size in ((False, "o", 16), (True, "x", 40)):
                points = runs[runs["diverged"] == diverged]
                # a run that diverged before completing an epoch has no peak: drawn on the axis
                ax.scatter(points[key], points["peak_test_acc"].fillna(0.0), color=color, marker=marker, s=size,
                           alpha=0.6, zorder=3, clip_on=False)
        values = sorted(settings[key].unique())
        if key in LOG_KEYS and all(v > 0 for v in values):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"{key} (log scale)")
        else:
            ax.set_xlabel(key)
        ax.set_xticks(values, [value_label(v) for v in values])
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"Peak test accuracy against {key}")
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="gray", marker="_", markersize=12, markeredgewidth=2,
                           label="mean peak over seeds"),
                    Line2D([], [], color="gray", marker="o", markersize=4, linestyle="none", label="one seed"),
                    Line2D([], [], color="gray", marker="x", linestyle="none",
                           label="diverged run (best epoch before it; at 0 if none)")]
        ax.legend(handles=handles, loc="best", fontsize=8)
    axes[0, 0].set_ylabel("Peak test accuracy (%)")
    fig.tight_layout()
    return fig


def plot_sweep(outcomes: pd.DataFrame, settings: pd.DataFrame, swept_keys: list[str], paths) -> None:
    """:func:`sweep_figure`, saved to ``paths``."""
    save(sweep_figure(outcomes, settings, swept_keys), paths)


def plot_classes(table: pd.DataFrame, peak_epoch: int | None, paths, *, title: str) -> None:
    """Each class's test accuracy per epoch (``table``: epoch, class, accuracy), the run's peak epoch
    marked; in the legend the classes that lose most between the peak and the last epoch come
    first, each with its change (in class order for a run without a peak, or whose peak is its
    last epoch)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    at = table.set_index(["epoch", "class"])["accuracy"].astype(float)
    last = int(table["epoch"].max())
    change = {name: at.get((last, name)) - at.get((peak_epoch, name)) for name in CLASSES} \
        if peak_epoch and peak_epoch != last else {}  # nothing lost when the peak is the last epoch
    # most lost first; a class without test images (no change to measure) last
    order = sorted(CLASSES, key=lambda name: (math.isnan(change[name]), change[name])) if change else list(CLASSES)
    colors = plt.get_cmap("tab10").colors
    for name in order:
        curve = table[table["class"] == name]
        label = name if name not in change or math.isnan(change[name]) else \
            f"{name} ({change[name]:+.1f} points from epoch {peak_epoch} to {last})"
        ax.plot(curve["epoch"], curve["accuracy"], marker="o", markersize=2, color=colors[CLASSES.index(name)],
                label=label)
    if peak_epoch is not None:
        ax.axvline(peak_epoch, color="black", linestyle=":", label=f"the run's peak test accuracy: epoch {peak_epoch}")
    ax.set_ylabel("Test accuracy of the class (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0.5, max(last, 1) + 0.5)
    _epoch_axis(ax)
    ax.set_title("\n".join(textwrap.wrap(f"Per class: {title}", 90)), fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    save(fig, paths)


def plot_confusion(blocks: list[tuple[str, int, np.ndarray]], paths, *, title: str) -> None:
    """The confusion matrices ``blocks`` ((which, epoch, counts true x predicted), the peak's and
    the last epoch's) side by side: each row in percent of its class's test images, each cell's
    percent written in it, the class names on both axes."""
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.2 * len(blocks), 5.6), squeeze=False)
    for ax, (which, epoch, counts) in zip(axes[0], blocks, strict=True):
        totals = counts.sum(axis=1, keepdims=True)
        percent = np.divide(100.0 * counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
        ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
        for (t, p), value in np.ndenumerate(percent):
            text = "–" if np.isnan(value) else f"{value:.0f}"
            ax.text(p, t, text, ha="center", va="center", fontsize=7,
                    color="white" if not np.isnan(value) and value > 60 else "black")
        ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(CLASSES)), CLASSES, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (row: % of its test images)")
        correct = 100.0 * np.trace(counts) / counts.sum()
        ax.set_title(f"{'peak' if which == 'peak' else 'last'} epoch {epoch}: {correct:.2f} % correct", fontsize=10)
    fig.suptitle("\n".join(textwrap.wrap(f"Confusion: {title}", 110)), fontsize=10)
    fig.tight_layout()
    save(fig, paths)
