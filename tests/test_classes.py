"""Per-class results from the training's record of its predictions: the record itself, the class
and confusion tables against the history, the statistics over seeds, the figures, the command
line, and damaged records refused."""
from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest
import torch

from alexnet_cifar import classes, cli, metrics, stages
from alexnet_cifar.config import RunSettings
from alexnet_cifar.data import CLASSES, Cifar10Arrays
from alexnet_cifar.engine import fit, to_model_input
from alexnet_cifar.models import build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def arrays(n_train=40, n_test=30) -> Cifar10Arrays:
    rng = np.random.default_rng(3)
    return Cifar10Arrays(rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
                         np.arange(n_train, dtype=np.int64) % 10,
                         rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
                         (np.arange(n_test, dtype=np.int64) * 7) % 10)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A finished run of the stand-in AlexNet with validation and flip averaging (3 epochs), the
    data it trained on as an npz, and its settings."""
    import tiny_model

    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("recorded")
    data = arrays()
    np.savez(folder / "data.npz", **data._asdict())
    with tiny_model.registered() as model:
        settings = RunSettings(model=model, epochs=3, lr=0.05, device="cpu", validation_images=10, tta_flip=True,
                               eval_batch_size=8)
        history, _ = fit(settings, data, folder / "run", torch.device("cpu"), data_md5="md5", log=lambda _: None)
        yield folder, data, settings, history


def test_the_record_is_the_saved_model_s_own_predictions_at_the_last_epoch(recorded):
    folder, data, settings, history = recorded
    record = np.load(folder / "run/predictions.npz")
    assert set(record.files) == {"test", "val", "val_index"}
    assert record["test"].dtype == np.uint8 and record["test"].shape == (3, 30) and record["val"].shape == (3, 10)
    saved = torch.load(folder / "run/model.pt", weights_only=True)
    model = build_model(settings.model)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    with torch.no_grad():
        for images, key in ((data.test_images, "test"), (data.train_images[record["val_index"]], "val")):
            x = to_model_input(torch.from_numpy(images), 32)
            logits = 0.5 * (model(x) + model(x.flip(-1)))  # tta_flip, as the run evaluated
            np.testing.assert_array_equal(record[key][-1], logits.argmax(1).numpy())
    np.testing.assert_array_equal(record["val_index"], np.sort(record["val_index"]))
    assert np.bincount(data.train_labels[record["val_index"]], minlength=10).tolist() == [1] * 10


def test_class_rows_and_confusion_blocks_agree_with_the_history(recorded, tmp_path):
    folder, _, _, history = recorded
    run = folder / "run"
    inputs = {"history": run / "history.jsonl", "predictions": run / "predictions.npz", "data": folder / "data.npz"}
    stages.class_results(**inputs, csv=tmp_path / "c.csv", png=tmp_path / "c.png", title="t")
    stages.confusion_results(**inputs, csv=tmp_path / "m.csv", png=tmp_path / "m.png", title="t")
    table = pd.read_csv(tmp_path / "c.csv")
    assert list(table.columns) == classes.CLASS_COLUMNS and len(table) == 3 * 10
    labels = arrays().test_labels
    per_class = np.bincount(labels, minlength=10)
    for record in history:  # the class accuracies, weighted by the class sizes, are the epoch's accuracy
        rows = table[table["epoch"] == record["epoch"]].set_index("class").loc[list(CLASSES), "accuracy"]
        assert (rows.to_numpy() * per_class).sum() / per_class.sum() == pytest.approx(record["test_acc"])
    confusion = pd.read_csv(tmp_path / "m.csv")
    assert list(confusion.columns) == classes.CONFUSION_COLUMNS
    facts = metrics.run_facts(history)
    assert list(dict.fromkeys(confusion["which"])) == ["peak", "last"]
    for which, epoch in (("peak", facts["peak_epoch"]), ("last", 3)):
        block = confusion[confusion["which"] == which]
        assert set(block["epoch"]) == {epoch} and len(block) == 100 and block["count"].sum() == 30
        diagonal = block[block["true"] == block["predicted"]]["count"].sum()
        assert 100 * diagonal / 30 == pytest.approx(history[epoch - 1]["test_acc"])
        assert block.groupby("true")["count"].sum().loc[list(CLASSES)].tolist() == per_class.tolist()


def test_a_run_without_a_peak_has_only_its_last_confusion_block():
    test, labels = np.array([[1, 2, 3]], dtype=np.uint8), np.array([1, 2, 4])
    table = classes.confusion_table(test, labels, peak_epoch=None)
    assert set(table["which"]) == {"last"} and table["count"].sum() == 3
    both = classes.confusion_table(test, labels, peak_epoch=1)  # peak and last the same epoch: both blocks
    assert list(dict.fromkeys(both["which"])) == ["peak", "last"] and both["count"].sum() == 6


def test_the_figures_are_png_and_svg_with_the_class_names_as_text_and_the_biggest_losers_first(tmp_path):
    rows = [{"epoch": e, "class": name, "accuracy": acc} for name in CLASSES
            for e, acc in ((1, 50.0), (2, 80.0 if name == "cat" else 60.0), (3, 20.0 if name == "cat" else 58.0))]
    table = pd.DataFrame(rows, columns=classes.CLASS_COLUMNS)
    from alexnet_cifar import plots

    plots.plot_classes(table, 2, plots.figure_paths(tmp_path / "classes.png"), title="run x")
    svg = (tmp_path / "classes.svg").read_text()
    assert (tmp_path / "classes.png").read_bytes()[:8] == PNG_MAGIC
    assert all(f">{name}" in svg for name in CLASSES)  # names as <text>, not glyph outlines
    legend = [line for line in svg.splitlines() if "points from epoch 2 to 3" in line]
    assert "cat (-60.0 points from epoch 2 to 3)" in legend[0]  # the class that lost most, first
    counts = np.diag(np.arange(10, 20))
    counts[3, 5] = 7
    plots.plot_confusion([("peak", 2, counts), ("last", 3, counts)], plots.figure_paths(tmp_path / "conf.png"),
                         title="run x")
    svg = (tmp_path / "conf.svg").read_text()
    assert (tmp_path / "conf.png").read_bytes()[:8] == PNG_MAGIC
    assert "peak epoch 2" in svg and "last epoch 3" in svg and svg.count(">truck<") >= 4  # both axes, both panels
    assert ">65<" in svg and ">35<" in svg  # the cat row in percent: 13 of 20 right, 7 of 20 taken for dogs


def test_class_statistics_over_seeds_count_a_diverged_run_only_before_its_divergence():
    runs = {"s-seed0": {"setting": "s", "seed": 0, "model": "paper", "swept": {}},
            "s-seed1": {"setting": "s", "seed": 1, "model": "paper", "swept": {}},
            "s-seed2": {"setting": "s", "seed": 2, "model": "paper", "swept": {}}}
    def table(values):
        return pd.DataFrame([{"epoch": e, "class": name, "accuracy": v + i} for e, v in enumerate(values, 1)
                             for i, name in enumerate(CLASSES)], columns=classes.CLASS_COLUMNS)
    tables = {"s-seed0": table([10.0, 20.0]), "s-seed1": table([30.0, 50.0]), "s-seed2": table([40.0, 0.0])}
    facts = {"s-seed0": {"diverged_at_epoch": None}, "s-seed1": {"diverged_at_epoch": None},
             "s-seed2": {"diverged_at_epoch": 2}}
    from alexnet_cifar import replicates

    stats = classes.class_settings(replicates.run_table(runs, None), tables, facts)
    assert list(stats.columns) == classes.CLASS_SETTINGS_COLUMNS
    cat = stats[stats["class"] == "cat"].set_index("epoch")
    assert cat.loc[1, "n"] == 3 and cat.loc[1, "mean"] == pytest.approx(statistics.mean([13.0, 33.0, 43.0]))
    assert cat.loc[2, "n"] == 2 and cat.loc[2, "sd"] == pytest.approx(statistics.stdev([23.0, 53.0]))


# -- damaged records ------------------------------------------------------------------------------

def _save(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


DAMAGED = {
    "not an npz": (lambda p, r: p.write_bytes(b"not a zip file"), "cannot be read as an .npz"),
    "no test array": (lambda p, r: _save(p, val=r["val"], val_index=r["val_index"]),
                      "it has no array 'test' (found ['val', 'val_index'])"),
    "no validation arrays": (lambda p, r: _save(p, test=r["test"]), "it has no array 'val', 'val_index'"),
    "an epoch short": (lambda p, r: _save(p, test=r["test"][:2], val=r["val"], val_index=r["val_index"]),
                       "'test' should be integer classes of shape (3 epochs, 30 images), as the history and the "
                       "data say, found uint8 of shape (2, 30)"),
    "an image short": (lambda p, r: _save(p, test=r["test"][:, :-1], val=r["val"], val_index=r["val_index"]),
                       "found uint8 of shape (3, 29)"),
    "a class outside 0-9": (lambda p, r: _save(p, test=np.where(np.arange(30) == 4, 12, r["test"]).astype(np.uint8),
                                               val=r["val"], val_index=r["val_index"]),
                            "'test' should hold classes 0-9, found 12 (epoch 1, image 4; 3 such); either the file "
                            "is damaged (the training writes this file: delete the run's outputs and rerun its "
                            "training), or the run has num_classes above 10"),
    "floats": (lambda p, r: _save(p, test=r["test"].astype(float), val=r["val"], val_index=r["val_index"]),
               "'test' should be integer classes"),
    "a repeated validation index": (lambda p, r: _save(p, test=r["test"], val=r["val"],
                                                      val_index=np.zeros_like(r["val_index"])),
                                    "'val_index' should be distinct indexes of training images"),
}


@pytest.mark.parametrize("damage, expected", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_record_is_refused_in_one_line_and_nothing_is_drawn(recorded, tmp_path, capsys, damage, expected):
    """Through the command line (in this process: the same stages.job as a rule's script), each of
    the two commands stops with one line naming the file, what was expected and what was found."""
    folder, *_ = recorded
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text((folder / "run/history.jsonl").read_text())
    damage(run / "predictions.npz", dict(np.load(folder / "run/predictions.npz")))
    for command in ("classes", "confusion"):
        with pytest.raises(SystemExit) as stop:
            cli.main([command, str(run), "--data", str(folder / "data.npz"), "--csv", str(tmp_path / "out.csv"),
                      "--png", str(tmp_path / "out.png")])
        assert stop.value.code == 1
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert f"error: {run / 'predictions.npz'}: " in line and expected in line, line
        assert not list(tmp_path.glob("out.*"))


def test_the_command_line_builds_the_files_the_workflow_builds(recorded, tmp_path):
    folder, *_ = recorded
    run = folder / "run"
    for command, build in (("classes", stages.class_results), ("confusion", stages.confusion_results)):
        out = tmp_path / command
        assert cli.main([command, str(run), "--data", str(folder / "data.npz"), "--csv", f"{out}.csv",
                         "--png", f"{out}.png", "--title", "t"]) == 0
        build(history=run / "history.jsonl", predictions=run / "predictions.npz", data=folder / "data.npz",
              csv=tmp_path / "direct.csv", png=tmp_path / "direct.png", title="t")
        assert (tmp_path / f"{command}.csv").read_text() == (tmp_path / "direct.csv").read_text()
        assert (tmp_path / f"{command}.svg").stat().st_size > 1000
