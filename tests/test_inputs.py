"""Every input checked: a damaged history or reference curve is refused with its line named, and a
failing job says why in its log (one line for a user's error, the traceback for a bug)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cifar_archive import build_archive
from workflow_helpers import REPO, make_workdir, snakemake, tiny_config

from alexnet_cifar import cli, stages
from alexnet_cifar.config import SettingsError
from alexnet_cifar.data import DataError, file_md5
from alexnet_cifar.devices import DeviceError
from alexnet_cifar.errors import UserError
from alexnet_cifar.history import FIELDS, HistoryError, read_history, validate_history, write_history
from alexnet_cifar.metrics import CurveError, read_reference

TRACEBACK = "Traceback (most recent call last)"


def records(epochs: int = 3, diverged: bool = False, validated: bool = False) -> list[dict]:
    """A history as engine.fit writes it; with ``diverged`` the last epoch's losses went non-finite;
    with ``validated`` the run held out validation images."""
    history = [{"epoch": e, "train_loss": 2.3 / e, "train_acc": 100 / 3 * e / epochs, "test_loss": 2.0 / e,
                "test_acc": 30.0 + e, "val_loss": 2.1 / e if validated else None,
                "val_acc": 29.0 + e if validated else None, "lr": 0.001, "seconds": 1.5 * e, "diverged_at_step": None}
               for e in range(1, epochs + 1)]
    if diverged:
        history[-1].update(train_loss=None, test_loss=None, test_acc=10.0, diverged_at_step=1234,
                           val_loss=None, val_acc=10.0 if validated else None)
    return history


def write_lines(path, lines) -> None:
    path.write_text("".join(line + "\n" for line in lines))


# ------------------------------------------------------------------------------------------- history

@pytest.mark.parametrize("diverged", [False, True], ids=["finished", "diverged"])
@pytest.mark.parametrize("validated", [False, True], ids=["no-validation", "validation"])
def test_history_round_trip(tmp_path, diverged, validated):
    history = records(diverged=diverged, validated=validated)
    write_history(tmp_path / "history.jsonl", history)
    assert read_history(tmp_path / "history.jsonl") == history
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 3 and list(json.loads(lines[0])) == list(FIELDS)
    assert [p.name for p in tmp_path.iterdir()] == ["history.jsonl"]  # no temporary file left


def test_fields_are_those_the_training_writes():
    assert FIELDS == ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "lr",
                      "seconds", "diverged_at_step")


def test_a_history_written_before_validation_existed_stays_readable(tmp_path):
    old = [{k: v for k, v in r.items() if k not in ("val_loss", "val_acc")} for r in records(diverged=True)]
    write_lines(tmp_path / "history.jsonl", [json.dumps(r) for r in old])
    read = read_history(tmp_path / "history.jsonl")
    assert [r["val_acc"] for r in read] == [r["val_loss"] for r in read] == [None] * 3
    assert [{k: r[k] for k in old[0]} for r in read] == old


BAD_HISTORIES = {
    "missing-field": (lambda h: h[1].pop("test_acc"), "line 2: missing field(s) test_acc"),
    "unknown-field": (lambda h: h[0].update(valid_acc=3.0),
                      "line 1: unknown field(s) valid_acc; a record has exactly epoch"),
    "val-in-a-run-without": (lambda h: h[1].update(val_acc=3.0),
                             "line 2: val_acc and val_loss should be null, as line 1 has no val_acc"),
    "val-loss-in-a-run-without": (lambda h: h[0].update(val_loss=1.0), "line 1: val_acc and val_loss should be null"),
    "epoch-bool": (lambda h: h[0].update(epoch=True), "line 1: epoch should be an integer >= 1, found true"),
    "epoch-float": (lambda h: h[1].update(epoch=2.0), "line 2: epoch should be an integer >= 1, found 2.0"),
    "epoch-text": (lambda h: h[1].update(epoch="2"), 'line 2: epoch should be an integer >= 1, found "2"'),
    "epoch-gap": (lambda h: h[2].update(epoch=4),
                  "line 3: epoch should be 3 (epochs run 1, 2, 3, ... without gaps or repeats), found 4"),
    "epoch-repeat": (lambda h: h[1].update(epoch=1), "line 2: epoch should be 2 (epochs run"),
    "epochs-from-0": (lambda h: [r.update(epoch=r["epoch"] - 1) for r in h],
                      "line 1: epoch should be an integer >= 1, found 0"),
    "null-loss-not-diverged": (lambda h: h[1].update(train_loss=None),
                               "line 2: train_loss should be a number >= 0 (null only in the epoch that diverged), "
                               "found null"),
    "null-test-loss-not-diverged": (lambda h: h[2].update(test_loss=None), "line 3: test_loss should be a number >= 0"),
    "negative-loss": (lambda h: h[0].update(train_loss=-0.1), "line 1: train_loss should be a number >= 0"),
    "loss-as-text": (lambda h: h[0].update(test_loss="1.2"),
                     'test_loss should be a number >= 0 (null only in the epoch that diverged), found "1.2"'),
    "nan-loss": (lambda h: h[0].update(train_loss=math.nan),
                 "line 1: train_loss should be a number >= 0 (null only in the epoch that diverged), found NaN"),
    "accuracy-over-100": (lambda h: h[2].update(test_acc=150.0),
                          "line 3: test_acc should be a number in [0, 100] (percent), found 150.0"),
    "accuracy-null": (lambda h: h[0].update(train_acc=None),
                      "line 1: train_acc should be a number in [0, 100] (percent), found null"),
    "accuracy-negative": (lambda h: h[0].update(train_acc=-1), "line 1: train_acc should be a number in [0, 100]"),
    "lr-zero": (lambda h: h[1].update(lr=0), "line 2: lr should be a number > 0, found 0"),
    "seconds-negative": (lambda h: h[1].update(seconds=-1.0), "line 2: seconds should be a number >= 0, found -1.0"),
    "step-zero": (lambda h: h[2].update(diverged_at_step=0),
                  "line 3: diverged_at_step should be null or an integer >= 1, found 0"),
    "step-text": (lambda h: h[2].update(diverged_at_step="12", train_loss=None),
                  'line 3: diverged_at_step should be null or an integer >= 1, found "12"'),
    "diverged-not-last": (lambda h: h[1].update(diverged_at_step=7, train_loss=None),
                          "line 2: training diverged here (diverged_at_step 7) and stops at that epoch, "
                          "yet 1 more record(s) follow"),
    "not-an-object": (lambda h: h.__setitem__(1, [1, 2]), "line 2: expected a JSON object with epoch, train_loss"),
    "empty": (lambda h: h.clear(), "holds no epoch"),
}


BAD_VALIDATED_HISTORIES = {
    "val-acc-over-100": (lambda h: h[1].update(val_acc=150.0),
                         "line 2: val_acc should be a number in [0, 100] (percent) (null only in a run without "
                         "validation: line 1 has one), found 150.0"),
    "val-acc-negative": (lambda h: h[0].update(val_acc=-0.5), "line 1: val_acc should be a number in [0, 100]"),
    "val-acc-missing-later": (lambda h: h[2].update(val_acc=None), "line 3: val_acc should be a number in [0, 100]"),
    "val-loss-null-not-diverged": (lambda h: h[1].update(val_loss=None),
                                   "line 2: val_loss should be a number >= 0 (null only without validation or in "
                                   "the epoch that diverged), found null"),
    "val-acc-text": (lambda h: h[0].update(val_acc="50"), 'line 1: val_acc should be a number in [0, 100]'),
}


@pytest.mark.parametrize("change, message, validated",
                         [*((*case, False) for case in BAD_HISTORIES.values()),
                          *((*case, True) for case in BAD_VALIDATED_HISTORIES.values())],
                         ids=[*BAD_HISTORIES, *BAD_VALIDATED_HISTORIES])
def test_a_broken_history_is_refused_naming_line_and_field(tmp_path, change, message, validated):
    path = tmp_path / "history.jsonl"
    history = records(validated=validated)
    change(history)
    with pytest.raises(HistoryError) as err:
        validate_history(history, str(path))
    assert message in str(err.value) and str(path) in str(err.value)
    assert "delete it and rerun the training" in str(err.value)
    with pytest.raises(HistoryError, match="delete it and rerun the training"):  # and the writer refuses to write it
        write_history(path, history)
    assert not path.exists()
    if all(isinstance(r, dict) and all(isinstance(v, (int, float, str, type(None))) and v == v for v in r.values())
           for r in history):
        write_lines(path, [json.dumps(r) for r in history])  # the reader refuses it from a file too
        with pytest.raises(HistoryError) as err:
            read_history(path)
        assert message in str(err.value)


UNPARSABLE = {
    "not-json": ('{"epoch": 2, "train_loss": 1.0,', "line 2: not JSON ("),
    "nan": ('{"epoch": 2, "train_loss": NaN}',
            "line 2: NaN is not a number JSON allows (a loss that went non-finite is written as null)"),
    "infinity": ('{"epoch": 2, "train_loss": -Infinity}', "line 2: -Infinity is not a number JSON allows"),
    "blank-line": ("", "line 2: not JSON (Expecting value at column 1)"),
}


@pytest.mark.parametrize("bad_line, message", UNPARSABLE.values(), ids=UNPARSABLE.keys())
def test_a_line_that_is_not_strict_json_is_refused_with_its_number(tmp_path, bad_line, message):
    good = [json.dumps(r) for r in records()]
    write_lines(tmp_path / "history.jsonl", [good[0], bad_line, good[2]])
    with pytest.raises(HistoryError) as err:
        read_history(tmp_path / "history.jsonl")
    assert message in str(err.value) and str(tmp_path / "history.jsonl") in str(err.value)


def test_a_missing_or_binary_history_is_refused(tmp_path):
    with pytest.raises(HistoryError, match="does not exist: run the training first"):
        read_history(tmp_path / "history.jsonl")
    (tmp_path / "history.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HistoryError, match="cannot read .*history.jsonl as UTF-8"):
        read_history(tmp_path / "history.jsonl")
    (tmp_path / "history.jsonl").write_text("")
    with pytest.raises(HistoryError, match="holds no epoch"):
        read_history(tmp_path / "history.jsonl")


def test_metrics_refuses_a_broken_history_and_writes_nothing(tmp_path):
    history = records()
    history[1]["train_loss"] = None
    write_lines(tmp_path / "history.jsonl", [json.dumps(r) for r in history])
    with pytest.raises(HistoryError, match="line 2: train_loss"):
        stages.run_metrics(history=tmp_path / "history.jsonl", csv=tmp_path / "m.csv", facts=tmp_path / "m.facts.json")
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "m.facts.json").exists()


def test_metrics_summarises_a_valid_diverged_history(tmp_path):
    write_history(tmp_path / "history.jsonl", records(diverged=True))
    stages.run_metrics(history=tmp_path / "history.jsonl", csv=tmp_path / "m.csv", facts=tmp_path / "m.facts.json")
    facts = json.loads((tmp_path / "m.facts.json").read_text())
    assert (facts["diverged_at_epoch"], facts["diverged_at_step"], facts["epochs"]) == (3, 1234, 3)


# ------------------------------------------------------------------------------------- reference curve

def test_the_shipped_reference_curve_is_accepted():
    frame = read_reference(REPO / "config/reference/seed_reported_accuracy.csv")
    assert list(frame.columns) == ["epoch", "test_acc"] and len(frame) == 50
    assert frame["epoch"].tolist() == list(range(1, 51)) and frame["epoch"].dtype == np.int64
    assert frame["test_acc"].max() == pytest.approx(81.47)


def test_a_reference_curve_is_returned_in_epoch_order_without_extra_columns(tmp_path):
    (tmp_path / "r.csv").write_text("epoch,test_acc,note\n2,60.5,x\n1.0,50,y\n")
    frame = read_reference(tmp_path / "r.csv")
    assert frame.to_dict("list") == {"epoch": [1, 2], "test_acc": [50.0, 60.5]}


BAD_CURVES = {
    "fractions": ("epoch,test_acc\n1,0.5006\n2,0.6692\n",
                  "every test_acc is at most 1.0 (largest 0.6692): this looks like fractions; write percent"),
    "duplicate-epoch": ("epoch,test_acc\n1,50\n2,60\n2,61\n", "epoch 2 appears more than once (lines 3, 4)"),
    "non-numeric-accuracy": ("epoch,test_acc\n1,50\n2,n/a\n",
                             "test_acc should be a number in [0, 100] (percent), found 'n/a' on line 3"),
    "empty-cell": ("epoch,test_acc\n1,50\n2,\n",
                   "test_acc should be a number in [0, 100] (percent), found '' on line 3"),
    "over-100": ("epoch,test_acc\n1,50\n2,6692\n", "found '6692' on line 3"),
    "negative": ("epoch,test_acc\n1,-5\n", "found '-5' on line 2"),
    "epoch-zero": ("epoch,test_acc\n0,50\n1,60\n", "epoch should be an integer >= 1, found '0' on line 2"),
    "epoch-fraction": ("epoch,test_acc\n1.5,50\n", "epoch should be an integer >= 1, found '1.5' on line 2"),
    "epoch-text": ("epoch,test_acc\none,50\n", "epoch should be an integer >= 1, found 'one' on line 2"),
    "epoch-infinite": ("epoch,test_acc\ninf,50\n", "found 'inf' on line 2"),
    "blank-line": ("epoch,test_acc\n1,50\n\n2,60\n", "epoch should be an integer >= 1, found '' on line 3"),
    "no-rows": ("epoch,test_acc\n", "it has no rows"),
    "empty-file": ("", "cannot be read as CSV"),
    "missing-column": ("epoch,accuracy\n1,50\n",
                       "needs columns epoch,test_acc; missing ['test_acc'] (found ['epoch', 'accuracy'])"),
}


@pytest.mark.parametrize("text, message", BAD_CURVES.values(), ids=BAD_CURVES.keys())
def test_a_bad_reference_curve_is_refused(tmp_path, text, message):
    (tmp_path / "r.csv").write_text(text)
    with pytest.raises(CurveError) as err:
        read_reference(tmp_path / "r.csv")
    assert message in str(err.value) and str(tmp_path / "r.csv") in str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_missing_reference_curve_is_refused(tmp_path):
    with pytest.raises(CurveError, match="r.csv: cannot be read as CSV"):
        read_reference(tmp_path / "r.csv")


# ------------------------------------------------------------------------------ errors people can act on

@pytest.mark.parametrize("error", [DataError("the npz is bad: rerun prepare"), HistoryError("h.jsonl, line 2: bad"),
                                   CurveError("r.csv: fractions"), DeviceError("no CUDA GPU: set train.device"),
                                   SettingsError("lr: must be a positive number, got -1"),
                                   FileNotFoundError(2, "No such file or directory", "x.csv")])
def test_job_turns_every_user_error_into_one_logged_line_and_status_1(tmp_path, error):
    assert isinstance(error, (UserError, OSError))
    with pytest.raises(SystemExit) as exit_:
        with stages.job(tmp_path / "logs" / "x.log") as log:
            log.info("started")
            raise error
    assert exit_.value.code == 1
    text = (tmp_path / "logs" / "x.log").read_text()
    assert "started" in text and f"error: {error}" in text and TRACEBACK not in text


def test_job_lets_a_signal_exit_pass_unchanged(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        with stages.job(tmp_path / "x.log"):
            raise SystemExit(143)
    assert exit_.value.code == 143 and "error" not in (tmp_path / "x.log").read_text()


SCRIPT = textwrap.dedent("""
    import sys
    from alexnet_cifar import stages
    from alexnet_cifar.data import DataError

    with stages.job(sys.argv[2]) as log:
        log.info("working")
        if sys.argv[1] == "user":
            raise DataError("archive a.tar.gz is not the configured one: delete it")
        {}["no such key"]  # a bug
