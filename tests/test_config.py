"""The config: one schema for every key, runs expanded with seeds and sweeps, problems refused
before any job, and a job graph built without torch."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import yaml
from workflow_helpers import REPO, make_workdir, planned_jobs, snakemake

from alexnet_cifar import cli, config, stand_in
from alexnet_cifar.config import (
    RunSettings,
    config_problems,
    expand_runs,
    load_config,
    numbers_from_text,
    reserved_run_names,
    resolve_run,
)
from alexnet_cifar.models import MODELS


def full(overrides: dict) -> dict:
    """``overrides`` merged over config/config.yaml, as Snakemake merges a --configfile."""
    return config.merge(load_config(REPO / "config/config.yaml"), overrides)


# -- one source of truth --------------------------------------------------------------------------

def test_the_schema_lists_the_registry_s_models_and_the_settings_fields(monkeypatch):
    assert config.model_names() == [*MODELS, stand_in.NAME]  # the suite's stand-in, switched on (conftest.py)
    monkeypatch.delenv(stand_in.SWITCH)
    assert config.model_names() == list(MODELS)
    assert [f.name for f in dataclasses.fields(RunSettings)] == ["model", *config.train_schema()]


def test_defaults_come_from_the_schema():
    schema = yaml.safe_load(config.SCHEMA.read_text())
    defaults = {k: v["default"] for k, v in schema["properties"]["train"]["allOf"][1]["properties"].items()
                if "default" in v}
    settings = RunSettings.from_mapping({"model": "paper"})
    assert {k: getattr(settings, k) for k in defaults} == defaults
    assert (settings.epochs, settings.batch_size, settings.lr, settings.momentum) == (50, 4, 0.001, 0.9)


def test_the_cli_options_are_made_from_the_schema():
    """Every train setting is an option with the schema's default; booleans stay switches."""
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", "d.npz", "--model", "paper", "--out", "o"])
    assert {key: getattr(args, key) for key in config.train_schema()} == {
        key: spec["default"] for key, spec in config.train_schema().items()}
    args = parser.parse_args(["train", "--data", "d", "--model", "paper", "--out", "o", "--deterministic",
                              "--no-cuda-graph", "--fused-sgd", "--batch-size", "8", "--lr", "0.01"])
    assert ((args.deterministic, args.cuda_graph, args.fused_sgd, args.batch_size, args.lr)
            == (True, False, True, 8, 0.01))


def test_recipe_settings_are_options_too_with_lists_written_with_commas():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", "d", "--model", "paper", "--out", "o", "--lr-schedule", "step",
                              "--lr-milestones", "30,60", "--epochs", "90", "--augment-flip",
                              "--augment-translate", "4", "--augment-pca-colour", "1e-1", "--init", "paper",
                              "--validation-images", "500"])
    settings = cli.settings_from(args)
    assert (settings.lr_schedule, settings.lr_milestones, settings.augment_flip, settings.augment_translate,
            settings.augment_pca_colour, settings.init, settings.validation_images) == (
        "step", (30, 60), True, 4, 0.1, "paper", 500)
    assert settings.result_params()["lr_milestones"] == [30, 60]  # plain JSON in params and fingerprints
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--model", "paper", "--out", "o", "--lr-milestones", "30;60"])
    args = parser.parse_args(["train", "--data", "d", "--model", "paper", "--out", "o", "--lr-schedule", "plateau"])
    with pytest.raises(config.SettingsError, match="--lr-schedule: plateau lowers the lr when the validation"):
        cli.settings_from(args)


def test_config_readme_has_a_row_for_every_key():
    rows = [line.split("|")[1].strip().strip("`") for line in (REPO / "config/README.md").read_text().splitlines()
            if line.startswith("| `")]
    schema = config.schema()["properties"]
    keys = [k for k in schema if k not in ("dataset", "train")]
    keys += [f"dataset.{k}" for k in schema["dataset"]["properties"]]
    keys += [f"train.{k}" for k in [*config.train_schema(), "seeds"]]
    assert sorted(rows) == sorted(keys)


def test_only_result_settings_change_the_fingerprint():
    base = RunSettings.from_mapping({"model": "paper"})
    assert "device" not in base.result_params() and "lr" in base.result_params()
    same = RunSettings.from_mapping({"model": "paper", "device": "cpu", "cuda_graph": False, "fused_sgd": True,
                                     "eval_batch_size": 7})
    assert base.fingerprint("m") == same.fingerprint("m")
    assert base.fingerprint("m") != RunSettings.from_mapping({"model": "paper", "lr": 0.01}).fingerprint("m")
    assert base.fingerprint("m") != base.fingerprint("other data")


