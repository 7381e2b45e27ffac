"""The workflow through profiles/slurm on a real one-node SLURM cluster (tests/slurm_cluster.py).

The node has two fake GPUs (a GRES mapped to /dev/null and /dev/zero): the training jobs ask SLURM
for --gpus=1 as they would on a cluster, but train with ``device: cpu``. What only suits this
cluster is passed on the command line, not put in the profile: ``--slurm-status-command squeue``
(no accounting, so sacct cannot answer), ``--slurm-no-account``, and a short first status check.

Needs root and slurm-wlm + munge (.ci/slurm.sh installs them); skips with the reason otherwise.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tiny_model
import yaml
from cifar_archive import build_archive
from slurm_cluster import SlurmCluster, unavailable_reason

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
PARTITION = "gpu"  # not the cluster's default partition: shows SBATCH_PARTITION reaches sbatch
ACCOUNT = "lab1"  # this cluster records any account name (the dry-run test shows the forwarding)
# A few images, so that a CPU epoch takes seconds (each SLURM job also starts Snakemake twice).
DATASET_LIMITS = {"limit_train": 8, "limit_test": 8}
#: Two runs of the stand-in AlexNet (the scheduling is the point here, not the network): two
#: trainings that SLURM runs at the same time, one per GPU, with other numbers (another seed).
RUNS = {"first": {"model": tiny_model.NAME}, "second": {"model": tiny_model.NAME, "seed": 1}}
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
RULE_HEADER = re.compile(r"^(localrule|rule) (\w+):$", re.M)


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # Not under pytest's tmp_path: that is private to root (0700) and munged runs as user munge.
    root = Path(tempfile.mkdtemp(prefix="alexnet-slurm-"))
    try:
        # Three fake GPUs and 8 CPUs: the resumed training (its own run) goes on beside the two
        # trainings of the full run, which must still find two GPUs free at once.
        with SlurmCluster(root, gpus=3, cpus=8) as running:  # stops the daemons also when a test fails
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The archive, and one datadir that the SLURM runs share (same dataset settings): the second
    run finds the data prepared. Plus a place for the first test to leave its histories."""
    folder = tmp_path_factory.mktemp("slurm_shared")
    archive, md5 = build_archive(folder / "cifar-10-python.tar.gz")
    return {"archive": archive, "md5": md5, "datadir": folder / "data", "histories": {}}


def make_workdir(path: Path, shared: dict, *, train: dict, datadir: Path | None = None,
                 runs: dict | None = None) -> Path:
    """A Snakemake working directory with the repo's config/ (its runs: ``runs``, or RUNS) and a
    test config; returns the config path."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "config", path / "config")
    defaults = yaml.safe_load((path / "config" / "config.yaml").read_text())
    (path / "config" / "config.yaml").write_text(yaml.safe_dump({**defaults, "runs": runs or RUNS}, sort_keys=False))
    config = {
        "outdir": str(path / "out"),
        "datadir": str(datadir or path / "data"),
        "dataset": {"url": str(shared["archive"]), "md5": shared["md5"], **DATASET_LIMITS},
        "train": {"device": "cpu", "eval_batch_size": 8, **train},
    }
    configfile = path / "test-config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return configfile


def snakemake_args(workdir: Path, configfile: Path, *targets: str) -> list[str]:
    # Targets first: --configfile would take the words after it as more config files.
    return [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            f"--configfile={configfile}"]


def slurm_args(workdir: Path, configfile: Path, *targets: str, account: bool = False) -> list[str]:
    """``account``: the run gives an account (SBATCH_ACCOUNT); otherwise --slurm-no-account."""
    return [*snakemake_args(workdir, configfile, *targets), "--workflow-profile", str(PROFILE),
            # Only for this cluster, which has no accounting database (and so no accounts, though
            # slurmctld records any account name it is given):
            "--slurm-status-command", "squeue", *([] if account else ["--slurm-no-account"]),
            # Only to keep the test short: the plugin's first status check comes after 40 s by
            # default, and each check without news waits 10 s longer than the last (here at 1, 12,
            # 33 s, ...; a job here takes about 10 s, mostly starting Snakemake twice).
            "--slurm-init-seconds-before-status-checks", "1",
            # Evidence: keep every job's SLURM log (by default deleted when the job succeeds).
            "--slurm-keep-successful-logs"]


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float, log: Path) -> str:
    """Wait for Snakemake; on a timeout stop it with SIGINT (which cancels its SLURM jobs; SIGTERM
    would not) and fail. Returns its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"snakemake ran over {timeout} s:\n{log.read_text()[-6000:]}")
    return log.read_text()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def slurm_jobs_by_rule(output: str) -> dict[str, list[str]]:
    """SLURM job ids from Snakemake's log, by rule (from each job's log path .../rule_<name>/...)."""
    jobs: dict[str, list[str]] = {}
    for jobid, log in SUBMITTED.findall(output):
        rule = re.search(r"/rule_(\w+?)(?:/|$)", log).group(1)
        jobs.setdefault(rule, []).append(jobid)
    return jobs


