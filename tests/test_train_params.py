"""The training rule's params, which Snakemake compares with those a finished run recorded: a
change in them retrains the run (about 17 GPU minutes each). ``golden/train_params.json`` holds
them as commit 18e1829 gave them, for the default config and for the ladder, as the ``repr`` that
Snakemake records in ``.snakemake/metadata`` (key order included). Today's must be the same. An
entry changes only with a change that means to retrain that run and says so in CHANGELOG.md: the
ladder's rung 1 (``paper-recipe*``) gained ``input_norm: paper`` and ``bias_decay: false`` at the
end of its params (issue 26). A setting added later (``omitted_at_default`` in the schema) stays
out of them at its default, so a finished run is not trained again."""
from __future__ import annotations

import ast
import base64
import json
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate
from workflow_helpers import REPO, make_workdir, planned_jobs, snakemake, tiny_config

from alexnet_cifar import config, stand_in
from alexnet_cifar.config import RunSettings

FIXTURE = REPO / "tests/golden/train_params.json"
#: config files as ``--configfile=...`` merges them over config/config.yaml
CONFIGS = {"config/config.yaml": ("config/config.yaml",),
           "config/ladder.yaml": ("config/config.yaml", "config/ladder.yaml")}
#: The settings added after runs had finished without them, and the defaults that give the numbers
#: of the code before them. A finished run at such a default keeps its params, so changing one of
#: these defaults would silently take results made with the old value for the new one: never do it.
OMITTED_AT_DEFAULT = {"input_norm": "half", "bias_decay": True}


def rule_params(*files: str) -> dict[str, str]:
    """Each run's params as ``workflow/rules/common.smk`` gives them to the training rule: the
    merged config, its numbers read from text, the schema's defaults filled in by Snakemake's
    ``validate`` (as the Snakefile does), then :meth:`RunSettings.result_params`."""
    cfg = config.load_config(*(REPO / file for file in files))
    validate(cfg, config.schema_file())
    return {name: repr(run.settings.result_params()) for name, run in config.expand_runs(cfg).items()}


def recorded() -> dict[str, dict[str, str]]:
    return json.loads(FIXTURE.read_text())


def recorded_params(workdir: Path, output: str) -> list[str]:
    """The params that Snakemake recorded for the job that made ``output`` (its metadata record,
    named by the path in URL-safe base64): what it compares with the rule's params next time."""
    record = workdir / ".snakemake/metadata" / base64.urlsafe_b64encode(output.encode()).decode()
    return json.loads(record.read_text())["params"]



def test_the_settings_added_later_keep_their_defaults_and_define_results():
    assert {key: config.DEFAULTS[key] for key in config.omitted_at_default()} == OMITTED_AT_DEFAULT
    assert all(config.train_schema()[key]["defines_result"] for key in OMITTED_AT_DEFAULT)


def test_a_setting_added_later_enters_params_and_fingerprint_only_away_from_its_default():
    base = RunSettings.from_mapping({"model": "paper"})
    explicit = RunSettings.from_mapping({"model": "paper", **OMITTED_AT_DEFAULT})
    assert not set(OMITTED_AT_DEFAULT) & set(base.result_params())
    assert explicit.result_params() == base.result_params() and explicit.fingerprint("m") == base.fingerprint("m")
    for key, value in {"input_norm": "paper", "bias_decay": False}.items():
        changed = RunSettings.from_mapping({"model": "paper", key: value})
        assert list(changed.result_params()) == [*base.result_params(), key]  # at the end, in schema order
        assert changed.result_params()[key] == value and changed.fingerprint("m") != base.fingerprint("m")


@pytest.mark.parametrize("configfile", CONFIGS)
def test_every_run_s_params_are_those_of_commit_18e1829_key_order_included(configfile):
    assert rule_params(*CONFIGS[configfile]) == recorded()[configfile]


def test_the_fixture_holds_the_default_runs_and_every_ladder_run():
    fixture = recorded()
    assert list(fixture["config/config.yaml"]) == ["paper", "torchvision"]
    assert len(fixture["config/ladder.yaml"]) == 14
    assert sum(name.startswith("paper-recipe") for name in fixture["config/ladder.yaml"]) == 6


def test_a_run_finished_before_the_new_settings_is_not_trained_again(tmp_path, tiny_archive):
    """A run at the default settings (the stand-in model, 2 epochs), trained to the end; Snakemake
    records its params. They are what commit 18e1829 gave such a run, read from the fixture (its
    default run with this model and epoch count): a folder that 18e1829 finished holds the same
    record, and the training script is byte-identical (its time stamp is not newer). So the dry runs
    that follow, as after a ``git pull``, are what that folder would see: no training, whether the
    config leaves the new settings out or writes their defaults; a new setting's other value does
    retrain, so these dry runs do see params."""
    archive, md5 = tiny_archive
    config_file = tiny_config(str(archive), md5)
    workdir = make_workdir(tmp_path, config_file, base={"runs": {"standin": {"model": stand_in.NAME}}})
    outputs = [f"results/runs/standin/{name}" for name in ("history.jsonl", "model.pt", "run.json", "predictions.npz")]
    snakemake(workdir, "--cores", "1", *outputs)

    at_18e1829 = {**ast.literal_eval(recorded()["config/config.yaml"]["paper"]), "model": stand_in.NAME, "epochs": 2}
    assert recorded_params(workdir, "results/runs/standin/model.pt") == [repr(at_18e1829)]
    assert "train" not in planned_jobs(snakemake(workdir, "-n").stdout)
    assert planned_jobs(snakemake(workdir, "-n", *outputs).stdout) == {}
    for name, train in {"defaults.yaml": OMITTED_AT_DEFAULT, "paper.yaml": {"input_norm": "paper"},
                        "no-bias-decay.yaml": {"bias_decay": False}}.items():
        (workdir / name).write_text(yaml.safe_dump({**config_file, "train": {**config_file["train"], **train}}))
        plan = planned_jobs(snakemake(workdir, "-n", *outputs, configfile=name).stdout)
        assert plan == ({} if name == "defaults.yaml" else {"train": 1}), name
