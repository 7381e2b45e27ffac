"""The training rule's params, which Snakemake compares with those a finished run recorded: a
change in them retrains the run (about 17 GPU minutes each). ``golden/train_params.json`` holds
them as commit 18e1829 gave them, for the default config and for the ladder, as the ``repr`` that
Snakemake records in ``.snakemake/metadata`` (key order included). Today's must be the same. An
entry changes only with a change that means to retrain that run and says so in CHANGELOG.md: the
ladder's rung 1 (``paper-recipe*``) gained ``input_norm: paper`` and ``bias_decay: false`` at the
end of its params (issue 26)."""
from __future__ import annotations

import json

import pytest
from snakemake.utils import validate
from workflow_helpers import REPO

from alexnet_cifar import config

FIXTURE = REPO / "tests/golden/train_params.json"
#: config files as ``--configfile=...`` merges them over config/config.yaml
CONFIGS = {"config/config.yaml": ("config/config.yaml",),
           "config/ladder.yaml": ("config/config.yaml", "config/ladder.yaml")}


def rule_params(*files: str) -> dict[str, str]:
    """Each run's params as ``workflow/rules/common.smk`` gives them to the training rule: the
    merged config, its numbers read from text, the schema's defaults filled in by Snakemake's
    ``validate`` (as the Snakefile does), then :meth:`RunSettings.result_params`."""
    cfg = config.load_config(*(REPO / file for file in files))
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    return {name: repr(run.settings.result_params()) for name, run in config.expand_runs(cfg).items()}


def recorded() -> dict[str, dict[str, str]]:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("configfile", CONFIGS)
def test_every_run_s_params_are_those_of_commit_18e1829_key_order_included(configfile):
    assert rule_params(*CONFIGS[configfile]) == recorded()[configfile]


def test_the_fixture_holds_the_default_runs_and_every_ladder_run():
    fixture = recorded()
    assert list(fixture["config/config.yaml"]) == ["paper", "torchvision"]
    assert len(fixture["config/ladder.yaml"]) == 14
    assert sum(name.startswith("paper-recipe") for name in fixture["config/ladder.yaml"]) == 6
