"""The whole workflow, run by Snakemake as a user would, on a tiny archive served from 127.0.0.1."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_helpers import make_workdir, planned_jobs, snakemake, tiny_config

from alexnet_cifar import stand_in

RUNS = ("paper", "torchvision", "blowup")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_archive, http_server):
    """One complete run of the tiny config: both real models, plus a run whose learning rate blows
    up (the stand-in AlexNet: the divergence's bookkeeping is the point there, not the network)."""
    path, md5 = tiny_archive
    shutil.copy(path, http_server.root / "cifar-10-python.tar.gz")
    config = tiny_config(http_server.url("cifar-10-python.tar.gz"), md5,
                         runs={"paper": {"model": "paper"}, "torchvision": {"model": "torchvision"},
                               "blowup": {"model": stand_in.NAME, "lr": 10000.0}})
    workdir = make_workdir(tmp_path_factory.mktemp("workflow"), config)
    result = snakemake(workdir, "--cores", "2")  # the trainings one at a time (gpu=1), the rest two at a time
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
        assert csv["val_acc"].isna().all() and (csv["lr"] == (10000.0 if run == "blowup" else 0.001)).all()
        assert csv["epoch"].tolist() == [r["epoch"] for r in history]
        assert csv["test_acc"].between(0, 100).all()
        assert (out / f"runs/{run}/model.pt").stat().st_size > (1_000_000 if run != "blowup" else 1000)
        assert not (out / f"runs/{run}/checkpoint.pt").exists(), "the checkpoint is removed at the end"
        for suffix in ("png", "svg"):
            assert (out / f"figures/{run}.{suffix}").stat().st_size > 1000
        assert (out / f"figures/{run}.png").read_bytes()[:8] == PNG_MAGIC
        log = (out / f"logs/train/{run}.log").read_text()
        assert "epoch 1/2 train_loss" in log
        assert (out / f"benchmarks/train/{run}.tsv").exists()
        # per class: the record of predictions, the tables and the figures, in folders of their own
        assert np.load(out / f"runs/{run}/predictions.npz")["test"].shape == (len(history), 8)
        classes_table = pd.read_csv(out / f"metrics/classes/{run}.csv")
        assert list(classes_table.columns) == ["epoch", "class", "accuracy"] and len(classes_table) == 10 * len(history)
        confusion = pd.read_csv(out / f"metrics/confusion/{run}.csv")
        assert list(dict.fromkeys(confusion["which"])) == (["last"] if run == "blowup" else ["peak", "last"])
        for kind in ("classes", "confusion"):
            assert (out / f"figures/{kind}/{run}.png").read_bytes()[:8] == PNG_MAGIC
            assert ">airplane" in (out / f"figures/{kind}/{run}.svg").read_text()  # class names as SVG text
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
    by_setting = pd.read_csv(out / "metrics/classes_by_setting.csv")
    assert set(by_setting["setting"]) == {"paper", "torchvision"}  # blowup diverged in epoch 1: none
    # one seed each; n 0 (and no mean) for a class that none of the 8 test images belongs to
    assert set(by_setting["n"]) <= {0, 1} and (by_setting["n"] == 1).any()
    assert by_setting["mean"].notna().tolist() == (by_setting["n"] == 1).tolist()


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
    assert summary.loc["blowup", "model"] == stand_in.NAME


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
    assert "lr 10000.0, momentum 0.9" in html  # the run's hyperparameters in its caption
    assert "Differs from the write-up&#39;s protocol in: epochs 2, lr 10000." in html or \
        "Differs from the write-up's protocol in: epochs 2, lr 10000." in html
    assert "Differs from the write-up&#39;s protocol in: epochs 2." in html or \
        "Differs from the write-up's protocol in: epochs 2." in html  # paper and torchvision
    assert "test_at_best_val" in html and "config/ladder.yaml" in html  # the landing page
    assert "reported curve dashed" in html and "One row per run" in html
    assert "rebuilt from declared inputs" in html  # the landing page, not a bare rule graph


@pytest.mark.slow
def test_one_deleted_figure_reruns_only_its_rule(finished):
    """Two figures deleted, of two rules: each target plans only its own rule, a plain run only those
    two jobs (and ``all``); both rebuilt in one run."""
    workdir, out, _ = finished
    figures = {"figures/paper.png": "run_figure", "figures/confusion/torchvision.png": "confusion"}
    for figure in figures:
        (out / figure).unlink()
    for figure, rule in figures.items():
        assert planned_jobs(snakemake(workdir, f"results/{figure}", "-n").stdout) == {rule: 1}
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {**{rule: 1 for rule in figures.values()}, "all": 1}
    snakemake(workdir, *(f"results/{figure}" for figure in figures))
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == PNG_MAGIC


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
    plan = snakemake(workdir, "results/figures/confusion/torchvision.png", "-n")
    assert planned_jobs(plan.stdout) == {"download": 1, "prepare": 1, "train": 1, "confusion": 1}


def test_a_target_of_a_run_the_config_lacks_stops_naming_the_run(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    workdir = make_workdir(tmp_path, tiny_config(str(path), md5))
    result = snakemake(workdir, "results/figures/nosuchrun.png", "-n", check=False)
    assert result.returncode != 0
    assert "no run named 'nosuchrun' in the config (its runs: paper, torchvision)" in result.stdout + result.stderr
    assert not (workdir / "results").exists()


# Each in a folder of its own, never this checkout (Snakemake writes .snakemake/ into its folder,
# and another test worker may be running Snakemake at the same time).
def test_default_config_plans_one_training_per_run(tmp_path):
    result = snakemake(make_workdir(tmp_path, {}), "-n", configfile="config/config.yaml")
    jobs = planned_jobs(result.stdout)
    assert jobs["train"] == 2 and jobs["run_figure"] == 2 and jobs["download"] == 1


def test_lint_is_clean(tmp_path):
    result = snakemake(make_workdir(tmp_path, {}), "--lint", configfile="config/config.yaml", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


#: Each problem of one config, and the line that names it (config.config_problems words every
#: problem of a config, so one dry run shows them all).
BAD_CONFIG = {
    "train": {"lrr": 0.1, "lr": -0.01, "epochs": 0, "input_norm": "imagenet", "bias_decay": "off"},
    "runs": {"x": {"model": "alexnet"}},
    "dataset": {"md5": "xyz"},
    "outdirr": "x",
}
BAD_CONFIG_LINES = [
    "train: unknown key(s) lrr; allowed keys: epochs, batch_size, lr",
    "runs.x.model: 'alexnet' is not allowed; allowed values: paper, paper-lrn, torchvision",
    "train.lr: -0.01 is less than or equal to the minimum of 0",
    "train.epochs: 0 is less than the minimum of 1",
    "dataset.md5: 'xyz' does not match",
    "unknown key(s) outdirr",
    "train.input_norm: 'imagenet' is not allowed; allowed values: half, paper",
    "train.bias_decay: 'off' is not of type 'boolean'",
]


def test_bad_config_stops_before_any_job_with_each_key_named(tmp_path):
    workdir = make_workdir(tmp_path, BAD_CONFIG)
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    lines = (result.stderr + result.stdout).splitlines()
    for expected in BAD_CONFIG_LINES:  # one line per problem
        assert [line for line in lines if expected in line], expected
    assert "Traceback" not in result.stderr  # no Python frames
    assert not (workdir / "results").exists()
