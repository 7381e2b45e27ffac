"""The figures: one run's test-accuracy curve with its peak marked, and all runs against the
reported curve. Each is saved in every format asked for (PNG to look at, SVG for the report)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: runs on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .atomic import atomic_path  # noqa: E402


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


def plot_run(frame: pd.DataFrame, facts: dict, paths, *, title: str) -> None:
    """Test accuracy against epoch (numbered from 1), the peak marked and labelled at its epoch."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(frame["epoch"], frame["test_acc"], marker="o", markersize=3, label="test accuracy")
    peak_epoch, peak_acc = facts["peak_epoch"], facts["peak_test_acc"]
    ax.plot([peak_epoch], [peak_acc], marker="*", markersize=14, color="tab:red", linestyle="none",
            label=f"peak: {peak_acc:.2f} % at epoch {peak_epoch}")
    ax.annotate(f"{peak_acc:.2f} %", (peak_epoch, peak_acc), xytext=(0, 10), textcoords="offset points",
                ha="center", va="bottom", fontsize=11, fontweight="bold", color="tab:red")
    if facts.get("diverged_at_epoch") is not None:
        ax.axvline(facts["diverged_at_epoch"], color="black", linestyle=":",
                   label=f"diverged in epoch {facts['diverged_at_epoch']} "
                         f"(step {facts['diverged_at_step']}): training stopped")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_ylim(0, max(100.0, peak_acc + 8))
    ax.set_xlim(0.5, max(frame["epoch"].max(), 1) + 0.5)
    _epoch_axis(ax)
    ax.set_title(title)
    ax.legend(loc="best")
    save(fig, paths)


def plot_comparison(runs: dict[str, pd.DataFrame], reference: pd.DataFrame, paths, *,
                    reference_label: str = "reported") -> None:
    """Left: test accuracy of every run, the reported curve dashed. Right: training loss."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    acc_ax.plot(reference["epoch"], reference["test_acc"], linestyle="--", color="gray",
                label=f"{reference_label} (peak {reference['test_acc'].max():.2f} %)")
    for run, frame in runs.items():
        line, = acc_ax.plot(frame["epoch"], frame["test_acc"], marker="o", markersize=2,
                            label=f"{run} (peak {frame['test_acc'].max():.2f} %)")
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
