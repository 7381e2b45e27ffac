"""Packaging and style: the three package lists agree (pyproject.toml, environment.yml for conda,
constraints.txt with the pins), the code passes ruff, the rule files snakefmt."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

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
