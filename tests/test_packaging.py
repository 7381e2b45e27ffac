"""Packaging and style: the three package lists agree (pyproject.toml, environment.yml for conda,
constraints.txt with the pins), the wheel works installed anywhere, the code passes ruff, the rule
files snakefmt."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import tiny_model
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from workflow_helpers import REPO

CONDA_TO_PIP = {"pytorch": "torch"}


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = {CONDA_TO_PIP.get(n, n) for n in (re.split(r"[<>=! ]", d)[0].lower() for d in env["dependencies"])}
    assert conda - {"python"} == set(pyproject_requirements())


def test_constraints_pin_every_dependency_within_its_range():
    pins = dict(line.lower().split("==") for line in (REPO / "constraints.txt").read_text().split()
                if "==" in line)
    for name, requirement in pyproject_requirements().items():
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert Version(pins[name].split("+")[0]) in requirement.specifier, (name, pins[name])


def _tool(name: str) -> str:
    """A console script of this environment (pinned in constraints.txt)."""
    return str(Path(sys.executable).with_name(name))


def test_python_code_is_clean_by_ruff():
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefile_and_rules_are_formatted_by_snakefmt():
    result = subprocess.run([_tool("snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_license_is_an_spdx_expression():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"


def test_the_wheel_installed_outside_the_repository_prepares_trains_and_derives_metrics(tmp_path, tiny_archive):
    """``pip install .`` (not editable) must carry everything the package reads, the config schema
    included: build the wheel without network access, install it into a fresh folder and use its
    command from a folder that is not this checkout."""
    source, wheels, site, elsewhere = (tmp_path / name for name in ("source", "wheels", "site", "elsewhere"))
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", "--no-index", "--wheel-dir", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("alexnet_cifar-*.whl")
    assert "alexnet_cifar/config.schema.yaml" in zipfile.ZipFile(wheel).namelist()
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([str(site / "bin" / "alexnet-cifar"), *args], cwd=elsewhere, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    where = subprocess.run([sys.executable, "-c", "import alexnet_cifar; print(alexnet_cifar.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the installed copy, not this checkout's src/
    cli("prepare", str(tiny_archive[0]), "data.npz", "--limit-train", "4", "--limit-test", "4")
    cli("train", "--data", "data.npz", "--model", tiny_model.NAME, "--out", "run", "--epochs", "1", "--device", "cpu",
        "--eval-batch-size", "4", "--threads", "2", "--lr", "1e-3")  # options made from the packaged schema
    cli("metrics", "run/history.jsonl", "run.csv", "run.facts.json")
    assert json.loads((elsewhere / "run.facts.json").read_text())["epochs"] == 1
    assert (elsewhere / "run.csv").read_text().startswith("epoch,")
