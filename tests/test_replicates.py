"""Runs taken together across seeds: replicates.csv, settings.csv, the seed sections of summary.md,
and the replicates and sweep figures. Small frames built here; expected values computed directly."""
from __future__ import annotations

import statistics

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from workflow_helpers import REPO

from alexnet_cifar import metrics, plots, replicates, stages

REFERENCE = REPO / "config/reference/seed_reported_accuracy.csv"


def history(accs, diverged_epoch=None):
    """A history with these test accuracies; the diverged epoch (if any) has null losses and is the last."""
    return [{"epoch": i, "train_loss": None if i == diverged_epoch else 1.0 / i, "train_acc": acc,
             "test_loss": None if i == diverged_epoch else 1.0, "test_acc": acc, "lr": 0.001, "seconds": 2.0,
             "diverged_at_step": 17 if i == diverged_epoch else None} for i, acc in enumerate(accs, 1)]


def validated(records, val_accs):
    """``records`` with validation: these validation accuracies (and a loss) per epoch."""
    return [{**r, "val_acc": v, "val_loss": None if r["diverged_at_step"] else 1.5}
            for r, v in zip(records, val_accs, strict=True)]


def entry(setting, seed, model="paper", **swept):
    return {"setting": setting, "seed": seed, "model": model, "swept": swept}


def write_runs(tmp_path, histories):
    """Each run's per-epoch CSV and facts JSON, as the metrics rule writes them: (csv paths, facts paths)."""
    csv_paths, facts_paths = {}, {}
    for run, records in histories.items():
        csv_paths[run], facts_paths[run] = tmp_path / f"{run}.csv", tmp_path / f"{run}.facts.json"
        metrics.write_csv(metrics.history_frame(records), csv_paths[run])
        metrics.write_json(metrics.run_facts(records), facts_paths[run])
    return csv_paths, facts_paths


def run_summary(tmp_path, runs, histories, swept_keys=(), reference=REFERENCE):
    """Run the summary stage; return the paths of its four outputs."""
    csv_paths, facts_paths = write_runs(tmp_path, histories)
    names = ("summary.csv", "summary.md", "replicates.csv", "settings.csv")
    out = {name: tmp_path / "metrics" / name for name in names}
    stages.summary(runs=runs, facts=facts_paths, csv=csv_paths, reference=reference, swept_keys=list(swept_keys),
                   summary_csv=out["summary.csv"], summary_md=out["summary.md"], replicates_csv=out["replicates.csv"],
                   settings_csv=out["settings.csv"])
    return out


def write_reference(path, accs):
    path.write_text("epoch,test_acc\n" + "".join(f"{i},{acc}\n" for i, acc in enumerate(accs, 1)))
    return path


# -- aggregates against a direct computation ----------------------------------------------------------

def test_the_test_accuracy_at_the_best_validation_epoch_is_chosen_without_the_test_set(tmp_path):
    """The first epoch of best validation accuracy, among those before a divergence; its test
    accuracy is what the run reaches when the epoch is chosen on validation images."""
    runs = {"r-seed0": entry("r", 0), "r-seed1": entry("r", 1), "r-seed2": entry("r", 2), "plain": entry("plain", 0)}
    histories = {
        "r-seed0": validated(history([50.0, 70.0, 60.0, 65.0]), [40.0, 55.0, 58.0, 58.0]),  # val best at 3 (first)
        "r-seed1": validated(history([52.0, 66.0, 64.0]), [61.0, 50.0, 61.0]),  # a tie: the first, epoch 1
        "r-seed2": validated(history([30.0, 40.0, 10.0], diverged_epoch=3), [20.0, 30.0, 99.0]),  # 3 diverged
        "plain": history([45.0, 47.0]),
    }
    facts = {run: metrics.run_facts(records) for run, records in histories.items()}
    assert [(facts[r]["best_val_epoch"], facts[r]["test_at_best_val"]) for r in runs] == [
        (3, 60.0), (1, 52.0), (2, 40.0), (None, None)]
    assert (facts["r-seed0"]["peak_test_acc"], facts["r-seed0"]["peak_epoch"]) == (70.0, 2)  # the test-picked peak
    out = run_summary(tmp_path, runs, histories)
    summary = pd.read_csv(out["summary.csv"]).set_index("run")
    assert list(summary["test_at_best_val"].fillna(-1)) == [60.0, 52.0, 40.0, -1]
    assert list(summary["best_val_epoch"].fillna(-1)) == [3, 1, 2, -1]
    settings = pd.read_csv(out["settings.csv"]).set_index("setting")
    assert settings.loc["r", "test_at_best_val_mean"] == pytest.approx(statistics.mean([60.0, 52.0, 40.0]))
    assert settings.loc["r", "test_at_best_val_sd"] == pytest.approx(statistics.stdev([60.0, 52.0, 40.0]))
    assert settings.loc["plain", ["test_at_best_val_mean", "test_at_best_val_sd"]].isna().all()
    text = out["summary.md"].read_text()
    assert "| r-seed0 | 70.00 | 2 | 60.00 | 3 | 65.00 |" in text and "| plain | 47.00 | 2 | – | – | 47.00 |" in text
    assert ("- Test accuracy at the epoch of best validation accuracy (chosen without the test set): 50.67 % "
            "(sd 10.07) over 3 seeds") in text