def test_the_paper_s_input_and_weight_decay_are_options():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", "d", "--model", "paper", "--out", "o", "--input-norm", "paper",
                              "--no-bias-decay"])
    settings = cli.settings_from(args)
    assert (settings.input_norm, settings.bias_decay) == ("paper", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--model", "paper", "--out", "o", "--input-norm", "imagenet"])


# -- runs, seeds and sweeps -------------------------------------------------------------------------

def test_a_config_without_seeds_or_sweep_keeps_its_run_names_and_settings():
    cfg = {"train": {"epochs": 3, "lr": 0.01},
           "runs": {"a": {"model": "torchvision", "lr": 0.1}, "b": {"model": "paper"}}}
    runs = expand_runs(cfg)
    assert list(runs) == ["a", "b"] and [r.setting for r in runs.values()] == ["a", "b"]
    settings = resolve_run(cfg, "a")
    assert ((settings.model, settings.epochs, settings.lr, settings.batch_size, settings.seed)
            == ("torchvision", 3, 0.1, 4, 0))
    with pytest.raises(ValueError, match="unknown run 'c'"):
        resolve_run(cfg, "c")


def test_seeds_cross_the_sweep_in_the_order_given():
    cfg = {"train": {"seeds": 2}, "sweep": {"lr": [0.0003, 0.001], "momentum": [0.5]},
           "runs": {"paper": {"model": "paper"}, "tv": {"model": "torchvision", "seeds": [7]},
                    "one": {"model": "paper", "seed": 3}}}
    runs = expand_runs(cfg)
    assert list(runs) == [
        "paper-lr0.0003-momentum0.5-seed0", "paper-lr0.0003-momentum0.5-seed1",
        "paper-lr0.001-momentum0.5-seed0", "paper-lr0.001-momentum0.5-seed1",
        "tv-lr0.0003-momentum0.5-seed7", "tv-lr0.001-momentum0.5-seed7",
        "one-lr0.0003-momentum0.5", "one-lr0.001-momentum0.5"]  # its own seed opts out of train: seeds
    run = runs["paper-lr0.001-momentum0.5-seed1"]
    assert run.setting == "paper-lr0.001-momentum0.5" and run.swept == {"lr": 0.001, "momentum": 0.5}
    assert (run.settings.lr, run.settings.momentum, run.settings.seed) == (0.001, 0.5, 1)
    assert runs["one-lr0.001-momentum0.5"].table_row()["seed"] == 3


@pytest.mark.parametrize("change, expected", [
    ({"sweep": {"lrr": [0.1]}}, "sweep.lrr: unknown setting"),
    ({"sweep": {"device": ["cpu", "cuda"]}}, "sweep.device: does not define a result"),
    ({"sweep": {"cuda_graph": [True, False]}}, "sweep.cuda_graph: does not define a result"),
    ({"sweep": {"seed": [0, 1]}}, "sweep.seed: seeds are not swept; give seeds:"),
    ({"sweep": {"lr": [0.01, -0.1]}}, "sweep.lr: -0.1 is less than or equal to the minimum of 0"),
    ({"sweep": {"momentum": [0.9, 1.0]}}, "sweep.momentum: 1.0 is greater than or equal to the maximum of 1"),
    ({"train": {"seed": 1, "seeds": 3}}, "train: has both seed and seeds"),
    ({"runs": {"paper": {"model": "paper", "seed": 1, "seeds": [1, 2]}}}, "runs.paper: has both seed and seeds"),
    ({"runs": {"x": {"model": "paper", "seeds": [1]}, "x-seed1": {"model": "paper"}}},
     "runs.x-seed1: expands to run 'x-seed1', as runs.x does"),
    ({"train": {"seeds": [1, 1]}}, "train.seeds: [1, 1] is not allowed: Replicates"),
    ({"train": {"seeds": 0}}, "train.seeds: 0 is not allowed: Replicates, one training each"),
    ({"sweep": {"model": ["paper"]}}, "sweep.model: a run entry names its model"),
    ({"train": {"momentum": 1.5}}, "train.momentum: 1.5 is greater than or equal to the maximum of 1"),
    ({"train": {"num_classes": 5}}, "train.num_classes: 5 is less than the minimum of 10"),
    ({"train": {"seed": -1}}, "train.seed: -1 is less than the minimum of 0"),
    # training recipes
    ({"sweep": {"lr_schedule": ["step", "cosine"]}}, "sweep.lr_schedule: only numbers and true/false are swept"),
    ({"sweep": {"init": ["paper"]}}, "sweep.init: only numbers and true/false are swept"),
    ({"sweep": {"lr_milestones": [[1, 2]]}}, "sweep.lr_milestones: only numbers and true/false are swept"),
    ({"train": {"lr_schedule": "plateau"}},
     "runs.paper.lr_schedule: plateau lowers the lr when the validation accuracy stalls, but validation_images is 0"),
    ({"train": {"lr_schedule": "step", "lr_milestones": [30, 20]}}, "runs.paper.lr_milestones: [30, 20] must increase"),
    ({"train": {"lr_schedule": "step", "lr_milestones": [30, 30]}}, "runs.paper.lr_milestones: [30, 30] must increase"),
    ({"train": {"lr_schedule": "step", "lr_milestones": [30, 60]}},
     "runs.paper.lr_milestones: 60 is beyond epochs (50)"),
    ({"train": {"lr_schedule": "step", "lr_milestones": [0]}},
     "train.lr_milestones.0: 0 is less than the minimum of 1"),
    ({"train": {"lr_gamma": 0.5}}, "runs.paper.lr_gamma: set (0.5) for lr_schedule constant, but it is a parameter "
                                   "of lr_schedule step; remove it, or set lr_schedule: step"),
    ({"train": {"lr_schedule": "cosine", "lr_patience": 3}},
     "runs.paper.lr_patience: set (3) for lr_schedule cosine, but it is a parameter of lr_schedule plateau"),
    ({"sweep": {"lr_gamma": [0.5]}}, "runs.paper.lr_gamma: set (0.5) for lr_schedule constant"),
    ({"train": {"lr_schedule": "cosine", "warmup_epochs": 50}},
     "runs.paper.warmup_epochs: 50 leaves no epoch of the cosine decay in 50 epochs"),
    ({"train": {"nesterov": True, "momentum": 0.0}}, "runs.paper.nesterov: Nesterov momentum needs momentum > 0"),
    ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing: 1.0 is greater than or equal to the maximum of 1"),
    ({"train": {"augment_translate": 9}}, "train.augment_translate: 9 is greater than the maximum of 8"),
    ({"train": {"augment_pca_colour": -0.1}}, "train.augment_pca_colour: -0.1 is less than the minimum of 0"),
    ({"train": {"init": "xavier"}}, "train.init: 'xavier' is not allowed; allowed values: default, paper"),
    ({"train": {"lr_schedule": "linear"}},
     "train.lr_schedule: 'linear' is not allowed; allowed values: constant, step, plateau, cosine"),
    ({"train": {"validation_images": -1}}, "train.validation_images: -1 is less than the minimum of 0"),
    ({"train": {"input_norm": "imagenet"}}, "train.input_norm: 'imagenet' is not allowed; allowed values: half, paper"),
    ({"runs": {"paper": {"model": "paper", "bias_decay": "no decay"}}},
     "runs.paper.bias_decay: 'no decay' is not of type 'boolean'"),
    ({"train": {"bias_decay": 0}}, "train.bias_decay: 0 is not of type 'boolean'"),
    ({"train": {"lr_schedule": "plateau", "validation_images": 10, "lr_patience": 0}},
     "train.lr_patience: 0 is less than the minimum of 1"),
])
def test_config_problems_name_the_key(change, expected):
    problems = config_problems(full(change))
    assert any(expected in problem for problem in problems), problems


def test_the_ladder_s_rungs_are_the_write_up_s_protocol_the_paper_s_recipe_and_a_modern_one():
    runs = expand_runs(load_config(REPO / "config/config.yaml", REPO / "config/ladder.yaml"))
    settings = {name: run.settings for name, run in runs.items()}
    for rung_0 in ("paper", "torchvision"):  # the write-up's protocol, untouched
        assert settings[rung_0] == RunSettings(model=rung_0)
    paper_recipe = settings["paper-recipe-seed2"]
    assert (paper_recipe.model, paper_recipe.init, paper_recipe.batch_size, paper_recipe.lr, paper_recipe.weight_decay,
            paper_recipe.lr_schedule, paper_recipe.lr_max_drops, paper_recipe.augment_pca_colour,
            paper_recipe.augment_translate, paper_recipe.validation_images, paper_recipe.tta_flip,
            paper_recipe.epochs) == ("paper-lrn", "paper", 128, 0.01, 0.0005, "plateau", 3, 0.1, 4, 5000, True, 90)
    assert (paper_recipe.input_norm, paper_recipe.bias_decay) == ("paper", False)  # the paper's input and decay
    nolrn = settings["paper-recipe-nolrn-seed0"]
    assert nolrn.model == "paper" and dataclasses.replace(nolrn, model="paper-lrn") == settings["paper-recipe-seed0"]
    modern = settings["modern-paper-seed1"]
    assert (modern.model, modern.init, modern.nesterov, modern.label_smoothing, modern.lr_schedule, modern.bf16,
            modern.channels_last, modern.epochs, modern.augment_pca_colour, modern.input_norm, modern.bias_decay) == (
        "paper", "default", True, 0.1, "cosine", True, True, 30, 0.0, "half", True)
    assert dataclasses.replace(settings["modern-torchvision-seed1"], model="paper") == modern
    assert {run.settings.seed for name, run in runs.items() if name.startswith("modern-paper")} == {0, 1, 2}


def test_numbers_and_switches_of_the_recipes_can_be_swept():
    cfg = full({"sweep": {"augment_translate": [0, 4], "tta_flip": [True, False], "label_smoothing": [0.0, 0.1]}})
    assert config_problems(config.with_defaults(cfg)) == []
    runs = expand_runs(cfg)
    assert "paper-augment_translate4-tta_fliptrue-label_smoothing0.1" in runs and len(runs) == 16


def test_a_problem_is_named_once():
    problems = config_problems(full({"runs": {"x": None}}))
    assert problems == ["runs.x: None is not of type 'object'"]


def test_the_shipped_configs_are_valid_and_plan_their_trainings():
    counts = {}
    for name in ("config.yaml", "as-stated.yaml", "quick.yaml", "seeds.yaml", "lr-sweep.yaml", "ladder.yaml"):
        cfg = config.with_defaults(load_config(REPO / "config/config.yaml", REPO / "config" / name))
        assert config_problems(cfg) == [], name
        counts[name] = len(expand_runs(cfg))
    assert counts == {"config.yaml": 2, "as-stated.yaml": 2, "quick.yaml": 2, "seeds.yaml": 15, "lr-sweep.yaml": 16,
                      "ladder.yaml": 14}
    seeds = expand_runs(load_config(REPO / "config/config.yaml", REPO / "config/seeds.yaml"))
    assert {run.settings.model for run in seeds.values()} == {"paper", "paper-lrn", "torchvision"}


@pytest.mark.parametrize("configfile, trainings", [("config/seeds.yaml", 15), ("config/lr-sweep.yaml", 16),
                                                   ("config/ladder.yaml", 14)])
def test_dry_runs_of_the_shipped_configs_plan_their_trainings(configfile, trainings, tmp_path):
    # a folder of its own, as a user's: never this checkout, which another test worker may be using
    workdir = make_workdir(tmp_path, {})
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=configfile).stdout)
    assert jobs["train"] == trainings and jobs["replicates_figure"] == 1
    assert jobs.get("sweep_figure", 0) == (1 if "sweep" in configfile else 0)


