import os
import re

# The Snakefile put src/ on sys.path; the config module reads configs without importing torch.
from alexnet_cifar.config import resolve_run

# Normalised, so that targets spelled like the config (results/x, ./results/x) match the rules.
OUTDIR = os.path.normpath(config["outdir"])
DATADIR = os.path.normpath(config.get("datadir") or os.path.join(OUTDIR, "data"))
RUNS = list(config["runs"])
ENV = "../../environment.yml"  # relative to the rule files


wildcard_constraints:
    run="|".join(re.escape(run) for run in RUNS),


def run_settings(run):
    """A run's settings: the train: defaults merged with its entry in runs:."""
    return resolve_run(config, run)


def result_params(wildcards):
    """What defines a run's result (not where or how fast it runs): a change retrains it."""
    return run_settings(wildcards.run).result_params()


def figure_title(wildcards):
    s = run_settings(wildcards.run)
    return f"{wildcards.run}: {s.model} AlexNet, lr {s.lr:g}, batch {s.batch_size}, momentum {s.momentum:g}"


def outputs_of_every_run(pattern):
    return {run: pattern.format(outdir=OUTDIR, run=run) for run in RUNS}


def all_targets():
    return [
        f"{OUTDIR}/metrics/summary.csv",
        f"{OUTDIR}/metrics/summary.md",
        f"{OUTDIR}/figures/comparison.png",
        *outputs_of_every_run("{outdir}/figures/{run}.png").values(),
    ]
