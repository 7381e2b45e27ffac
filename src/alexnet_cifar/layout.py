"""The names of the files a workflow writes, each spelled here once: the rules, the training, the
readers and the command line take them from this module, so none of them can disagree.

- A run's folder, ``{outdir}/runs/{run}/`` (:data:`RUN_FOLDER`), holds what its training writes:
  :data:`RUN_FILES`, by the train rule's output names, and, while the training runs, its checkpoint
  (:data:`CHECKPOINT_FILE`; not an output, as Snakemake deletes outputs before a job starts).
- ``{outdir}/metrics/`` holds each run's per-epoch table and key facts (:data:`RUN_METRICS`, by
  the metrics rule's output names).
- The workflow's own tables and figures (:data:`WORKFLOW_FILES`, by rule and output name) share
  ``metrics/`` and ``figures/`` with every run's files, so no run may be named like one of their
  stems: :func:`alexnet_cifar.config.reserved_run_names` refuses those.

This module imports nothing: the Snakefile reads it while building the job graph.
"""
from __future__ import annotations

HISTORY_FILE = "history.jsonl"
MODEL_FILE = "model.pt"
PROVENANCE_FILE = "run.json"
PREDICTIONS_FILE = "predictions.npz"
CHECKPOINT_FILE = "checkpoint.pt"

RUN_FOLDER = "runs/{run}"
#: What a training writes into its run's folder, by the train rule's output names.
RUN_FILES = {"history": HISTORY_FILE, "model": MODEL_FILE, "provenance": PROVENANCE_FILE,
             "predictions": PREDICTIONS_FILE}

#: A run's per-epoch table and key facts in the metrics folder, by the metrics rule's output names.
RUN_METRICS = {"csv": "{run}.csv", "facts": "{run}.facts.json"}

#: The workflow's own files under ``{outdir}``, by the rule that writes them and its output names.
WORKFLOW_FILES = {
    "summary": {"summary_csv": "metrics/summary.csv", "summary_md": "metrics/summary.md",
                "replicates_csv": "metrics/replicates.csv", "settings_csv": "metrics/settings.csv"},
    "class_settings": {"csv": "metrics/classes_by_setting.csv"},
    "comparison_figure": {"png": "figures/comparison.png", "svg": "figures/comparison.svg"},
    "replicates_figure": {"png": "figures/replicates.png", "svg": "figures/replicates.svg"},
    "sweep_figure": {"png": "figures/sweep.png", "svg": "figures/sweep.svg"},
}


def workflow_paths() -> list[str]:
    """Every path of :data:`WORKFLOW_FILES`, in its order."""
    return [path for outputs in WORKFLOW_FILES.values() for path in outputs.values()]