def rows_without_seconds(path: Path) -> list[dict]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def history_without_seconds(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines if line.strip()]


def tres(record: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in record.get("Tres", "").split(",") if "=" in item)


# ------------------------------------------------------------------------------------------ tests

def test_a_missing_slurm_is_a_skip_that_says_how_to_install_it_not_an_install(monkeypatch):
    import slurm_cluster

    def no_install(*args, **kwargs):
        raise AssertionError(f"the tests install nothing (.ci/run does): {args}")

    monkeypatch.setattr(slurm_cluster, "_missing_tools", lambda: ["slurmd", "sbatch"])
    monkeypatch.setattr(slurm_cluster.subprocess, "run", no_install)
    monkeypatch.setattr(slurm_cluster.subprocess, "Popen", no_install)
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    reason = slurm_cluster.unavailable_reason()
    assert reason == ("SLURM is not installed (missing slurmd, sbatch); install it with `bash .ci/slurm.sh` as root "
                      "(apt-get install slurm-wlm munge)")


def test_profile_asks_for_the_right_resources(shared, tmp_path):
    """Without a cluster: what the profile makes each job ask for (Snakemake's dry run)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["rerun-incomplete"] is True and profile["retries"] >= 1
    assert "resources" not in profile and "cores" not in profile  # no one-GPU / one-core limit
    # Settings of the test cluster only are not baked in:
    assert not {"slurm-status-command", "slurm-no-account", "slurm-init-seconds-before-status-checks"} & set(profile)

    configfile = make_workdir(tmp_path, shared, train={"epochs": 2})
    env = dict(os.environ, SBATCH_PARTITION="gpu-part", SBATCH_ACCOUNT="lab1")
    out = subprocess.run([*snakemake_args(tmp_path, configfile), "--workflow-profile", str(PROFILE), "-n"],
                         env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert out.returncode == 0, out.stdout[-6000:]
    resources = {}
    for rule, text in re.findall(r"^rule (\w+):\n(.*?)(?=\n\n|\Z)", out.stdout, re.M | re.S):
        line = re.search(r"^\s+resources: (.*)$", text, re.M).group(1)
        resources.setdefault(rule, dict(item.split("=", 1) for item in line.split(", ")))
    train, prepare = resources["train"], resources["prepare"]
    assert (train["gpu"], train["mem_mb"], train["runtime"]) == ("1", "16000", "480")
    assert (prepare["mem_mb"], prepare["runtime"]) == ("4000", "30")
    for rule, res in resources.items():
        assert "gpu" not in res or rule == "train", (rule, res)
        assert (res["slurm_partition"], res["slurm_account"]) == ("gpu-part", "lab1"), (rule, res)


@pytest.mark.slow
def test_workflow_runs_through_slurm_and_matches_a_local_run(cluster, shared, resume_run, tmp_path):
    """The resume run (``resume_run``) goes on at the same time, on the third GPU."""
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_config = make_workdir(slurm_dir, shared, train={"epochs": 2}, datadir=shared["datadir"])
    local_config = make_workdir(local_dir, shared, train={"epochs": 2})
    # The one place for partition and account (see profiles/slurm).
    env = dict(cluster.env, SBATCH_PARTITION=PARTITION, SBATCH_ACCOUNT=ACCOUNT)

    # The local run for comparison goes alongside (the SLURM run mostly waits for status checks), with
    # the thread count a SLURM training gets (threads: 2, --cpus-per-task=2), since CPU results in
    # PyTorch differ between thread counts. Its profile is profiles/default, as for a user.
    local_cores = min(2, os.cpu_count() or 1)
    local_targets = [f"{local_dir}/out/metrics/{run}.csv" for run in RUNS]
    local_log = tmp_path / "local.log"
    local = start([*snakemake_args(local_dir, local_config, *local_targets), "--cores", str(local_cores)],
                  cluster.env, local_log)
    slurm_log = tmp_path / "slurm.log"
    started = time.monotonic()
    try:
        slurm = start(slurm_args(slurm_dir, slurm_config, account=True), env, slurm_log)
        try:
            output = finish(slurm, 600, slurm_log)
        finally:
            stop(slurm)
        slurm_seconds = time.monotonic() - started
        local_output = finish(local, 300, local_log)
    finally:
        stop(local)
    assert slurm.returncode == 0, output[-8000:]
    assert local.returncode == 0, local_output[-8000:]
    print(f"SLURM run: {slurm_seconds:.0f} s")

    out = slurm_dir / "out"
    for name in ("metrics/summary.csv", "metrics/summary.md", "figures/comparison.png", "figures/first.png",
                 "figures/second.png"):
        assert (out / name).stat().st_size > 0, name

    # Which rules ran where, by Snakemake's log: "localrule x:" runs here, "rule x:" is submitted.
    headers = RULE_HEADER.findall(output)
    local_rules = {rule for kind, rule in headers if kind == "localrule"} - {"all"}
    remote_rules = {rule for kind, rule in headers if kind == "rule"}
    jobs = slurm_jobs_by_rule(output)
    assert "download" in local_rules  # a local rule (compute nodes may have no internet)
    assert {"prepare", "train"} <= remote_rules
    assert set(jobs) == remote_rules, (jobs, headers)  # every submitted rule got a SLURM job id ...
    assert not local_rules & set(jobs)  # ... and no local rule did
    assert len(jobs["train"]) == 2 and len(jobs["prepare"]) == 1

    # SLURM's own record of each job (jobcomp), and its per-job log kept by the plugin.
    record = cluster.completed_jobs()
    workdir = os.path.realpath(slurm_dir)
    run_names = set()
    for rule, ids in jobs.items():
        for jobid in ids:
            rec = record.get(jobid)
            assert rec, f"SLURM has no record of job {jobid} ({rule}): {sorted(record)}"
            assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", rec
            assert os.path.realpath(rec["WorkDir"]) == workdir
            assert rec["Partition"] == PARTITION, "SBATCH_PARTITION did not reach the submission"
            assert rec["Account"] == ACCOUNT, "SBATCH_ACCOUNT did not reach the submission"
            run_names.add(rec["Name"])
            # The GPU request (kept by slurmctld for MinJobAge; jobcomp has no GRES without slurmdbd).
            gpus = cluster.show_job(jobid).get("TresPerJob", "")
            assert gpus == ("gres:gpu:1" if rule == "train" else ""), (rule, gpus)
            logs = list((slurm_dir / ".snakemake" / "slurm_logs").glob(f"rule_{rule}/**/{jobid}.log"))
            assert logs, f"no SLURM log for job {jobid} ({rule})"
    assert len(run_names) == 1  # all submitted by this one Snakemake run (its run UUID)
    # The per-rule resources of the profile reached sbatch.
    for jobid in jobs["train"]:
        assert record[jobid]["TimeLimit"] == "480" and tres(record[jobid])["mem"] == "16000M"
        assert tres(record[jobid])["cpu"] == "2"
    assert tres(record[jobs["prepare"][0]])["mem"] == "4000M"
    # No one-GPU limit from profiles/default: the two trainings ran at the same time, one per GPU.
    train = [record[jobid] for jobid in jobs["train"]]
    assert max(r["StartTime"] for r in train) < min(r["EndTime"] for r in train), train
    assert {cluster.show_job(jobid)["NodeList"] for jobid in jobs["train"]} == {cluster.node}

    # Same numbers as the local run: CPU training is deterministic for one thread count.
    for run in RUNS:
        slurm_run = json.loads((out / "runs" / run / "run.json").read_text())
        local_run = json.loads((local_dir / "out" / "runs" / run / "run.json").read_text())
        assert slurm_run["device"] == "cpu"
        assert slurm_run["threads"] == local_run["threads"], "thread counts differ: results would too"
        slurm_history = history_without_seconds(out / "runs" / run / "history.jsonl")
        assert [r["epoch"] for r in slurm_history] == [1, 2]
        assert slurm_history == history_without_seconds(local_dir / "out" / "runs" / run / "history.jsonl")
        assert rows_without_seconds(out / "metrics" / f"{run}.csv") == \
            rows_without_seconds(local_dir / "out" / "metrics" / f"{run}.csv")
        shared["histories"][run] = slurm_history


@dataclass
class ResumeRun:
    """The resume test's Snakemake run, started beside the full run (both mostly wait for SLURM's
    status checks), and the thread that interrupts its training."""

    workdir: Path
    run_dir: Path
    log: Path
    proc: subprocess.Popen
    started: float
    interrupted: list = field(default_factory=list)  # the job id signalled, or why none was
    watcher: threading.Thread | None = None


EPOCHS_RESUMED = 60  # the resumed run's (see resume_run)
#: The resumed run: like RUNS' "second" (the same settings and seed, so the same numbers), under a
#: name of its own, so that its SLURM job is told apart from the full run's beside it.
RESUMED = {"resumed": {"model": tiny_model.NAME, "seed": 1}}


@pytest.fixture(scope="module")
def resume_run(cluster, shared, tmp_path_factory):
    """SIGTERM to a running training job (what SLURM sends at a time limit or on preemption), sent
    by a thread once the job's checkpoint of epoch 1 exists (the sign)."""
    tmp_path = tmp_path_factory.mktemp("resume_run")
    workdir = tmp_path / "resume"
    # Epochs of the stand-in take 30-300 ms (idle to loaded machine). The sign the test waits for is
    # the checkpoint of epoch 1; the signal (two client calls and slurmctld's delivery away, a few
    # tenths of a second) must come while epochs are left, so 59 are: several times what that takes,
    # on an idle machine as under load. Not many more: the retry trains them all again.
    configfile = make_workdir(workdir, shared, train={"epochs": EPOCHS_RESUMED}, runs=RESUMED)
    run_dir = workdir / "out" / "runs" / "resumed"
    log = tmp_path / "resume.log"
    run = ResumeRun(workdir, run_dir, log, start(slurm_args(workdir, configfile, f"{run_dir}/history.jsonl"),
                                                 cluster.env, log), time.monotonic())

    def interrupt() -> None:
        checkpoint, deadline = run_dir / "checkpoint.pt", time.monotonic() + 300
        while not checkpoint.exists():
            if run.proc.poll() is not None or time.monotonic() > deadline:
                run.interrupted.append("snakemake ended, or 300 s passed, before a checkpoint was written")
                return
            time.sleep(0.1)
        running = cluster.command("squeue", "--noheader", "--states=RUNNING", "--format=%i|%k").stdout.split()
        train_jobs = [line.split("|")[0] for line in running if "rule_train_wildcards_resumed" in line]
        if len(train_jobs) != 1:
            run.interrupted.append(f"not one running training of the resumed run: {running}")
            return
        cluster.command("scancel", "--signal=TERM", train_jobs[0])
        run.interrupted.append(train_jobs[0])

    run.watcher = threading.Thread(target=interrupt, name="slurm-resume-interrupt", daemon=True)
    run.watcher.start()
    try:
        yield run
    finally:
        stop(run.proc)
        run.watcher.join(timeout=60)



