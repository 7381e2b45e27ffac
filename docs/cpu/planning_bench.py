"""How long Snakemake takes to plan a sweep of this workflow, beside a bare workflow of the same shape.

Writes, in a temporary folder, (1) a work folder for this workflow with a sweep config of
``--lrs`` learning rates x ``--seeds`` seeds x 2 models (1,600 trainings by default), and (2) a bare
Snakefile of the same shape: per run a 4-output training, metrics, a figure, class and confusion
tables, and one summary over all runs, with nothing else (no config checks, no params functions).
(3) the same bare workflow with this workflow's kind of rule (``script:``, ``log:``, ``conda:``).
Then times ``snakemake -n -q --cores 1`` of each, alternately, ``--repeat`` times, and prints a
Markdown table (the median and each time). The output of a run goes in docs/cpu/planning.md.

    .venv/bin/python docs/cpu/planning_bench.py [--lrs 200] [--seeds 4] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

BARE = '''
RUNS = [f"{model}-lr{lr}-seed{seed}" for model in ("paper", "torchvision")
        for lr in range(config["lrs"]) for seed in range(config["seeds"])]


rule all:
    input:
        "summary.csv",
        expand("figures/{run}.png", run=RUNS),
        expand("classes/{run}.csv", run=RUNS),
        expand("confusion/{run}.csv", run=RUNS),


rule train:
    input:
        "data.npz",
    output:
        "runs/{run}/history.jsonl",
        "runs/{run}/model.pt",
        "runs/{run}/run.json",
        "runs/{run}/predictions.npz",
    shell:
        "touch {output}"


rule metrics:
    input:
        "runs/{run}/history.jsonl",
    output:
        "metrics/{run}.csv",
    shell:
        "touch {output}"


rule figure:
    input:
        "metrics/{run}.csv",
    output:
        "figures/{run}.png",
    shell:
        "touch {output}"


rule classes:
    input:
        "runs/{run}/predictions.npz",
    output:
        "classes/{run}.csv",
    shell:
        "touch {output}"


rule confusion:
    input:
        "runs/{run}/predictions.npz",
    output:
        "confusion/{run}.csv",
    shell:
        "touch {output}"


rule summary:
    input:
        expand("metrics/{run}.csv", run=RUNS),
    output:
        "summary.csv",
    shell:
        "touch {output}"
'''


def with_scripts(snakefile: str) -> str:
    """``snakefile`` with this workflow's kind of rule: ``script:``, ``log:`` and ``conda:`` in every
    rule but ``all`` (while planning, Snakemake checks each script job's source and each job's
    software environment)."""
    rules = snakefile.split("\n\n\nrule ")
    changed = [rules[0]]
    for rule in rules[1:]:
        name = rule.split(":", 1)[0]
        log = f'"logs/{name}/{{run}}.log"' if "{run}" in rule.split("output:", 1)[-1] else f'"logs/{name}.log"'
        rule = rule.replace('    shell:\n        "touch {output}"',
                            f'    log:\n        {log},\n    conda:\n        "env.yml"\n    script:\n        "touch.py"')
        changed.append(rule)
    return "\n\n\nrule ".join(changed)


def sweep_config(lrs: int, seeds: int) -> dict:
    """``lrs`` learning rates from 1e-4 up (log-spaced), ``seeds`` seeds, both models."""
    values = [float(f"{1e-4 * 10 ** (3 * i / max(lrs - 1, 1)):.6g}") for i in range(lrs)]
    runs = {model: {"model": model, "seeds": seeds} for model in ("paper", "torchvision")}
    return {"runs": runs, "sweep": {"lr": values}}


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    trainings = 2 * args.lrs * args.seeds
    snakemake = [sys.executable, "-m", "snakemake", "-n", "-q", "--cores", "1"]
    with tempfile.TemporaryDirectory(prefix="planning-") as tmp:
        ours, bare = Path(tmp, "workflow"), Path(tmp, "bare")
        shutil.copytree(REPO / "config", ours / "config")
        (ours / "sweep.yaml").write_text(yaml.safe_dump(sweep_config(args.lrs, args.seeds)))
        scripted = Path(tmp, "bare-scripts")
        for folder, snakefile in ((bare, BARE), (scripted, with_scripts(BARE))):
            folder.mkdir()
            (folder / "Snakefile").write_text(snakefile)
            (folder / "data.npz").touch()
        (scripted / "touch.py").write_text("for path in snakemake.output:\n    open(path, 'w').close()\n")
        (scripted / "env.yml").write_text("channels: [conda-forge]\ndependencies: [python]\n")
        commands = {
            "this workflow": ([*snakemake, "-s", str(REPO / "Snakefile"), "--configfile=sweep.yaml"], ours),
            "bare workflow": ([*snakemake, "--config", f"lrs={args.lrs}", f"seeds={args.seeds}"], bare),
            "bare workflow, script: log: conda:": ([*snakemake, "--config", f"lrs={args.lrs}", f"seeds={args.seeds}"],
                                                    scripted),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):  # alternately, so that both see the same machine
            for name, (cmd, cwd) in commands.items():
                times[name].append(timed(cmd, cwd))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{trainings} trainings ({args.lrs} lr values x {args.seeds} seeds x 2 models), "
          f"`snakemake -n -q --cores 1`, {args.repeat} times each, alternately; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"Snakemake {version('snakemake')}\n")
    print("| workflow | median (s) | each (s) |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    for bare_name in list(medians)[1:]:
        print(f"\nthis workflow / {bare_name}: {medians['this workflow'] / medians[bare_name]:.2f}")


if __name__ == "__main__":
    main()
