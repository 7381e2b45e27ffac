"""The GPU session script, dry-run on the CPU with tiny counts: every part runs, its results fit
what a device call brings back, and part 5 resumes in the next call.

No test here depends on the machine's speed: the deadlines are far beyond what the parts need, a
training is stopped by a SIGTERM sent once its saved history shows the epochs the test waits for
(the session's deadline sends the same signal), and the deadline itself is tested in-process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import tiny_model
from workflow_helpers import REPO

from alexnet_cifar import engine
from alexnet_cifar.bench import ENGINE_LOOPS
from alexnet_cifar.config import RunSettings
from alexnet_cifar.recipes import LrSchedule

SCRIPT = REPO / "tests/gpu/gpu_session.sh"
NEVER = "3600"  # a deadline no part of the dry run comes near, however slow the machine
#: Parts 5 and 6 train the stand-in AlexNet (their bookkeeping is the point; parts 1-4 train the real
#: torchvision), whose epochs take tens of milliseconds: a test that stops a run after its first
#: saved epoch leaves it many epochs, many times what the signal takes to land (part 5 trains the
#: default config's 50).
LADDER_EPOCHS = 40
sys.path.insert(0, str(REPO / "tests/gpu"))
import gpu_session  # noqa: E402


def session_cmd(archive, out, work, *args) -> list[str]:
    return ["bash", str(SCRIPT), "--out", str(out), "--work", str(work), "--archive", str(archive),
            "--device", "cpu", "--tiny", "--models", "torchvision", "--train-model", tiny_model.NAME,
            "--ladder-epochs", str(LADDER_EPOCHS), *args]


def session(archive, out, work, *args) -> subprocess.CompletedProcess:
    return subprocess.run(session_cmd(archive, out, work, *args), capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHON": sys.executable})


def saved_epochs(path, run: str | None = None) -> int:
    """Epochs in a history the session saved (atomically, after every epoch; part 6 saves one per
    ``run``); 0 before the first."""
    if not path.exists():
        return 0
    saved = json.loads(path.read_text())
    return len(saved if run is None else saved.get(run, []))


def part_stopped_after(archive, out, work, parts: str, history, epochs: int, run: str | None = None
                       ) -> subprocess.CompletedProcess:
    """Run ``parts`` until the saved ``history`` (of ``run``, in part 6) holds more than ``epochs``
    epochs, then stop that training with SIGTERM, as the deadline would (the training writes that
    history inside the signal handler's reach, so the signal stops the training, not the
    session), and let the session run to its end."""
    with open(out.parent / f"{out.name}-parts{parts.replace(',', '')}.log", "w+") as log:
        proc = subprocess.Popen(session_cmd(archive, out, work, "--deadline", NEVER, "--parts", parts),
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHON": sys.executable})
        try:
            while saved_epochs(history, run) <= epochs:
                assert proc.poll() is None, "the session ended before the epochs the test waits for"
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        return subprocess.CompletedProcess(proc.args, returncode, log.read(), "")


@pytest.fixture(scope="module")
def dry_run(tiny_archive, tmp_path_factory):
    """Parts 1-4 and 6 in one call, the first ladder run of part 6 stopped once it saved its first
    epoch (of LADDER_EPOCHS), the three others to their end; then part 5 alone, stopped once it saved
    its first (as a deadline stops a training on a GPU). Their result files go to the same folder."""
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    result = part_stopped_after(tiny_archive[0], out, work, "1,2,3,4,6", out / "history_ladder.json", epochs=0,
                                run="paper-recipe")
    assert result.returncode == 0, result.stdout
    first = json.loads((out / "session.json").read_text())
    result = part_stopped_after(tiny_archive[0], out, work, "5", out / "history_paper.json", epochs=0)
    assert result.returncode == 0, result.stdout
    first["parts"].update(json.loads((out / "session.json").read_text())["parts"])
    return out, work, first


def test_the_output_fits_what_a_device_call_brings_back(dry_run):
    out, _, _ = dry_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 1 <= len(files) <= 8
    assert all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)  # OUT/a/b/file at most
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.npz"))  # those stay in the work folder


def test_part_1_trains_the_default_path_with_a_last_smaller_batch(dry_run):
    _, work, report = dry_run
    part = report["parts"]["1"]
    assert part["status"] == "ok" and part["train_images"] % 4 != 0
    (record,) = part["runs"]["torchvision"]["history"]
    assert record["epoch"] == 1 and 0 <= record["test_acc"] <= 100
    provenance = json.loads((work / "part1/torchvision/run.json").read_text())
    assert provenance["settings"]["lr"] == 0.001 and provenance["settings"]["fused_sgd"] is False


def test_part_2_benches_every_loop_with_a_profile(dry_run):
    out, _, report = dry_run
    assert report["parts"]["2"]["status"] == "ok"
    assert set(pd.read_csv(out / "bench.csv")["loop"]) == {"plain", *ENGINE_LOOPS}
    assert len(pd.read_csv(out / "profile.csv")) > 0
    rows = report["parts"]["2"]["ladder_bench"]  # each ladder run's step, at the dry run's batch of 4
    assert {r["model"] for r in rows} == {tiny_model.NAME}  # timed on the stand-in, as --train-model asks
    assert [(r["run"], r["run_model"], r["batch_size"]) for r in rows] == [
        ("paper-recipe", "paper-lrn", 4), ("paper-recipe-nolrn", "paper", 4), ("modern-paper", "paper", 4),
        ("modern-torchvision", "torchvision", 4)]
    assert [r["epochs"] for r in rows] == [LADDER_EPOCHS] * 4 and all(r["ms_per_step"] > 0 for r in rows)


def test_part_3_and_4_compare_graph_with_eager_and_train_at_the_stated_lr(dry_run):
    out, _, report = dry_run
    assert report["parts"]["3"]["passed"] is True
    check = json.loads((out / "graph_vs_eager.json").read_text())
    assert set(check[tiny_model.NAME]) == {"lr_change", "eager+recipe", "graph+recipe"}  # the dry run's one variant
    change = check[tiny_model.NAME]["lr_change"]  # eager on the CPU: the measurement itself works
    assert change["passed"] and change["lr_after"] == pytest.approx(0.001, rel=0.02)
    assert [c["lr"][0] for c in check[tiny_model.NAME]["graph+recipe"]["checks"]] == [0.001]  # 1 epoch: no change
    assert check["augmentation_replays"]["skipped"] == "a CUDA graph needs CUDA"
    part4 = report["parts"]["4"]["runs"]["torchvision"]
    assert part4["lr"] == 0.01 and len(part4["history"]) == 2 and part4["trained_model"] == tiny_model.NAME


def test_part_5_saves_every_epoch_and_resumes_in_the_next_call(dry_run, tiny_archive):
    out, work, report = dry_run
    first = json.loads((out / "history_paper.json").read_text())
    assert report["parts"]["5"]["epochs_done"] == len(first) >= 1
    assert report["parts"]["5"]["status"] == "stopped by a SIGTERM from outside; the checkpoint is kept"
    assert (work / "part5/paper/checkpoint.pt").exists()
    again = out.parent / "again"
    again.mkdir()
    result = part_stopped_after(tiny_archive[0], again, work, "5", again / "history_paper.json", epochs=len(first))
    assert result.returncode == 0, result.stdout
    second = json.loads((again / "history_paper.json").read_text())
    assert f"after epoch {len(first)}" in (again / "session.log").read_text()
    assert second[: len(first)] == first and len(second) > len(first)


def test_part_6_trains_the_ladder_s_recipes_and_resumes_a_run_that_was_cut(dry_run, tiny_archive):
    out, work, report = dry_run
    part = report["parts"]["6"]
    assert list(part["runs"]) == list(gpu_session.LADDER_RUNS)
    assert part["runs"]["paper-recipe"]["status"] == "stopped by a SIGTERM from outside; the checkpoint is kept"
    assert all(part["runs"][run]["status"] == "ok" for run in gpu_session.LADDER_RUNS[1:])
    assert {part["runs"][run]["trained_model"] for run in gpu_session.LADDER_RUNS} == {tiny_model.NAME}
    assert report["parts"]["5"]["trained_model"] == tiny_model.NAME
    settings = {run: part["runs"][run]["settings"] for run in gpu_session.LADDER_RUNS}
    assert settings["paper-recipe"]["model"] == "paper-lrn" and settings["paper-recipe"]["init"] == "paper"
    assert settings["modern-torchvision"]["lr_schedule"] == "cosine" and settings["modern-torchvision"]["nesterov"]
    histories = json.loads((out / "history_ladder.json").read_text())
    cut = len(histories["paper-recipe"])
    assert 1 <= cut < LADDER_EPOCHS and all(len(histories[run]) == LADDER_EPOCHS for run in gpu_session.LADDER_RUNS[1:])
    assert all(record["val_acc"] is not None for run in histories for record in histories[run])
    for run in gpu_session.LADDER_RUNS[1:]:  # each epoch at its schedule's lr (a plateau's drops replayed)
        LrSchedule.replayed(RunSettings.from_mapping(part["runs"][run]["settings"]), histories[run])
    again = out.parent / "again6"
    result = session(tiny_archive[0], again, work, "--deadline", NEVER, "--parts", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = json.loads((again / "history_ladder.json").read_text())
    assert resumed["paper-recipe"][:cut] == histories["paper-recipe"] and len(resumed["paper-recipe"]) == LADDER_EPOCHS
    assert all(resumed[run] == histories[run] for run in gpu_session.LADDER_RUNS[1:])  # not trained again
    runs = json.loads((again / "session.json").read_text())["parts"]["6"]["runs"]
    assert {run: r["status"] for run, r in runs.items()} == {
        "paper-recipe": "ok", **{run: "finished in an earlier call" for run in gpu_session.LADDER_RUNS[1:]}}
    assert f"after epoch {cut}" in (again / "session.log").read_text()


def test_a_training_still_running_at_the_deadline_is_stopped_by_sigterm_and_reported_cut(tmp_path, monkeypatch):
    """The session's deadline sends the training SIGTERM a margin before the end and says so; a
    stand-in training waits for that signal however long it takes (the deadline is 2 s away)."""
    args = gpu_session.parse_args(["--deadline", "7", "--out", str(tmp_path), "--archive", "none", "--tiny",
                                   "--device", "cpu"])
    trained, flag = [], engine.StopFlag()

    def wait_for_the_signal(settings, data_path, out_dir, on_epoch=None):  # stages.train's parameters
        trained.append(out_dir)
        while flag.signum is None:
            time.sleep(0.01)
        raise SystemExit(128 + flag.signum)

    monkeypatch.setattr(gpu_session.stages, "train", wait_for_the_signal)
    with engine.stop_on_signals(flag):  # the training's own handler, set before any signal can come
        outcome = gpu_session.Session(args).train(None, tmp_path / "data.npz", tmp_path / "run")
    assert trained == [tmp_path / "run"]
    assert outcome == {"status": "cut at the deadline; the checkpoint is kept"}