@pytest.mark.slow
def test_interrupted_training_resumes_from_its_checkpoint(cluster, shared, resume_run):
    """The job stopped by SIGTERM fails, keeping the checkpoint of the last completed epoch; the
    profile's ``retries`` submits it again and the new job resumes from that epoch."""
    workdir, run_dir, log, proc, epochs = (resume_run.workdir, resume_run.run_dir, resume_run.log, resume_run.proc,
                                           EPOCHS_RESUMED)
    checkpoint = run_dir / "checkpoint.pt"
    started = resume_run.started
    try:
        output = finish(proc, 400, log)
    finally:
        stop(proc)
    resume_run.watcher.join(timeout=60)
    (interrupted,) = resume_run.interrupted
    assert interrupted.isdigit(), f"{interrupted}:\n{output[-6000:]}"
    assert proc.returncode == 0, output[-8000:]
    print(f"resume run: {time.monotonic() - started:.0f} s")

    jobs = slurm_jobs_by_rule(output)
    assert len(jobs["train"]) == 2 and jobs["train"][0] == interrupted, jobs
    record = cluster.completed_jobs()
    first, retry = (record[jobid] for jobid in jobs["train"])
    assert first["JobState"] == "FAILED" and first["ExitCode"] != "0:0", first
    assert retry["JobState"] == "COMPLETED", retry
    assert first["Account"] == retry["Account"] == ""  # --slurm-no-account, no SBATCH_ACCOUNT
    assert first["Partition"] == retry["Partition"] == "cpu"  # no SBATCH_PARTITION: the default
    # The interrupted attempt's own words are in its SLURM log (Snakemake empties the rule's log
    # file before the retry).
    first_log = next((workdir / ".snakemake" / "slurm_logs").glob(f"rule_train/**/{interrupted}.log")).read_text()
    assert "stopped by signal SIGTERM" in first_log and "exit status 143" in first_log, first_log[-4000:]

    train_log = (workdir / "out" / "logs" / "train" / "resumed.log").read_text()
    resumed = re.search(r"resuming from (\S+) after epoch (\d+)", train_log)
    assert resumed, train_log
    assert Path(resumed.group(1)) == checkpoint
    epoch = int(resumed.group(2))
    assert 1 <= epoch < epochs
    history = history_without_seconds(run_dir / "history.jsonl")
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert json.loads((run_dir / "run.json").read_text())["resumed_from_epoch"] == epoch
    assert not checkpoint.exists()  # removed once the outputs are written
    # Resuming changes no number: the first two epochs are those of the uninterrupted 2-epoch run
    # of the previous test (same settings but epochs, same data, same thread count), if it ran.
    uninterrupted = shared["histories"].get("second")
    if uninterrupted is not None:
        assert history[:2] == uninterrupted


