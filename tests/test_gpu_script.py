"""The GPU session script, dry-run on the CPU with tiny counts: every part runs, its results fit
what a device call brings back, and part 5 resumes in the next call."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from workflow_helpers import REPO

from alexnet_cifar.bench import ENGINE_LOOPS

SCRIPT = REPO / "tests/gpu/gpu_session.sh"


def session(archive, out, work, *args) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), "--out", str(out), "--work", str(work), "--archive", str(archive),
           "--device", "cpu", "--tiny", "--models", "torchvision", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})


@pytest.fixture(scope="module")
def dry_run(tiny_archive, tmp_path_factory):
    """Parts 1-4 in one call (a deadline they fit in), then part 5 alone with a deadline that
    cuts it, as on a GPU; its result files go to the same folder."""
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    result = session(tiny_archive[0], out, work, "--deadline", "300", "--parts", "1,2,3,4")
    assert result.returncode == 0, result.stdout + result.stderr
    first = json.loads((out / "session.json").read_text())
    result = session(tiny_archive[0], out, work, "--deadline", "25", "--parts", "5")
    assert result.returncode == 0, result.stdout + result.stderr
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


def test_part_3_and_4_compare_graph_with_eager_and_train_at_the_stated_lr(dry_run):
    out, _, report = dry_run
    assert report["parts"]["3"]["passed"] is True
    check = json.loads((out / "graph_vs_eager.json").read_text())
    assert set(check["torchvision"]) == {"eager", "graph", "graph+fused"}
    part4 = report["parts"]["4"]["runs"]["torchvision"]
    assert part4["lr"] == 0.01 and len(part4["history"]) == 2


def test_part_5_saves_every_epoch_and_resumes_in_the_next_call(dry_run, tiny_archive):
    out, work, report = dry_run
    first = json.loads((out / "history_paper.json").read_text())
    assert report["parts"]["5"]["epochs_done"] == len(first) >= 1
    assert report["parts"]["5"]["status"].startswith("cut at the deadline")
    assert (work / "part5/paper/checkpoint.pt").exists()
    again = out.parent / "again"
    result = session(tiny_archive[0], again, work, "--deadline", "20", "--parts", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    second = json.loads((again / "history_paper.json").read_text())
    assert f"after epoch {len(first)}" in (again / "session.log").read_text()
    assert second[: len(first)] == first and len(second) > len(first)
