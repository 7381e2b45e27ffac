"""The workflow end to end on a recipe config with seeds and a sweep, run by Snakemake as a user
would, on the tiny archive (a file of its own, so that it runs beside test_workflow.py)."""
from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest
import tiny_model
from workflow_helpers import make_workdir, snakemake, tiny_config

from alexnet_cifar.layout import workflow_paths


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, tiny_archive):
    """A recipe config end to end: two seeds of the stand-in AlexNet (the bookkeeping is the point
    here, not the network; test_workflow.py runs the real ones) crossed with lr 0.001 and 1000 (which
    diverges), with 2 validation images and a step schedule (the lr halves after epoch 1): 4
    trainings of 2 epochs on 10 images. (Settings of one seed: every config without seeds, as
    ``finished``.)"""
    path, md5 = tiny_archive
    config = tiny_config(str(path), md5, sweep={"lr": [0.001, 1000.0]},
                         runs={"tv": {"model": tiny_model.NAME, "seeds": 2}})
    config["train"].update(validation_images=2, lr_schedule="step", lr_milestones=[1], lr_gamma=0.5)
    workdir = make_workdir(tmp_path_factory.mktemp("replicated"), config, base={})
    snakemake(workdir, "--cores", "2")
    return workdir / "results"


REPLICATED_RUNS = ["tv-lr0.001-seed0", "tv-lr0.001-seed1", "tv-lr1000-seed0", "tv-lr1000-seed1"]


@pytest.mark.slow
def test_seeds_crossed_with_a_sweep_run_end_to_end(replicated):
    summary = pd.read_csv(replicated / "metrics/summary.csv")
    assert list(summary["run"]) == REPLICATED_RUNS
    assert list(summary["setting"]) == ["tv-lr0.001"] * 2 + ["tv-lr1000"] * 2
    assert list(summary["seed"]) == [0, 1, 0, 1]
    for name in ("replicates.png", "replicates.svg", "sweep.png", "sweep.svg"):
        assert (replicated / "figures" / name).stat().st_size > 1000, name
    text = (replicated / "metrics/summary.md").read_text()
    assert f"### tv-lr0.001 (model {tiny_model.NAME}, lr 0.001; 2 seeds)" in text


@pytest.mark.slow
def test_the_workflow_s_own_files_beside_the_per_run_files_are_the_reserved_list(replicated):
    """Every file in metrics/ and figures/ is a run's or one of layout.WORKFLOW_FILES, whose stems no run
    may take: a new output of the workflow there is reserved only once it is in that list."""
    per_run = {f"{folder}/{run}{suffix}" for run in REPLICATED_RUNS
               for folder, suffixes in (("metrics", (".csv", ".facts.json")), ("figures", (".png", ".svg")))
               for suffix in suffixes}
    found = {path.relative_to(replicated).as_posix() for folder in ("metrics", "figures")
             for path in (replicated / folder).iterdir() if path.is_file()}  # per-class files have folders
    assert per_run <= found
    assert found - per_run == set(workflow_paths())


@pytest.mark.slow
def test_the_aggregates_equal_a_direct_computation_from_the_per_run_csvs(replicated):
    curves = {run: pd.read_csv(replicated / f"metrics/{run}.csv") for run in REPLICATED_RUNS}
    first = [curves[f"tv-lr0.001-seed{s}"]["test_acc"].iloc[0] for s in (0, 1)]
    rows = pd.read_csv(replicated / "metrics/replicates.csv").query("setting == 'tv-lr0.001'").to_dict("records")
    row = rows[0]
    assert [r["epoch"] for r in rows] == [1, 2] and row["n"] == 2
    assert row["mean"] == pytest.approx(statistics.mean(first)) and row["sd"] == pytest.approx(statistics.stdev(first))
    assert (row["min"], row["max"]) == (min(first), max(first))
    settings = pd.read_csv(replicated / "metrics/settings.csv").set_index("setting")
    assert list(settings.columns[:2]) == ["model", "lr"]
    peaks = [curves[f"tv-lr0.001-seed{s}"]["test_acc"].max() for s in (0, 1)]
    finals = [curves[f"tv-lr0.001-seed{s}"]["test_acc"].iloc[-1] for s in (0, 1)]
    assert settings.loc["tv-lr0.001", "peak_mean"] == pytest.approx(statistics.mean(peaks))
    assert settings.loc["tv-lr0.001", "final_sd"] == pytest.approx(statistics.stdev(finals))