def test_replicates_and_settings_equal_a_direct_computation(tmp_path):
    rng = np.random.default_rng(7)
    curves = {f"s-seed{seed}": [round(float(a), 2) for a in rng.uniform(20, 90, size=6)] for seed in range(3)}
    runs = {run: entry("s", seed) for seed, run in enumerate(curves)}
    out = run_summary(tmp_path, runs, {run: history(accs) for run, accs in curves.items()})

    table = pd.read_csv(out["replicates.csv"])
    assert list(table.columns) == ["setting", "model", "epoch", "n", "mean", "sd", "min", "max"]
    assert list(table["epoch"]) == [1, 2, 3, 4, 5, 6] and set(table["setting"]) == {"s"}
    for row in table.itertuples(index=False):
        values = [accs[row.epoch - 1] for accs in curves.values()]
        assert row.n == 3
        assert row.mean == pytest.approx(statistics.mean(values), abs=1e-9)
        assert row.sd == pytest.approx(statistics.stdev(values), abs=1e-9)  # sample sd, ddof=1
        assert (row.min, row.max) == (min(values), max(values))

    settings = pd.read_csv(out["settings.csv"])
    assert list(settings.columns) == ["setting", "model"] + replicates.SETTINGS_STATS
    row = settings.iloc[0]
    peaks = [max(accs) for accs in curves.values()]
    peak_epochs = [accs.index(max(accs)) + 1 for accs in curves.values()]
    finals = [accs[-1] for accs in curves.values()]
    assert (row["setting"], row["model"], row["n_seeds"], row["n_diverged"]) == ("s", "paper", 3, 0)
    assert row["peak_mean"] == pytest.approx(statistics.mean(peaks), abs=1e-9)
    assert row["peak_sd"] == pytest.approx(statistics.stdev(peaks), abs=1e-9)
    assert (row["peak_min"], row["peak_max"]) == (min(peaks), max(peaks))
    assert row["peak_epoch_median"] == statistics.median(peak_epochs)
    assert row["final_mean"] == pytest.approx(statistics.mean(finals), abs=1e-9)
    assert row["final_sd"] == pytest.approx(statistics.stdev(finals), abs=1e-9)


def test_values_are_written_unrounded(tmp_path):
    runs = {"s-seed0": entry("s", 0), "s-seed1": entry("s", 1), "s-seed2": entry("s", 2)}
    out = run_summary(tmp_path, runs, {"s-seed0": history([10.0]), "s-seed1": history([20.0]),
                                       "s-seed2": history([20.0])})
    mean = pd.read_csv(out["replicates.csv"])["mean"].iloc[0]
    assert mean == pytest.approx(50 / 3, abs=1e-12) and mean != round(mean, 2)


# -- a diverged seed ----------------------------------------------------------------------------------