@pytest.mark.parametrize("owner_stopped_them", [False, True])
def test_the_reaper_stops_the_daemons_of_a_cluster_whose_owner_died(tmp_path, owner_stopped_them):
    """Without SLURM: stand-ins for the daemons (processes whose command line names the cluster's
    folder, waiting for a signal). Their owner's end of the pipe closes without a word, as when the
    owner dies: the reaper stops them. After the word the owner writes once it has stopped them
    itself, the reaper stops nothing."""
    import slurm_cluster

    root = tmp_path / "alexnet-slurm-test"
    root.mkdir()
    daemons = [subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()", f"--pid-file={root}/d{i}.pid"],
                                start_new_session=True) for i in range(2)]
    try:
        read_end, write_end = os.pipe()
        reaper = subprocess.Popen([sys.executable, slurm_cluster.__file__, "--reap", str(root)], stdin=read_end,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        os.close(read_end)
        if owner_stopped_them:
            os.write(write_end, slurm_cluster.STOPPED)
        os.close(write_end)  # what the owner's death does
        _, err = reaper.communicate(timeout=120)
        assert reaper.returncode == 0
        if owner_stopped_them:
            assert all(d.poll() is None for d in daemons) and err == ""
        else:
            assert [d.wait(timeout=60) for d in daemons] == [-signal.SIGTERM] * 2
            assert f"the cluster in {root} lost its owner; stopped its daemons" in err
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.wait()
