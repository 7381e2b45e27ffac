"""The three package lists agree: pyproject.toml, environment.yml (conda) and constraints.txt (pins)."""
from __future__ import annotations

import re
import tomllib

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
