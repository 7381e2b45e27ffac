import os

# The Snakefile put src/ on sys.path; the config module reads configs without importing torch.
from alexnet_cifar.config import differences_from_protocol, expand_runs, run_wildcard_pattern
from alexnet_cifar.layout import RUN_FILES, RUN_FOLDER, RUN_METRICS, WORKFLOW_FILES

# Normalised, so that targets spelled like the config (results/x, ./results/x) match the rules.
OUTDIR = os.path.normpath(config["outdir"])
DATADIR = os.path.normpath(config.get("datadir") or os.path.join(OUTDIR, "data"))
RUNS = expand_runs(config)  # run name -> Run: one training each (run entries x sweep x seeds)
SWEPT_KEYS = list(config["sweep"])
ENV = "../../environment.yml"  # relative to the rule files


# One path segment that is not one of the workflow's own files (config.run_wildcard_pattern says
# why it does not list the run names); run_settings stops a target of a run the config lacks.
wildcard_constraints:
    run=run_wildcard_pattern(),


def run_settings(wildcards):
    """The settings of the run a job is for; a target of a run that the config does not define
    stops here (every per-run job needs its run's training, whose params come from here)."""
    if wildcards.run not in RUNS:
        known = ", ".join(list(RUNS)[:5]) + (f" and {len(RUNS) - 5} more" if len(RUNS) > 5 else "")
        raise ValueError(
            f"no run named {wildcards.run!r} in the config (its runs: {known or 'none'}); "
            f"name a run of the config, or add it under runs:"
        )
    return RUNS[wildcards.run].settings


def result_params(wildcards):
    """What defines a run's result (not where or how fast it runs): a change retrains it."""
    return run_settings(wildcards).result_params()


def figure_title(wildcards):
    """The run, its model, lr, batch and momentum, and every other setting in which it differs from
    the write-up's protocol."""
    s = run_settings(wildcards)
    title = f"{wildcards.run}: {s.model} AlexNet, lr {s.lr:g}, batch {s.batch_size}, momentum {s.momentum:g}"
    recipe = differences_from_protocol(s, leave_out=("lr", "batch_size", "momentum"))
    return title + (f"; {', '.join(recipe)}" if recipe else "")


def protocol_differences(wildcards):
    """For a caption: what the run changes from the write-up's protocol, or that it changes nothing."""
    differences = differences_from_protocol(run_settings(wildcards))
    return ", ".join(differences) if differences else "nothing (the write-up's protocol)"


def run_table():
    """Each run's setting, seed, model and swept values: what the summary groups by."""
    return {name: run.table_row() for name, run in RUNS.items()}


def run_file(output):
    """{outdir}/runs/{run}/ and the name alexnet_cifar.layout.RUN_FILES gives the train rule's ``output``."""
    return f"{OUTDIR}/{RUN_FOLDER}/{RUN_FILES[output]}"


def run_metrics_file(output):
    """{outdir}/metrics/ and the name alexnet_cifar.layout.RUN_METRICS gives the metrics rule's ``output``."""
    return f"{OUTDIR}/metrics/{RUN_METRICS[output]}"


def workflow_file(rule, output):
    """{outdir}/ and the path alexnet_cifar.layout.WORKFLOW_FILES gives ``rule``'s ``output``: one of
    the workflow's own files, beside the per-run files, whose stems are refused as run names
    (config.reserved_run_names)."""
    return f"{OUTDIR}/{WORKFLOW_FILES[rule][output]}"


def outputs_of_every_run(pattern):
    """``pattern`` (a rule's output with the wildcard {run}) for every run, in the runs' order."""
    return expand(pattern, run=list(RUNS))


def all_targets():
    """Every output of every rule: a deleted file is rebuilt by a plain ``snakemake``. Called after
    every rule file is included (it reads their outputs)."""
    per_run = [
        *rules.train.output,
        rules.run_figure.output.png,
        rules.classes.output.png,
        rules.confusion.output.png,
    ]
    targets = [path for pattern in per_run for path in outputs_of_every_run(pattern)]
    own = [rule for rule in WORKFLOW_FILES if rule != "sweep_figure" or SWEPT_KEYS]
    targets += [workflow_file(rule, output) for rule in own for output in WORKFLOW_FILES[rule]]
    return targets
