"""The stand-in AlexNet: reachable from every subprocess of the suite, invisible to users.

conftest.py switches it on for the session (an environment variable that subprocesses inherit);
these tests switch it off to see what a user sees."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import warm_snakemake
import yaml
from workflow_helpers import REPO, make_workdir, planned_jobs, snakemake, tiny_config

from alexnet_cifar import cli, config, models, stand_in
from alexnet_cifar.config import settings_problems


@pytest.fixture
def switched_off(monkeypatch):
    monkeypatch.delenv(stand_in.SWITCH)


def test_the_suite_runs_with_the_stand_in_switched_on_for_its_subprocesses():
    assert os.environ[stand_in.SWITCH] == "1"
    child = subprocess.run([sys.executable, "-c", "from alexnet_cifar import stand_in; print(stand_in.enabled())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "True"
    model = models.build_model(stand_in.NAME)
    assert models.count_parameters(model) < 10_000 and models.get_spec(stand_in.NAME).input_size == 32


def test_without_the_switch_the_stand_in_is_an_unknown_model(switched_off):
    with pytest.raises(config.SettingsError, match=r"unknown model 'tiny-alexnet'; choose one of: paper, paper-lrn"):
        models.build_model(stand_in.NAME)
    assert settings_problems({"model": stand_in.NAME}) == [
        "model: 'tiny-alexnet' is not allowed; allowed values: paper, paper-lrn, torchvision"]
    assert config.schema_file() == str(config.SCHEMA)
    with pytest.raises(SystemExit):  # argparse refuses a choice it does not list
        cli.build_parser().parse_args(["train", "--model", stand_in.NAME, "--data", "x.npz", "--out", "o"])


def test_no_user_facing_list_names_the_stand_in(monkeypatch, capsys):
    """The schema file, the config README and the CLI's --model choices as a user gets them."""
    shipped = yaml.safe_load(config.SCHEMA.read_text())
    assert shipped["definitions"]["run"]["allOf"][1]["properties"]["model"]["enum"] == list(models.MODELS)
    assert stand_in.NAME not in (REPO / "config/README.md").read_text()
    assert stand_in.NAME not in config.SCHEMA.read_text()
    monkeypatch.delenv(stand_in.SWITCH)  # the parser is built anew, from the schema a user gets
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    usage = capsys.readouterr().out
    assert "{paper,paper-lrn,torchvision}" in usage and stand_in.NAME not in usage


def test_snakemake_plans_the_stand_in_only_with_the_switch(tmp_path, tiny_archive):
    """Snakemake's own schema check (validate, in the Snakefile) reads a file: under the switch a copy
    of the schema that lists the stand-in (config.schema_file); without it, the shipped schema."""
    path, md5 = tiny_archive
    workdir = make_workdir(tmp_path, tiny_config(str(path), md5, runs={"small": {"model": stand_in.NAME}}), base={})
    assert planned_jobs(snakemake(workdir, "-n").stdout)["train"] == 1
    env = {k: v for k, v in os.environ.items() if k != stand_in.SWITCH}
    refused = warm_snakemake.run(["-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile=tiny.yaml", "-n"],
                                 cwd=workdir, env=env, timeout=300)
    assert refused.returncode != 0
    assert "runs.small.model: 'tiny-alexnet' is not allowed; allowed values: paper, paper-lrn, torchvision" in \
        refused.stdout + refused.stderr

