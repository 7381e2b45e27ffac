"""The suite's Snakemake calls (warm_snakemake, forks of a process that imported Snakemake once)
give what a fresh ``python -m snakemake`` gives."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import warm_snakemake
from workflow_helpers import REPO, make_workdir


def comparable(text: str) -> list[str]:
    """Snakemake's output without what differs between any two calls: the date and the workflow id
    of its header, the time stamps of its lines, the name of its log file (its start time), and the
    order of its lines and of the files a line lists, which Python's hash seed (new in every process)
    decides: the words between line breaks, commas, colons and semicolons, sorted."""
    text = re.sub(r"(Date|Workflow ID): .*", r"\1: -", text)
    text = re.sub(r"\[\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}\]", "[time]", text)
    text = re.sub(r"\.snakemake/log/\S+\.snakemake\.log", ".snakemake/log/LOG", text)
    return sorted(re.split(r"\n|, |: |; ", text))


def test_a_warm_call_prints_and_exits_as_a_fresh_process_does(tmp_path):
    workdir = make_workdir(tmp_path, {"train": {"device": "cpu"}})
    for args in (["-n"], ["-n", "no-such-target"]):
        argv = ["-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile=tiny.yaml", *args]
        fresh = subprocess.run([sys.executable, "-m", "snakemake", *argv], cwd=workdir, capture_output=True,
                               text=True, timeout=300)
        warm = warm_snakemake.run(argv, cwd=workdir, timeout=300)
        assert warm.returncode == fresh.returncode == (0 if args == ["-n"] else 1), args
        assert comparable(warm.stdout) == comparable(fresh.stdout), args
        assert comparable(warm.stderr) == comparable(fresh.stderr), args


def test_a_warm_call_sees_the_environment_and_folder_it_is_given(tmp_path):
    """Each call is a fork of its own: the environment given (not the server's at its start) and
    the folder given, so that a relative Snakefile is found there."""
    (tmp_path / "Snakefile").write_text('rule all:\n    run:\n        print("value:", os.environ["WARM_TEST"])\n')
    for value in ("one", "two"):
        result = warm_snakemake.run(["--cores", "1", "-q"], cwd=tmp_path, timeout=300,
                                    env={**os.environ, "WARM_TEST": value})
        assert result.returncode == 0, result.stderr
        assert f"value: {value}" in result.stdout + result.stderr
