import os
import re

# The Snakefile put src/ on sys.path; the config module reads configs without importing torch.
from alexnet_cifar.config import WORKFLOW_FILES, differences_from_protocol, expand_runs

# Normalised, so that targets spelled like the config (results/x, ./results/x) match the rules.
OUTDIR = os.path.normpath(config["outdir"])
DATADIR = os.path.normpath(config.get("datadir") or os.path.join(OUTDIR, "data"))
RUNS = expand_runs(config)  # run name -> Run: one training each (run entries x sweep x seeds)
SWEPT_KEYS = list(config["sweep"])
ENV = "../../environment.yml"  # relative to the rule files


wildcard_constraints:
    run="|".join(re.escape(run) for run in RUNS),


def result_params(wildcards):
    """What defines a run's result (not where or how fast it runs): a change retrains it."""
    return RUNS[wildcards.run].settings.result_params()


def figure_title(wildcards):
    """The run, its model, lr, batch and momentum, and every other setting in which it differs from
    the write-up's protocol."""
    s = RUNS[wildcards.run].settings
    title = f"{wildcards.run}: {s.model} AlexNet, lr {s.lr:g}, batch {s.batch_size}, momentum {s.momentum:g}"
    recipe = differences_from_protocol(s, leave_out=("lr", "batch_size", "momentum"))
    return title + (f"; {', '.join(recipe)}" if recipe else "")


def protocol_differences(wildcards):
    """For a caption: what the run changes from the write-up's protocol, or that it changes nothing."""
    differences = differences_from_protocol(RUNS[wildcards.run].settings)
    return ", ".join(differences) if differences else "nothing (the write-up's protocol)"


def run_table():
    """Each run's setting, seed, model and swept values: what the summary groups by."""
    return {name: run.table_row() for name, run in RUNS.items()}


def workflow_file(path):
    """{outdir}/path for one of the workflow's own files beside the per-run files; named only from
    WORKFLOW_FILES, whose stems are refused as run names (config.reserved_run_names)."""
    if path not in WORKFLOW_FILES:
        raise ValueError(f"{path} is not in alexnet_cifar.config.WORKFLOW_FILES: add it there")
    return f"{OUTDIR}/{path}"


def outputs_of_every_run(pattern):
    return [pattern.format(outdir=OUTDIR, run=run) for run in RUNS]


def all_targets():
    """Every output of every rule: a deleted file is rebuilt by a plain ``snakemake``."""
    per_run = [
        "runs/{run}/history.jsonl",
        "runs/{run}/model.pt",
        "runs/{run}/run.json",
        "runs/{run}/predictions.npz",
        "figures/{run}.png",
        "figures/classes/{run}.png",
        "figures/confusion/{run}.png",
    ]
    targets = [path for pattern in per_run for path in outputs_of_every_run(f"{{outdir}}/{pattern}")]
    own = ["metrics/summary.csv", "metrics/summary.md", "metrics/replicates.csv", "metrics/settings.csv"]
    own += ["metrics/classes_by_setting.csv"]
    own += ["figures/comparison.png", "figures/replicates.png", *(["figures/sweep.png"] if SWEPT_KEYS else [])]
    targets += [workflow_file(path) for path in own]
    return targets
