"""The GPU session script's choices of a call, in-process: which ladder runs part 6 trains and in
what order (``--ladder-runs``), and the commit that session.json records where the device machine's
copy of the working tree has no .git (``--commit``, $ALEXNET_CIFAR_COMMIT). The whole script runs in
test_gpu_script.py's CPU dry run."""
from __future__ import annotations

import json
import sys

import pytest
from workflow_helpers import REPO

sys.path.insert(0, str(REPO / "tests/gpu"))
import gpu_session  # noqa: E402

BASE = ["--deadline", "3600", "--archive", "a.tar.gz", "--device", "cpu", "--tiny"]


def args(tmp_path, *extra):
    return gpu_session.parse_args([*BASE, "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *extra])


def test_part_6_trains_the_four_recipe_runs_by_default_and_the_named_ones_in_their_order(tmp_path, monkeypatch):
    assert args(tmp_path).ladder_runs == gpu_session.LADDER_RUNS
    chosen = args(tmp_path, "--ladder-runs", "modern-torchvision,modern-paper,paper-recipe")
    assert chosen.ladder_runs == ("modern-torchvision", "modern-paper", "paper-recipe")

    session = gpu_session.Session(chosen)
    session.out.mkdir(parents=True)
    trained, shares = [], []

    def train(settings, npz, out_dir, on_epoch=None, seconds=None):
        trained.append(out_dir.name)
        shares.append(seconds)
        on_epoch([{"epoch": 1}])
        return {"status": "ok"}

    monkeypatch.setattr(session, "data", lambda: tmp_path / "data.npz")
    monkeypatch.setattr(session, "train", train)
    record: dict = {}
    assert session.part6(record) == {"status": "ok"}
    assert trained == ["modern-torchvision", "modern-paper", "paper-recipe"]
    assert list(record["runs"]) == trained and "paper-recipe-nolrn" not in record["runs"]
    assert shares[0] < shares[1] < shares[2]  # the time left shared by the runs still to come
    assert list(json.loads((session.out / "history_ladder.json").read_text())) == trained


@pytest.mark.parametrize(("value", "problem"), [("modern-paper,rung-3", "(rung-3 is not one)"),
                                                ("modern-paper,modern-paper", "(one is named twice)")])
def test_a_ladder_run_that_is_not_one_or_is_named_twice_stops_the_call(tmp_path, capsys, value, problem):
    with pytest.raises(SystemExit) as stopped:
        args(tmp_path, "--ladder-runs", value)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"--ladder-runs {value}: name each of paper-recipe, paper-recipe-nolrn, modern-paper, " \
           f"modern-torchvision at most once {problem}" in err


def test_session_json_records_the_given_commit_then_the_environment_s_then_git_s(tmp_path, monkeypatch):
    monkeypatch.delenv(gpu_session.COMMIT_ENV, raising=False)
    monkeypatch.setattr(gpu_session.provenance, "git_commit", lambda start=None: None)  # a copy without .git
    machine = gpu_session.Session(args(tmp_path)).report["machine"]
    assert (machine["git_commit"], machine["git_commit_from"]) == (None, "unknown")

    monkeypatch.setenv(gpu_session.COMMIT_ENV, "b" * 40)
    machine = gpu_session.Session(args(tmp_path)).report["machine"]
    assert (machine["git_commit"], machine["git_commit_from"]) == ("b" * 40, "given")
    machine = gpu_session.Session(args(tmp_path, "--commit", "a" * 40)).report["machine"]
    assert (machine["git_commit"], machine["git_commit_from"]) == ("a" * 40, "given")  # the option first

    monkeypatch.delenv(gpu_session.COMMIT_ENV)
    monkeypatch.setattr(gpu_session.provenance, "git_commit", lambda start=None: "c" * 40)  # a checkout
    machine = gpu_session.Session(args(tmp_path)).report["machine"]
    assert (machine["git_commit"], machine["git_commit_from"]) == ("c" * 40, "git")