def test_a_diverged_seed_counts_only_for_the_epochs_before_it_diverged(tmp_path):
    runs = {f"s-seed{seed}": entry("s", seed) for seed in range(3)}
    histories = {"s-seed0": history([50.0, 60.0, 70.0, 72.0]),
                 "s-seed1": history([40.0, 64.0, 68.0, 66.0]),
                 "s-seed2": history([45.0, 62.0, 10.0], diverged_epoch=3)}
    out = run_summary(tmp_path, runs, histories)

    table = pd.read_csv(out["replicates.csv"]).set_index("epoch")
    assert list(table["n"]) == [3, 3, 2, 2]
    assert table.loc[2, "mean"] == pytest.approx(statistics.mean([60.0, 64.0, 62.0]))
    assert table.loc[3, "mean"] == pytest.approx(69.0) and table.loc[3, "min"] == 68.0  # not the diverged 10.0
    assert table.loc[3, "sd"] == pytest.approx(statistics.stdev([70.0, 68.0]))

    row = pd.read_csv(out["settings.csv"]).iloc[0]
    assert (row["n_seeds"], row["n_diverged"]) == (3, 1)
    assert row["peak_mean"] == pytest.approx(statistics.mean([72.0, 68.0, 62.0]))  # its peak counts
    assert row["peak_min"] == 62.0
    assert row["final_mean"] == pytest.approx(69.0)  # (72 + 66) / 2: the diverged run is left out
    assert row["final_sd"] == pytest.approx(statistics.stdev([72.0, 66.0]))

    text = out["summary.md"].read_text()
    assert "s-seed2 in epoch 3" in text


def test_epochs_with_no_run_left_are_left_out_and_final_is_empty_when_every_run_diverged(tmp_path):
    runs = {"s-seed0": entry("s", 0), "s-seed1": entry("s", 1), "t": entry("t", 0)}
    histories = {"s-seed0": history([30.0, 10.0], diverged_epoch=2), "s-seed1": history([35.0, 10.0], diverged_epoch=2),
                 "t": history([10.0], diverged_epoch=1)}
    out = run_summary(tmp_path, runs, histories)
    table = pd.read_csv(out["replicates.csv"])
    # no epoch 2, no row for t
    assert list(zip(table["setting"], table["epoch"], table["n"], strict=True)) == [("s", 1, 2)]
    lines = out["settings.csv"].read_text().splitlines()
    assert lines[1].endswith(",,") and lines[2].endswith(",,")  # final_mean, final_sd empty
    assert "no seed finished without diverging" in out["summary.md"].read_text()


# -- one seed, no sweep -------------------------------------------------------------------------------

def test_one_seed_leaves_sd_empty_and_says_dash_in_summary_md(tmp_path):
    runs = {"paper": entry("paper", 0), "torchvision": entry("torchvision", 0, model="torchvision")}
    out = run_summary(tmp_path, runs, {"paper": history([50.0, 60.0]), "torchvision": history([40.0, 55.0])})

    replicates_lines = out["replicates.csv"].read_text().splitlines()
    assert replicates_lines[0] == "setting,model,epoch,n,mean,sd,min,max"
    assert replicates_lines[1] == "paper,paper,1,1,50.0,,50.0,50.0"  # sd empty where n = 1

    settings = pd.read_csv(out["settings.csv"], keep_default_na=False, dtype=str)
    assert list(settings.columns) == ["setting", "model"] + replicates.SETTINGS_STATS  # no swept-key column
    assert list(settings["setting"]) == ["paper", "torchvision"]
    assert list(settings["peak_sd"]) == ["", ""] and list(settings["final_sd"]) == ["", ""]
    assert list(settings["n_seeds"]) == ["1", "1"]

    text = out["summary.md"].read_text()
    assert text.startswith("# Test accuracy of every run against the reported curve")  # the existing table stays
    assert "| reported | 81.47 | 14 | – | – | 65.35 |" in text
    assert "picks its epoch on the test set itself" in text and "test_at_best_val picks the epoch by the val" in text
    assert text.count("**–** (one seed: no spread to measure by)") == 2
    assert "### paper (model paper; 1 seed)" in text and "### torchvision (model torchvision; 1 seed)" in text