""")


@pytest.fixture(scope="module")
def job_runs(tmp_path_factory):
    """{kind: (completed process, log text)} of a script run through stages.job, as a workflow job is."""
    folder = tmp_path_factory.mktemp("job")
    (folder / "job.py").write_text(SCRIPT)
    runs = {}
    for kind in ("user", "bug"):
        result = subprocess.run([sys.executable, str(folder / "job.py"), kind, str(folder / f"{kind}.log")],
                                capture_output=True, text=True, timeout=120)
        runs[kind] = result, (folder / f"{kind}.log").read_text()
    return runs


def test_a_user_error_is_one_line_on_the_terminal_and_in_the_log(job_runs):
    result, log = job_runs["user"]
    assert result.returncode == 1
    line = "error: archive a.tar.gz is not the configured one: delete it"
    assert line in result.stderr and TRACEBACK not in result.stderr
    assert "working" in log and line in log and TRACEBACK not in log


def test_a_bug_keeps_its_traceback_once_on_the_terminal_and_in_the_log(job_runs):
    result, log = job_runs["bug"]
    assert result.returncode == 1
    assert result.stderr.count(TRACEBACK) == 1 and "KeyError: 'no such key'" in result.stderr
    assert "unexpected KeyError (a bug" in result.stderr
    assert TRACEBACK in log and "KeyError: 'no such key'" in log and "unexpected KeyError (a bug" in log


def test_cli_prepare_refuses_another_md5_in_one_line(tmp_path, capsys):
    archive, md5 = build_archive(tmp_path / "a.tar.gz", test_count=2)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prepare", str(archive), str(tmp_path / "c.npz"), "--md5", "0" * 32])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and f"error: {archive} has MD5 {md5}" in err and TRACEBACK not in err
    assert not (tmp_path / "c.npz").exists()
    assert cli.main(["prepare", str(archive), str(tmp_path / "c.npz"), "--md5", md5]) == 0


@pytest.mark.slow
def test_workflow_refuses_an_archive_placed_by_hand_that_is_not_the_configured_one(tmp_path, tiny_archive):
    """The download rule is skipped (its output exists), so prepare must catch it, before any training."""
    _, md5 = tiny_archive
    workdir = make_workdir(tmp_path / "work", tiny_config(str(tmp_path / "nowhere.tar.gz"), md5))
    (workdir / "results/data").mkdir(parents=True)
    placed, placed_md5 = build_archive(workdir / "results/data/cifar-10-python.tar.gz", seed=1)
    assert placed_md5 != md5
    result = snakemake(workdir, check=False)
    assert result.returncode != 0
    reason = (f"error: results/data/cifar-10-python.tar.gz has MD5 {placed_md5}, but the config expects {md5} "
              "(dataset.md5): it is not the configured archive. Delete it")
    assert reason in (workdir / "results/logs/prepare.log").read_text()
    assert reason in result.stderr  # the job's one line, on the terminal
    assert TRACEBACK not in result.stderr + result.stdout
    assert not (workdir / "results/data/cifar10.npz").exists() and not (workdir / "results/runs").exists()
    assert not (workdir / "results/logs/download.log").exists()
    assert file_md5(placed) == placed_md5  # the user's file is left for them to deal with
