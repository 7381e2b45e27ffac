"""Running the real workflow from tests: a work folder laid out as a user's, and snakemake itself."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import warm_snakemake
import yaml

REPO = Path(__file__).resolve().parents[1]


def make_workdir(path: Path, config: dict, *, base: dict | None = None) -> Path:
    """A work folder with the repo's config/ (and the reported curve) plus ``tiny.yaml``. With
    ``base``, that replaces config/config.yaml (whose runs a merged config cannot remove)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "config", path / "config", dirs_exist_ok=True)
    if base is not None:
        (path / "config" / "config.yaml").write_text(yaml.safe_dump(base))
    (path / "tiny.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tiny_config(url: str, md5: str, **overrides) -> dict:
    """Both models, 2 epochs on the CPU, 10 training and 8 test images of the tiny archive from
    ``url`` (three steps an epoch: a step of these 57 M-parameter models takes about a second)."""
    config = {
        "outdir": "results",
        "dataset": {"url": url, "md5": md5, "limit_train": 10, "limit_test": 8},
        "train": {"epochs": 2, "device": "cpu", "eval_batch_size": 8},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def snakemake(workdir: Path, *args: str, configfile: str = "tiny.yaml", check: bool = True,
              timeout: float = 900) -> subprocess.CompletedProcess:
    """``snakemake -s REPO/Snakefile -d WORKDIR --configfile=...`` (the ``=`` form: the option would
    swallow the targets that follow it otherwise), in a process of its own forked from one that has
    imported Snakemake already (warm_snakemake)."""
    argv = ["-s", str(REPO / "Snakefile"), "-d", str(workdir), f"--configfile={configfile}", *args]
    result = warm_snakemake.run(argv, cwd=workdir, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(argv)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(output: str) -> dict[str, int]:
    """Job counts by rule from a dry run's 'Job stats' table (empty if nothing is to be done)."""
    counts: dict[str, int] = {}
    if "Job stats:" not in output:
        return counts
    table = output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    counts.pop("total", None)
    return counts