def test_a_bad_sweep_key_stops_the_workflow_with_one_line_and_no_traceback(tmp_path):
    workdir = make_workdir(tmp_path, {"sweep": {"device": ["cpu", "cuda"]}})
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    assert "sweep.device: does not define a result" in result.stderr
    assert "Traceback" not in result.stderr and "File \"" not in result.stderr
    assert not (workdir / "results").exists()


def test_building_the_job_graph_never_imports_torch(tmp_path):
    """On a cluster's login node every dry run would pay for it: a torch that cannot be imported
    must not stop ``snakemake -n``."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch imported while building the job graph')\n")
    (tmp_path / "fake" / "torchvision").mkdir()
    (tmp_path / "fake" / "torchvision" / "__init__.py").write_text("raise ImportError('torchvision imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    workdir = make_workdir(tmp_path / "work", {})
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n",
           "--configfile=config/lr-sweep.yaml"]
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # and the fake does stop anything that does import torch
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert "torch imported while building the job graph" in check.stderr


# -- numbers written as text, run names the workflow keeps for itself -----------------------------

@pytest.mark.parametrize("text, number", [("1e-3", 0.001), ("5E-4", 0.0005), ("+2.5e+1", 25.0), (".5", 0.5),
                                          ("0.01", 0.01), ("3", 3.0), ("1.e-2", 0.01)])
def test_a_number_written_as_text_is_that_number_in_train_runs_and_sweeps(text, number):
    """YAML 1.1 reads 1e-3 as text: train:, a run entry and a sweep list all take it as the number,
    so run names, params and fingerprints are those of the number."""
    def cfg(value):
        return full({"train": {"weight_decay": value}, "runs": {"paper": {"model": "paper", "lr": value}},
                     "sweep": {"momentum": [value, 0.25]}})

    written, meant = numbers_from_text(cfg(text)), cfg(number)
    if number < 1:
        assert config_problems(config.with_defaults(written)) == []
    runs, expected = expand_runs(written), expand_runs(meant)
    assert list(runs) == list(expected) and f"paper-momentum{number:g}" in runs
    for name, run in runs.items():
        settings = run.settings
        assert settings.result_params() == expected[name].settings.result_params()
        assert settings.fingerprint("m") == expected[name].settings.fingerprint("m")
        assert type(settings.weight_decay) is float and type(settings.lr) is float


@pytest.mark.parametrize("text", ["abc", "nan", "inf", "1_000", "0x10", "1e-3x", "1e", "", "1e-3 lr"])
def test_a_text_that_is_not_a_plain_number_is_refused_naming_the_key_and_the_value(text):
    for where, change in (("train.lr", {"train": {"lr": text}}),
                          ("runs.paper.lr", {"runs": {"paper": {"model": "paper", "lr": text}}}),
                          ("sweep.lr", {"sweep": {"lr": [0.001, text]}})):
        problems = config_problems(config.with_defaults(numbers_from_text(full(change))))
        assert f"{where}: {text!r} is not of type 'number'" in problems, problems


def test_load_config_reads_1e_3_as_a_number(tmp_path):
    (tmp_path / "lr.yaml").write_text("train:\n  lr: 1e-3\nsweep:\n  weight_decay: [5e-4, 0.0]\n")
    assert yaml.safe_load((tmp_path / "lr.yaml").read_text())["train"]["lr"] == "1e-3"  # what YAML 1.1 reads
    cfg = load_config(REPO / "config/config.yaml", tmp_path / "lr.yaml")
    assert cfg["train"]["lr"] == 0.001 and cfg["sweep"]["weight_decay"] == [0.0005, 0.0]


def test_snakemake_reads_1e_3_from_a_config_file_and_from_the_command_line(tmp_path):
    workdir = make_workdir(tmp_path, {})
    (workdir / "tiny.yaml").write_text("train:\n  lr: 1e-3\nsweep:\n  weight_decay: [5e-4]\n")
    result = snakemake(workdir, "-n", "--config", "train={lr: 3e-3, momentum: 9e-1}")
    assert planned_jobs(result.stdout)["train"] == 2
    assert "run=paper-weight_decay0.0005" in result.stdout and "run=torchvision-weight_decay0.0005" in result.stdout
    bad = snakemake(workdir, "-n", "--config", "train={lr: 1e-3x}", check=False)
    assert bad.returncode != 0 and "train.lr: '1e-3x' is not of type 'number'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("name", reserved_run_names())
def test_a_run_named_like_one_of_the_workflow_s_own_files_is_refused_in_one_line(name):
    problems = config_problems(full({"runs": {name: {"model": "paper"}}}))
    (problem,) = [p for p in problems if "reserved run names" in p]
    assert problem.startswith(f"runs.{name}: its run {name!r} would be named like the workflow's own ")
    assert f"reserved run names: {', '.join(reserved_run_names())}" in problem and "\n" not in problem


def test_the_expanded_run_names_are_checked_not_the_entry_names():
    """An entry named summary with seeds or a sweep trains summary-seed0 or summary-lr0.01: no clash."""
    assert config_problems(full({"runs": {"summary": {"model": "paper", "seeds": 2}}})) == []
    assert config_problems(full({"runs": {"summary": {"model": "paper"}}, "sweep": {"lr": [0.01]}})) == []
    assert config_problems(full({"runs": {"summary": {"model": "paper"}}})) != []
    assert set(reserved_run_names()) == {"summary", "replicates", "settings", "comparison", "sweep",
                                         "classes_by_setting"}


def test_the_workflow_stops_on_a_reserved_run_name_before_any_job(tmp_path):
    workdir = make_workdir(tmp_path, {"runs": {"comparison": {"model": "paper"}}})
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0 and "runs.comparison: its run 'comparison' would be named like" in result.stderr
    assert "AmbiguousRuleException" not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_the_run_wildcard_takes_one_path_segment_but_no_workflow_file():
    """workflow/rules/common.smk's constraint: a run's files, not the workflow's own beside them."""
    import re

    pattern = re.compile(f"metrics/(?P<run>{config.run_wildcard_pattern()})\\.csv")
    assert pattern.fullmatch("metrics/tv-lr0.001-seed1.csv")["run"] == "tv-lr0.001-seed1"
    assert pattern.fullmatch("metrics/summary-2.csv")["run"] == "summary-2"
    for workflow_file in ("metrics/summary.csv", "metrics/settings.csv", "metrics/classes_by_setting.csv",
                          "metrics/classes/x.csv"):
        assert not pattern.fullmatch(workflow_file), workflow_file
