"""The whole workflow, run by Snakemake as a user would, on a tiny archive served from 127.0.0.1."""
from __future__ import annotations

import json
import shutil
import statistics
import zipfile

import pandas as pd
import pytest
import yaml
from workflow_helpers import make_workdir, planned_jobs, snakemake, tiny_config

from alexnet_cifar.config import WORKFLOW_FILES

RUNS = ("paper", "torchvision", "blowup")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_archive, http_server):
    """One complete run of the tiny config: both models plus a run whose learning rate blows up."""
    path, md5 = tiny_archive
    shutil.copy(path, http_server.root / "cifar-10-python.tar.gz")
    config = tiny_config(http_server.url("cifar-10-python.tar.gz"), md5,
                         runs={"paper": {"model": "paper"}, "torchvision": {"model": "torchvision"},
                               "blowup": {"model": "paper", "lr": 1000.0}})
    workdir = make_workdir(tmp_path_factory.mktemp("workflow"), config)
    result = snakemake(workdir)
    return workdir, workdir / "results", result


@pytest.mark.slow
def test_every_output_is_complete(finished):
    _, out, _ = finished
    for run in RUNS:
        history = [json.loads(line) for line in (out / f"runs/{run}/history.jsonl").read_text().splitlines()]
        assert {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"} <= set(history[0])
        csv = pd.read_csv(out / f"metrics/{run}.csv")
        assert list(csv.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss",
                                     "val_acc", "lr", "seconds"]
        assert csv["val_acc"].isna().all() and (csv["lr"] == (1000.0 if run == "blowup" else 0.001)).all()
        assert csv["epoch"].tolist() == [r["epoch"] for r in history]
        assert csv["test_acc"].between(0, 100).all()
        assert (out / f"runs/{run}/model.pt").stat().st_size > 1_000_000
        assert not (out / f"runs/{run}/checkpoint.pt").exists(), "the checkpoint is removed at the end"
        for suffix in ("png", "svg"):
            assert (out / f"figures/{run}.{suffix}").stat().st_size > 1000
        assert (out / f"figures/{run}.png").read_bytes()[:8] == PNG_MAGIC
        log = (out / f"logs/train/{run}.log").read_text()
        assert "epoch 1/2 train_loss" in log
        assert (out / f"benchmarks/train/{run}.tsv").exists()
    # a config without seeds or sweep: settings of one run each, no sweep figure
    settings = pd.read_csv(out / "metrics/settings.csv")
    assert sorted(settings["setting"]) == sorted(RUNS) and (settings["n_seeds"] == 1).all()
    assert settings["peak_sd"].isna().all()  # one seed: no standard deviation
    assert (out / "metrics/summary.md").read_text().count("one seed: no spread to measure by") == 2  # blowup: no peak
    assert set(pd.read_csv(out / "metrics/replicates.csv")["setting"]) == {"paper", "torchvision"}  # blowup: none
    assert (out / "figures/replicates.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "figures/sweep.png").exists()
    for run in ("paper", "torchvision"):
        assert len(pd.read_csv(out / f"metrics/{run}.csv")) == 2
        assert "% test_loss" in (out / f"logs/train/{run}.log").read_text().split("epoch 1/2")[1]
        assert " eta 00:00:" in (out / f"logs/train/{run}.log").read_text()
    assert (out / "figures/comparison.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_summary_peak_is_the_csv_maximum(finished):
    _, out, _ = finished
    summary = pd.read_csv(out / "metrics/summary.csv").set_index("run")
    assert list(summary.columns) == ["setting", "seed", "model", "peak_test_acc", "peak_epoch", "test_at_best_val",
                                     "best_val_epoch", "final_test_acc", "epochs", "train_seconds", "diverged_at_epoch"]
    assert summary["test_at_best_val"].isna().all()  # no validation images in this config
    assert list(summary["setting"]) == list(summary.index) and (summary["seed"] == 0).all()
    assert sorted(summary.index) == sorted(RUNS)
    for run in ("paper", "torchvision"):
        csv = pd.read_csv(out / f"metrics/{run}.csv")
        row = summary.loc[run]
        assert row["peak_test_acc"] == pytest.approx(csv["test_acc"].max())
        assert row["peak_epoch"] == csv.loc[csv["test_acc"].idxmax(), "epoch"]
        assert row["final_test_acc"] == pytest.approx(csv["test_acc"].iloc[-1])
        assert row["epochs"] == 2
        assert row["train_seconds"] == pytest.approx(csv["seconds"].sum())
        assert pd.isna(row["diverged_at_epoch"])
    assert summary.loc["torchvision", "model"] == "torchvision"
    assert summary.loc["blowup", "model"] == "paper"


@pytest.mark.slow
def test_a_diverging_run_is_marked_and_the_others_go_on(finished):
    _, out, _ = finished
    summary = pd.read_csv(out / "metrics/summary.csv").set_index("run")
    assert summary.loc["blowup", "diverged_at_epoch"] == 1
    history = [json.loads(line) for line in (out / "runs/blowup/history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["diverged_at_step"] >= 1 and history[0]["train_loss"] is None
    assert "DIVERGED" in (out / "logs/train/blowup.log").read_text()
    assert (out / "runs/blowup/model.pt").exists()
    assert "diverged" in (out / "figures/blowup.svg").read_text()
    assert "blowup (no peak)" in (out / "figures/comparison.svg").read_text()  # diverged in epoch 1


@pytest.mark.slow
def test_provenance_records_how_each_run_was_made(finished):
    _, out, _ = finished
    record = json.loads((out / "runs/paper/run.json").read_text())
    assert record["settings"]["model"] == "paper" and record["settings"]["lr"] == 0.001
    assert record["threads"] >= 1 and record["device"] == "cpu" and record["seed"] == 0
    assert {"python", "torch", "torchvision", "cuda", "cudnn"} <= set(record["versions"])
    assert {"started", "finished", "git_commit", "data_md5", "device_name"} <= set(record)


@pytest.mark.slow
def test_summary_markdown_compares_with_the_reported_curve(finished):
    _, out, _ = finished
    text = (out / "metrics/summary.md").read_text()
    assert "| reported | 81.47 | 14 | – | – | 65.35 | 50.06 |" in text
    assert "| paper |" in text and "| torchvision |" in text


@pytest.mark.slow
def test_report_holds_every_figure_and_the_summary_with_captions(finished):
    workdir, _, _ = finished
    snakemake(workdir, "--report", "report.zip")
    with zipfile.ZipFile(workdir / "report.zip") as archive:
        names = archive.namelist()
        html = archive.read("report/report.html").decode()
    for name in ("paper.svg", "torchvision.svg", "blowup.svg", "comparison.svg", "replicates.svg", "summary.csv",
                 "settings.csv"):
        assert any(n.endswith("/" + name) for n in names), name
    assert "Accuracy of run <strong>blowup</strong>" in html
    assert "lr 1000.0, momentum 0.9" in html  # the run's hyperparameters in its caption
    assert "Differs from the write-up&#39;s protocol in: epochs 2, lr 1000." in html or \
        "Differs from the write-up's protocol in: epochs 2, lr 1000." in html
    assert "Differs from the write-up&#39;s protocol in: epochs 2." in html or \
        "Differs from the write-up's protocol in: epochs 2." in html  # paper and torchvision
    assert "test_at_best_val" in html and "config/ladder.yaml" in html  # the landing page
    assert "reported curve dashed" in html and "One row per run" in html
    assert "rebuilt from declared inputs" in html  # the landing page, not a bare rule graph


@pytest.mark.slow
def test_one_deleted_figure_reruns_only_its_rule(finished):
    workdir, out, _ = finished
    (out / "figures/paper.png").unlink()
    plan = snakemake(workdir, "results/figures/paper.png", "-n")
    assert planned_jobs(plan.stdout) == {"run_figure": 1}
    snakemake(workdir, "results/figures/paper.png")
    assert (out / "figures/paper.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_a_changed_hyperparameter_retrains_only_that_run(finished):
    workdir, _, _ = finished
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    config["runs"]["torchvision"]["momentum"] = 0.5
    (workdir / "changed.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    plan = snakemake(workdir, "-n", configfile="changed.yaml")
    jobs = planned_jobs(plan.stdout)
    assert jobs["train"] == 1 and "download" not in jobs and "prepare" not in jobs
    assert "output: results/runs/torchvision/history.jsonl" in plan.stdout
    assert "output: results/runs/paper/history.jsonl" not in plan.stdout


@pytest.mark.slow
def test_a_mirror_url_or_another_device_retrains_nothing(finished):
    workdir, _, _ = finished
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    config["dataset"]["url"] = "http://127.0.0.1:9/elsewhere/cifar-10-python.tar.gz"
    config["train"]["eval_batch_size"] = 3
    config["train"]["device"] = "auto"
    config["train"]["cuda_graph"] = False
    config["train"]["fused_sgd"] = True
    # the runs in the same order: reordering them reorders the tables' rows, which reruns them
    (workdir / "mirror.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    plan = snakemake(workdir, "-n", configfile="mirror.yaml")
    assert planned_jobs(plan.stdout) == {}


@pytest.mark.slow
def test_a_deleted_model_is_rebuilt_by_a_plain_run_with_what_depends_on_it(finished):
    """The last test of ``finished`` (it leaves the model deleted)."""
    workdir, out, _ = finished
    (out / "runs/torchvision/model.pt").unlink()
    jobs = planned_jobs(snakemake(workdir, "-n").stdout)
    assert jobs["train"] == 1 and jobs["metrics"] == 1 and jobs["run_figure"] == 1 and jobs["summary"] == 1
    assert "prepare" not in jobs


@pytest.mark.slow
def test_one_figure_in_a_fresh_folder_builds_only_what_it_needs(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    workdir = make_workdir(tmp_path, tiny_config(str(path), md5))
    plan = snakemake(workdir, "results/figures/torchvision.png", "-n")
    assert planned_jobs(plan.stdout) == {"download": 1, "prepare": 1, "train": 1, "metrics": 1, "run_figure": 1}


# Each in a folder of its own, never this checkout (Snakemake writes .snakemake/ into its folder,
# and another test worker may be running Snakemake at the same time).
def test_default_config_plans_one_training_per_run(tmp_path):
    result = snakemake(make_workdir(tmp_path, {}), "-n", configfile="config/config.yaml")
    jobs = planned_jobs(result.stdout)
    assert jobs["train"] == 2 and jobs["run_figure"] == 2 and jobs["download"] == 1


def test_lint_is_clean(tmp_path):
    result = snakemake(make_workdir(tmp_path, {}), "--lint", configfile="config/config.yaml", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("change, expected", [
    ({"train": {"lrr": 0.1}}, "train: unknown key(s) lrr; allowed keys: epochs, batch_size, lr"),
    ({"runs": {"x": {"model": "alexnet"}}},
     "runs.x.model: 'alexnet' is not allowed; allowed values: paper, paper-lrn, torchvision"),
    ({"train": {"lr": -0.01}}, "train.lr: -0.01 is less than or equal to the minimum of 0"),
    ({"train": {"epochs": 0}}, "train.epochs: 0 is less than the minimum of 1"),
    ({"dataset": {"md5": "xyz"}}, "dataset.md5: 'xyz' does not match"),
    ({"outdirr": "x"}, "unknown key(s) outdirr"),
])
def test_bad_config_stops_before_any_job_with_the_key_named(tmp_path, change, expected):
    workdir = make_workdir(tmp_path, change)
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    assert expected in result.stderr + result.stdout
    assert "Traceback" not in result.stderr  # one line per problem, no Python frames
    assert not (workdir / "results").exists()


# -- seeds and a sweep ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def replicated(tmp_path_factory, tiny_archive):
    """A recipe config end to end: two seeds of torchvision crossed with lr 0.001 and 1000 (which
    diverges), with 2 validation images and a step schedule (the lr halves after epoch 1): 4
    trainings of 2 epochs on 10 images. (Settings of one seed: every config without seeds, as
    ``finished``.)"""
    path, md5 = tiny_archive
    config = tiny_config(str(path), md5, sweep={"lr": [0.001, 1000.0]},
                         runs={"tv": {"model": "torchvision", "seeds": 2}})
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
    assert "### tv-lr0.001 (model torchvision, lr 0.001; 2 seeds)" in text


@pytest.mark.slow
def test_the_workflow_s_own_files_beside_the_per_run_files_are_the_reserved_list(replicated):
    """Every file in metrics/ and figures/ is a run's or one of WORKFLOW_FILES, whose stems no run
    may take: a new output of the workflow there is reserved only once it is in that list."""
    per_run = {f"{folder}/{run}{suffix}" for run in REPLICATED_RUNS
               for folder, suffixes in (("metrics", (".csv", ".facts.json")), ("figures", (".png", ".svg")))
               for suffix in suffixes}
    found = {path.relative_to(replicated).as_posix() for folder in ("metrics", "figures")
             for path in (replicated / folder).iterdir()}
    assert per_run <= found
    assert found - per_run == set(WORKFLOW_FILES)


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
