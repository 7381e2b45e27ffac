"""The workflow used from another workflow, as ``snakedeploy deploy-workflow URL DEST --tag vX``
lays it out: a ``workflow/Snakefile`` that declares this one as a module (``config: config``,
``use rule * from NAME``), ``config/`` copied beside it and edited, and the profiles. The module's
``snakefile:`` is the local path of this checkout's root Snakefile.

The deployment runs on the stand-in AlexNet, with an ``alexnet_cifar`` on PYTHONPATH that refuses
to be imported: every job and the job graph itself must take the package from the checkout's
``src/``, as a plain run does, not from whatever copy the deploying environment has installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, planned_jobs, tiny_config

from alexnet_cifar import stand_in

#: what snakedeploy writes into DEST/workflow/Snakefile (its template), with a local path for the
#: module's Snakefile where snakedeploy puts github("OWNER/REPO", path="Snakefile", tag="vX")
DEPLOYED_SNAKEFILE = """configfile: "config/config.yaml"


module alexnet:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from alexnet{rename}
"""
NOT_THIS_COPY = "an installed alexnet_cifar was imported, not the module's own src/"


def deploy(dest: Path, config: dict, *, rename: str = "") -> Path:
    (dest / "workflow").mkdir(parents=True)
    (dest / "workflow" / "Snakefile").write_text(
        DEPLOYED_SNAKEFILE.format(snakefile=REPO / "Snakefile", rename=rename))
    shutil.copytree(REPO / "config", dest / "config")
    shutil.copytree(REPO / "profiles", dest / "profiles")
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # the user's edit
    return dest


def snakemake_in(dest: Path, *args: str, poison: Path) -> subprocess.CompletedProcess:
    """``snakemake ARGS`` started in ``dest`` as its user starts it: no -s, no -d, no --configfile."""
    env = {**os.environ, "PYTHONPATH": str(poison)}
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=dest, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"snakemake {' '.join(args)} in {dest} failed:\n{result.stdout}\n{result.stderr}"
    return result


def files_newer_than(stamp: Path, root: Path) -> list[str]:
    """Files under ``root`` modified after ``stamp`` was, ``.git`` and ``__pycache__`` aside."""
    since = stamp.stat().st_mtime_ns
    newer = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__")]
        newer += [str(Path(folder, f).relative_to(root)) for f in files
                  if Path(folder, f).stat(follow_symlinks=False).st_mtime_ns > since]
    return sorted(newer)


@pytest.fixture(scope="module")
def poison(tmp_path_factory) -> Path:
    """A folder for PYTHONPATH whose alexnet_cifar fails on import, naming what went wrong."""
    folder = tmp_path_factory.mktemp("installed")
    (folder / "alexnet_cifar").mkdir()
    (folder / "alexnet_cifar" / "__init__.py").write_text(f"raise ImportError({NOT_THIS_COPY!r})\n")
    return folder


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, tiny_archive, poison):
    """The chain and its report run in a deployment of one stand-in run, 2 epochs; with the stamp
    taken before them."""
    path, md5 = tiny_archive
    assert stand_in.enabled()  # conftest.py: the jobs inherit the switch
    stamp = tmp_path_factory.mktemp("stamp") / "before"
    stamp.touch()
    config = tiny_config(str(path), md5, runs={"small": {"model": stand_in.NAME}})
    dest = deploy(tmp_path_factory.mktemp("deployment"), config)
    run = snakemake_in(dest, poison=poison)
    snakemake_in(dest, "--report", "report.zip", poison=poison)
    return dest, stamp, run


@pytest.mark.slow
def test_the_deployed_chain_writes_its_results_in_the_deployment(deployed, poison):
    dest, _, run = deployed
    assert "Using workflow specific profile profiles/default" in run.stderr  # the copied profile
    out = dest / "results"
    for name in ("history.jsonl", "model.pt", "run.json", "predictions.npz"):
        assert (out / "runs" / "small" / name).stat().st_size > 0
    for name in ("metrics/small.csv", "metrics/summary.csv", "figures/small.png", "figures/comparison.png",
                 "figures/classes/small.png", "figures/confusion/small.png", "logs/train/small.log"):
        assert (out / name).stat().st_size > 0
    assert len((out / "runs/small/history.jsonl").read_text().splitlines()) == 2
    with zipfile.ZipFile(dest / "report.zip") as report:
        assert any(name.endswith("small.svg") for name in report.namelist())
    # everything is there, in the deployment, where Snakemake looks: nothing left to do
    assert planned_jobs(snakemake_in(dest, "-n", poison=poison).stdout) == {}


@pytest.mark.slow
def test_the_deployed_chain_writes_nothing_into_the_checkout(deployed):
    _, stamp, _ = deployed
    assert files_newer_than(stamp, REPO) == []


def test_a_prefixed_import_plans_the_chain_under_its_new_names(tmp_path, tiny_archive, poison):
    """``use rule * from alexnet as alexnet_*``: every rule renamed, the local rules included (a
    ``localrules:`` list would still name ``download``, and Snakemake would warn that no such rule
    exists and send it to the cluster)."""
    path, md5 = tiny_archive
    config = tiny_config(str(path), md5, runs={"small": {"model": stand_in.NAME}})
    dest = deploy(tmp_path / "prefixed", config, rename=" as alexnet_*")
    plan = snakemake_in(dest, "-n", poison=poison)
    assert planned_jobs(plan.stdout) == {
        "alexnet_download": 1, "alexnet_prepare": 1, "alexnet_train": 1, "alexnet_metrics": 1, "alexnet_summary": 1,
        "alexnet_run_figure": 1, "alexnet_comparison_figure": 1, "alexnet_replicates_figure": 1,
        "alexnet_classes": 1, "alexnet_confusion": 1, "alexnet_class_settings": 1, "alexnet_all": 1}
    assert "localrules directive specifies rules that are not present" not in plan.stdout + plan.stderr
    assert not (dest / "results").exists()  # planned, not run
