"""Metrics and figures derived from a history."""
from __future__ import annotations

import pandas as pd
import pytest
from workflow_helpers import REPO

from alexnet_cifar import metrics, plots
from alexnet_cifar.atomic import atomic_path


def history(accs, diverged_epoch=None):
    return [{"epoch": i + 1, "train_loss": None if i + 1 == diverged_epoch else 1.0 / (i + 1), "train_acc": a,
             "test_loss": 1.0, "test_acc": a, "lr": 0.001, "seconds": 2.0,
             "diverged_at_step": 17 if i + 1 == diverged_epoch else None} for i, a in enumerate(accs)]


def test_peak_is_the_first_maximum_with_its_epoch():
    facts = metrics.run_facts(history([50.0, 81.47, 80.0, 81.47, 65.35]))
    assert (facts["peak_test_acc"], facts["peak_epoch"], facts["final_test_acc"]) == (81.47, 2, 65.35)
    assert (facts["epochs"], facts["train_seconds"], facts["diverged_at_epoch"]) == (5, 10.0, None)


def test_divergence_is_recorded_with_epoch_and_step():
    facts = metrics.run_facts(history([30.0, 10.0], diverged_epoch=2))
    assert (facts["diverged_at_epoch"], facts["diverged_at_step"]) == (2, 17)


def test_empty_history_is_an_error():
    with pytest.raises(ValueError, match="history is empty"):
        metrics.run_facts([])


def test_summary_leaves_diverged_at_epoch_empty_when_the_run_did_not_diverge(tmp_path):
    facts = {"a": metrics.run_facts(history([50.0, 60.0])), "b": metrics.run_facts(history([40.0], 1))}
    runs = {"a": {"setting": "a", "seed": 0, "model": "paper", "swept": {}},
            "b": {"setting": "b", "seed": 3, "model": "torchvision", "swept": {}}}
    metrics.write_csv(metrics.summary_frame(facts, runs), tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == ",".join(metrics.SUMMARY_COLUMNS)
    assert lines[1].startswith("a,a,0,paper,") and lines[2].startswith("b,b,3,torchvision,")
    assert lines[1].endswith(",2,4.0,") and lines[2].endswith(",1,2.0,1")


def test_run_figure_labels_the_peak_at_its_epoch(tmp_path):
    frame = metrics.history_frame(history([50.06, 81.47, 79.0]))
    facts = metrics.run_facts(history([50.06, 81.47, 79.0]))
    plots.plot_run(frame, facts, plots.figure_paths(tmp_path / "run.png"), title="t")
    svg = (tmp_path / "run.svg").read_text()
    assert "81.47 %" in svg and "peak: 81.47 % at epoch 2" in svg
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_peak_label_sits_over_the_peak_epoch():
    import matplotlib.pyplot as plt

    frame = metrics.history_frame(history([50.0, 81.47, 79.0]))
    captured = {}
    original = plots.save
    plots.save = lambda fig, paths: captured.update(fig=fig)
    try:
        plots.plot_run(frame, metrics.run_facts(history([50.0, 81.47, 79.0])), [], title="t")
    finally:
        plots.save = original
    label = next(t for t in captured["fig"].axes[0].texts if t.get_text() == "81.47 %")
    assert label.xy == (2, 81.47)
    plt.close(captured["fig"])


def test_comparison_draws_the_reference_dashed_and_each_run_s_own_peak(tmp_path):
    """The legend's peak is the run's facts': a run that diverged in epoch 1 has none, although
    its diverged epoch measured 70 %."""
    reference = metrics.read_reference(REPO / "config/reference/seed_reported_accuracy.csv")
    histories = {"paper": history([50.0, 60.0]), "blowup": history([70.0], diverged_epoch=1)}
    runs = {run: metrics.history_frame(h) for run, h in histories.items()}
    facts = {run: metrics.run_facts(h) for run, h in histories.items()}
    plots.plot_comparison(runs, facts, reference, plots.figure_paths(tmp_path / "c.png"))
    svg = (tmp_path / "c.svg").read_text()
    assert "reported (peak 81.47 %)" in svg and "Training loss" in svg
    assert "paper (peak 60.00 %)" in svg and "blowup (no peak)" in svg and "70.00" not in svg


def test_reference_without_the_columns_is_refused(tmp_path):
    (tmp_path / "r.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="needs columns epoch,test_acc"):
        metrics.read_reference(tmp_path / "r.csv")


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "result.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_a_successful_write_replaces_the_file_whole(tmp_path):
    (tmp_path / "result.csv").write_text("old")
    with atomic_path(tmp_path / "result.csv") as tmp:
        tmp.write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]
    assert (tmp_path / "result.csv").read_text() == "new"


def test_csv_has_the_issue_columns():
    frame = metrics.history_frame(history([10.0]))
    assert list(frame.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc",
                                   "lr", "seconds"]
    assert isinstance(frame, pd.DataFrame)