@pytest.mark.slow
def test_a_recipe_run_records_validation_and_its_schedule_and_tables_pick_the_epoch_on_validation(replicated):
    """Validation in the history, the CSV, the facts, summary.csv, settings.csv and summary.md; the
    step schedule in each epoch's lr; the figure with the training and validation accuracy and a
    title naming the recipe."""
    summary = pd.read_csv(replicated / "metrics/summary.csv").set_index("run")
    for run in ("tv-lr0.001-seed0", "tv-lr0.001-seed1"):
        history = [json.loads(line) for line in (replicated / f"runs/{run}/history.jsonl").read_text().splitlines()]
        assert [r["lr"] for r in history] == [0.001, 0.0005]  # halved after the milestone, epoch 1
        assert all(r["val_acc"] is not None and r["val_loss"] is not None for r in history)
        csv = pd.read_csv(replicated / f"metrics/{run}.csv")
        assert csv["val_acc"].notna().all() and list(csv["lr"]) == [0.001, 0.0005]
        best = csv.loc[csv["val_acc"].idxmax()]
        facts = json.loads((replicated / f"metrics/{run}.facts.json").read_text())
        assert (facts["best_val_epoch"], facts["test_at_best_val"]) == (best["epoch"], best["test_acc"])
        assert (summary.loc[run, "best_val_epoch"], summary.loc[run, "test_at_best_val"]) == (
            best["epoch"], best["test_acc"])
        svg = (replicated / f"figures/{run}.svg").read_text()
        assert "training accuracy (measured during the epoch, dropout and augmentation on)" in svg
        assert "validation accuracy (held-out training images)" in svg and "test at the best validation epoch" in svg
        assert "lr_schedule step" in svg and "validation_images 2" in svg  # the title names the recipe
    assert summary.loc["tv-lr1000-seed0", ["best_val_epoch", "test_at_best_val"]].isna().all()  # diverged in epoch 1
    settings = pd.read_csv(replicated / "metrics/settings.csv").set_index("setting")
    chosen = [summary.loc[f"tv-lr0.001-seed{s}", "test_at_best_val"] for s in (0, 1)]
    assert settings.loc["tv-lr0.001", "test_at_best_val_mean"] == pytest.approx(statistics.mean(chosen))
    assert settings.loc["tv-lr0.001", "test_at_best_val_sd"] == pytest.approx(statistics.stdev(chosen))
    text = (replicated / "metrics/summary.md").read_text()
    assert "| test at best val % | best val epoch |" in text and "picks its epoch on the test set itself" in text
    assert "- Test accuracy at the epoch of best validation accuracy (chosen without the test set)" in text


@pytest.mark.slow
def test_a_setting_whose_seeds_diverged_counts_them_and_leaves_their_epochs_out(replicated):
    settings = pd.read_csv(replicated / "metrics/settings.csv").set_index("setting")
    assert settings.loc["tv-lr1000", "n_seeds"] == 2 and settings.loc["tv-lr1000", "n_diverged"] == 2
    assert pd.isna(settings.loc["tv-lr1000", "final_mean"])  # diverged runs are left out of final_*
    assert pd.isna(settings.loc["tv-lr1000", "peak_mean"])  # diverged in epoch 1: no epoch before it
    replicates = pd.read_csv(replicated / "metrics/replicates.csv")
    assert "tv-lr1000" not in set(replicates["setting"])  # only epochs before the divergence count
    assert "Diverged: tv-lr1000-seed0 in epoch 1, tv-lr1000-seed1 in epoch 1" in (
        replicated / "metrics/summary.md").read_text()