def test_summary_csv_names_each_runs_setting_and_seed(tmp_path):
    runs = {"paper-seed0": entry("paper", 0), "paper-seed1": entry("paper", 1)}
    out = run_summary(tmp_path, runs, {"paper-seed0": history([50.0]), "paper-seed1": history([52.0], 1)})
    lines = out["summary.csv"].read_text().splitlines()
    assert lines[0].startswith("run,setting,seed,model,peak_test_acc,")
    assert lines[0] == ",".join(metrics.SUMMARY_COLUMNS)
    assert lines[1].startswith("paper-seed0,paper,0,paper,50.0,1,") and lines[1].endswith(",")
    # diverged in its only epoch: no peak (empty cells), and diverged_at_epoch 1
    assert lines[2].startswith("paper-seed1,paper,1,paper,,,,,52.0,1,") and lines[2].endswith(",1")


# -- summary.md on a case whose answers are known ---------------------------------------------------

def test_summary_md_places_the_reported_curve_in_the_seed_distribution(tmp_path):
    # reported: peak 90 at epoch 3, ends at 70 (a fall of 20); 4 epochs
    reference = write_reference(tmp_path / "ref.csv", [50.0, 70.0, 90.0, 70.0])
    # seed peaks 84, 86, 88: mean 86, sd 2, so the reported 90 is exactly +2 sd
    curves = {"s-seed0": [52.0, 60.0, 84.0, 70.0, 74.0],   # falls 84 -> 74: exactly 10 points, counts
              "s-seed1": [48.0, 75.0, 86.0, 80.0, 80.0],   # falls 6
              "s-seed2": [55.0, 72.0, 88.0, 79.0, 79.0]}   # falls 9
    # reported within min-max at epoch 1 (48-55 ∋ 50), 2 (60-75 ∋ 70), 4 (70-80 ∋ 70, the bound), not 3 (84-88)
    runs = {run: entry("s", seed, lr=0.01) for seed, run in enumerate(curves)}
    out = run_summary(tmp_path, runs, {run: history(accs) for run, accs in curves.items()}, ["lr"], reference)

    section = out["summary.md"].read_text().split("### s ")[1]
    assert section.startswith("(model paper, lr 0.01; 3 seeds)")
    peak, within, fall = section.splitlines()[2:5]
    assert "reported 90.00 %" in peak and "**+2.0 sd** from the seeds' mean" in peak
    assert "at 3 of 4 epochs (75 %), the epochs both have" in within
    assert "as in the reported run (-20.00): yes, 1 of 3: s-seed0 (84.00 % at epoch 3 -> 74.00 %, -10.00)" in fall
    assert "s-seed1" not in fall and "s-seed2" not in fall


def test_summary_md_says_dash_when_the_seeds_peaks_are_equal_and_no_when_none_falls(tmp_path):
    runs = {"s-seed0": entry("s", 0), "s-seed1": entry("s", 1)}
    out = run_summary(tmp_path, runs, {"s-seed0": history([60.0, 80.0, 75.0]), "s-seed1": history([80.0, 72.5, 71.0])})
    text = out["summary.md"].read_text()
    assert "**–** (the seeds' peaks are all equal)" in text
    assert "no; the largest fall is s-seed1's, 9.00 points" in text


def test_a_fall_of_ten_points_in_decimals_counts():
    table = replicates.run_table({"r": entry("r", 0)})
    facts = {"r": metrics.run_facts(history([64.02, 54.02]))}  # 64.02 - 54.02 is 9.999999999999993 in floats
    stats = replicates.replicate_stats(table, {"r": metrics.history_frame(history([64.02, 54.02]))}, facts)
    text = replicates.seed_distribution_markdown(table, facts, stats, replicates.setting_stats(table, facts),
                                                 metrics.read_reference(REFERENCE))
    assert "yes, 1 of 1: r (64.02 % at epoch 1 -> 54.02 %, -10.00)" in text


def test_distance_in_sd():
    assert replicates.distance_in_sd(90.0, 86.0, 2.0) == "+2.0 sd"
    assert replicates.distance_in_sd(82.4, 86.0, 2.0) == "-1.8 sd"
    assert replicates.distance_in_sd(90.0, 86.0, float("nan")) == "–"
    assert replicates.distance_in_sd(90.0, 86.0, 0.0) == "–"


# -- sweeps ---------------------------------------------------------------------------------------------

SWEEP_RUNS = {f"{model}-lr{lr}-seed{seed}": entry(f"{model}-lr{lr}", seed, model=model, lr=lr, momentum=0.9)
              for model in ("paper", "torchvision") for lr in (0.001, 0.01) for seed in (0, 1)}


def sweep_histories():
    histories = {run: history([40.0 + i, 60.0 + i]) for i, run in enumerate(SWEEP_RUNS)}
    histories["paper-lr0.01-seed1"] = history([30.0, 10.0], diverged_epoch=2)
    return histories


def test_settings_csv_has_one_column_per_swept_key_in_order(tmp_path):
    out = run_summary(tmp_path, SWEEP_RUNS, sweep_histories(), ["lr", "momentum"])
    settings = pd.read_csv(out["settings.csv"])
    assert list(settings.columns) == ["setting", "model", "lr", "momentum"] + replicates.SETTINGS_STATS
    assert list(settings["setting"]) == ["paper-lr0.001", "paper-lr0.01", "torchvision-lr0.001", "torchvision-lr0.01"]
    assert list(settings["lr"]) == [0.001, 0.01, 0.001, 0.01] and set(settings["momentum"]) == {0.9}
    assert list(settings["n_diverged"]) == [0, 1, 0, 0]
    assert settings.loc[1, "final_mean"] == 62.0 and pd.isna(settings.loc[1, "final_sd"])  # one seed left


def test_sweep_figure_draws_lr_on_a_log_axis_and_marks_diverged_runs(tmp_path):
    keys = ["lr", "momentum"]
    table = replicates.run_table(SWEEP_RUNS, keys)
    facts = {run: metrics.run_facts(records) for run, records in sweep_histories().items()}
    fig = plots.sweep_figure(replicates.run_outcomes(table, facts), replicates.setting_stats(table, facts, keys), keys)
    lr_ax, momentum_ax = fig.axes
    assert (lr_ax.get_xscale(), momentum_ax.get_xscale()) == ("log", "linear")
    assert lr_ax.get_xlabel() == "lr (log scale)" and lr_ax.get_ylim() == (0, 100)
    labels = [text.get_text() for text in lr_ax.get_legend().get_texts()]
    assert labels[:2] == ["paper, momentum 0.9", "torchvision, momentum 0.9"]
    assert "diverged run (best epoch before it; at 0 if none)" in labels
    means = {line.get_label(): list(line.get_ydata()) for line in lr_ax.get_lines()}
    # lr 0.01: the diverged seed's peak (30) is in the mean
    assert means["paper, momentum 0.9"] == [pytest.approx(60.5), pytest.approx(statistics.mean([62.0, 30.0]))]
    plt.close(fig)


def test_sweep_and_replicates_figures_are_written(tmp_path):
    csv_paths, facts_paths = write_runs(tmp_path, sweep_histories())
    stages.sweep_figure(runs=SWEEP_RUNS, facts=facts_paths, swept_keys=["lr", "momentum"],
                        png=tmp_path / "figures/sweep.png")
    stages.replicates_figure(runs=SWEEP_RUNS, csv=csv_paths, facts=facts_paths, reference=REFERENCE,
                             png=tmp_path / "figures/replicates.png")
    for name in ("sweep", "replicates"):
        assert (tmp_path / f"figures/{name}.png").read_bytes()[:4] == b"\x89PNG"
    sweep_svg = (tmp_path / "figures/sweep.svg").read_text()
    assert "lr (log scale)" in sweep_svg and "diverged run" in sweep_svg
    replicates_svg = (tmp_path / "figures/replicates.svg").read_text()
    for title in ("paper-lr0.001 (n = 2)", "paper-lr0.01 (n = 2, 1 diverged)", "torchvision-lr0.01 (n = 2)"):
        assert title in replicates_svg


def test_replicates_figure_has_a_band_and_the_reference_dashed_per_setting():
    runs = {"a-seed0": entry("a", 0), "a-seed1": entry("a", 1), "b": entry("b", 0)}
    curves = {"a-seed0": [50.0, 60.0], "a-seed1": [54.0, 70.0], "b": [40.0, 41.0]}
    table = replicates.run_table(runs)
    facts = {run: metrics.run_facts(history(accs)) for run, accs in curves.items()}
    frames = {run: metrics.history_frame(history(accs)) for run, accs in curves.items()}
    stats = replicates.replicate_stats(table, frames, facts)
    fig = plots.replicates_figure(stats, replicates.setting_stats(table, facts), metrics.read_reference(REFERENCE))
    a_ax, b_ax = [ax for ax in fig.axes if ax.get_visible()]
    assert (a_ax.get_title(), b_ax.get_title()) == ("a (n = 2)", "b (n = 1)")
    assert a_ax.get_ylim() == (0, 100) and b_ax.get_ylim() == (0, 100)  # shared
    band = a_ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == 50.0 and band[:, 1].max() == 70.0
    reference_line, mean_line = a_ax.get_lines()
    assert reference_line.get_linestyle() == "--" and len(reference_line.get_xdata()) == 50
    assert list(mean_line.get_ydata()) == [52.0, 65.0]
    plt.close(fig)


# -- the run table and the inputs -------------------------------------------------------------------

def test_a_setting_whose_runs_differ_in_more_than_their_seed_is_refused():
    with pytest.raises(replicates.RunTableError, match="setting s: runs s-seed0, s-seed1 differ in model"):
        replicates.run_table({"s-seed0": entry("s", 0), "s-seed1": entry("s", 1, model="torchvision")})
    with pytest.raises(replicates.RunTableError, match="seed 0 is given to more than one run"):
        replicates.run_table({"s-seed0": entry("s", 0), "s-other": entry("s", 0)})
    with pytest.raises(replicates.RunTableError, match=r"swept values for \[\], but the swept keys are \['lr'\]"):
        replicates.run_table({"s": entry("s", 0)}, ["lr"])


def test_the_summary_refuses_paths_for_other_runs(tmp_path):
    csv_paths, facts_paths = write_runs(tmp_path, {"a": history([50.0])})
    with pytest.raises(ValueError, match=r"facts names runs \['a'\], the run table \['a', 'b'\]"):
        stages.summary(runs={"a": entry("a", 0), "b": entry("b", 0)}, facts=facts_paths, csv=csv_paths,
                       reference=REFERENCE, swept_keys=[], summary_csv=tmp_path / "s.csv", summary_md=tmp_path / "s.md",
                       replicates_csv=tmp_path / "r.csv", settings_csv=tmp_path / "t.csv")
    assert not (tmp_path / "s.csv").exists()


# -- the same stages from the command line --------------------------------------------------------

def test_the_cli_reads_the_runs_from_the_workflow_s_config_files(tmp_path, capsys):
    """``summary``, ``compare``, ``replicates`` and ``sweep`` take the run names, seeds and swept
    values from the config files, as the workflow does, and the metrics from a folder."""
    from alexnet_cifar import cli

    (tmp_path / "c.yaml").write_text("train: {seeds: 2}\nsweep: {lr: [0.001, 0.01]}\n"
                                     "runs: {tv: {model: torchvision}}\n"
                                     f"reference_curve: {REFERENCE}\n")
    (tmp_path / "base.yaml").write_text("runs: {tv: {model: torchvision}}\n")
    names = [f"tv-lr{lr}-seed{seed}" for lr in ("0.001", "0.01") for seed in (0, 1)]
    write_runs(tmp_path / "metrics", {run: history([40.0 + i, 50.0 + i]) for i, run in enumerate(names)})
    configs = ["--config", str(tmp_path / "base.yaml"), "--config", str(tmp_path / "c.yaml")]
    metrics_dir = ["--metrics", str(tmp_path / "metrics")]
    assert cli.main(["summary", *configs, *metrics_dir, "--out", str(tmp_path / "tables")]) == 0
    settings = pd.read_csv(tmp_path / "tables/settings.csv")
    assert list(settings["setting"]) == ["tv-lr0.001", "tv-lr0.01"] and list(settings["lr"]) == [0.001, 0.01]
    assert settings["peak_mean"].tolist() == [50.5, 52.5]
    for command in ("compare", "replicates", "sweep"):
        png = tmp_path / "figures" / f"{command}.png"
        assert cli.main([command, *configs, *metrics_dir, "--out", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.with_suffix(".svg").exists()
    # without a sweep there is no sweep figure: one line, exit status 1
    with pytest.raises(SystemExit) as stopped:
        cli.main(["sweep", "--config", str(tmp_path / "base.yaml"), *metrics_dir, "--out", str(tmp_path / "s.png")])
    assert stopped.value.code == 1 and "the configs set no sweep" in capsys.readouterr().err
