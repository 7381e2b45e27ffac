"""The speed benchmark, run on the CPU with a few steps (its numbers are not checked, only its outputs)."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import pytest

from alexnet_cifar import bench, cli


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("bench") / "tiny.npz"
    np.savez(path, train_images=rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8),
             train_labels=rng.integers(0, 10, 16).astype(np.int64),
             test_images=rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8),
             test_labels=rng.integers(0, 10, 8).astype(np.int64))
    return path


def test_bench_cli_writes_csv_and_markdown(tiny_npz, tmp_path, capsys, tiny):
    """Two models (the stand-in AlexNet keeps the second one cheap), the plain loop and the engine."""
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["bench", "--data", str(tiny_npz), "--models", f"{tiny},torchvision",
                              "--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)])
    bench.main(args)

    frame = pd.read_csv(out / "bench.csv")
    assert list(frame.columns) == bench.COLUMNS
    assert sorted(zip(frame["model"], frame["loop"], strict=True)) == [
        (tiny, "engine"), (tiny, "plain"), ("torchvision", "engine"), ("torchvision", "plain")]
    for _, row in frame.iterrows():
        assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0
        assert row["images_per_s"] == pytest.approx(4000 / row["ms_per_step"])
        assert row["protocol_minutes"] == pytest.approx(row["ms_per_step"] * 12500 * 50 / 60000)
        assert row["batch_size"] == 4  # the protocol's, when no --batch-size is given
        assert math.isnan(row["peak_mem_mb"])  # no CUDA memory on the CPU
    markdown = (out / "bench.md").read_text()
    assert markdown.startswith("| " + " | ".join(bench.COLUMNS) + " |")
    for model in (tiny, "torchvision"):
        assert model in markdown
    assert "Speedup over plain" in markdown and "1 timed steps" in markdown
    assert markdown in capsys.readouterr().out
    assert not (out / "profile.csv").exists()  # only with --profile


def test_bench_profile_lists_the_step_s_operators(tiny_npz, tmp_path, tiny):
    """On the stand-in AlexNet: its 5 convolutions and 16 parameter tensors, as AlexNet's."""
    bench.run_bench(tiny_npz, [tiny], 1, "cpu", tmp_path, warmup=0, loops=["engine"], profile_steps=2)
    profile = pd.read_csv(tmp_path / "profile.csv")
    assert list(profile.columns) == bench.PROFILE_COLUMNS
    assert set(profile["model"]) == {tiny}
    assert profile["us_per_step"].is_monotonic_decreasing and (profile["us_per_step"] > 0).all()
    assert profile["share_pct"].sum() == pytest.approx(100)
    # Every step runs the 5 convolutions forward and one multi-tensor SGD update (the default):
    # the momentum and the weights, each in one call over all 16 parameter tensors.
    kernels = dict(zip(profile["kernel"], profile["calls_per_step"], strict=True))
    assert kernels["aten::convolution"] == 5 and kernels["aten::_foreach_add_"] == 2
    assert "aten::_fused_sgd_" not in kernels
    markdown = (tmp_path / "bench.md").read_text()
    assert f"{tiny}:" in markdown and "ms of device time per eager step" in markdown


def test_bench_refuses_unknown_names_before_running(tiny_npz, tmp_path):
    with pytest.raises(ValueError, match="unknown loop"):
        bench.run_bench(tiny_npz, ["paper"], 1, "cpu", tmp_path, loops=["plain", "turbo"])
    with pytest.raises(ValueError, match="profile"):
        bench.run_bench(tiny_npz, ["paper"], 1, "cpu", tmp_path, profile_steps=-1)
    with pytest.raises(ValueError, match="unknown model"):
        bench.run_bench(tiny_npz, ["vgg"], 1, "cpu", tmp_path)
    with pytest.raises(ValueError, match="device"):
        bench.resolve_device("tpu")
    assert not (tmp_path / "bench.csv").exists()


def test_markdown_speedups():
    frame = pd.DataFrame([
        {"model": "paper", "loop": "plain", "device_name": "X", "batch_size": 4, "ms_per_step": 4.0},
        {"model": "paper", "loop": "engine", "device_name": "X", "batch_size": 4, "ms_per_step": 2.0},
    ]).reindex(columns=bench.COLUMNS)
    text = bench.bench_markdown(frame, steps=10, warmup=5, epoch_steps=12500)
    assert "paper: engine 2.00x" in text and "Device: X; batch 4" in text and "Recipe" not in text


def test_a_ladder_rung_s_step_is_timed_at_its_batch_size_and_recipe(tiny_npz, tmp_path, capsys):
    """The bench takes the batch size and the recipe settings as train does; the epoch it projects
    is the training split less the validation images, at that batch size."""
    out = tmp_path / "out"
    code = cli.main(["bench", "--data", str(tiny_npz), "--models", "torchvision", "--loops", "engine", "--steps", "1",
                     "--warmup", "0", "--device", "cpu", "--out", str(out), "--batch-size", "8", "--augment-flip",
                     "--augment-translate", "4", "--validation-images", "4", "--label-smoothing", "0.1",
                     "--input-norm", "paper", "--no-bias-decay"])
    assert code == 0
    (row,) = pd.read_csv(out / "bench.csv").to_dict("records")
    assert row["batch_size"] == 8 and row["images_per_s"] == pytest.approx(8000 / row["ms_per_step"])
    assert row["epoch_minutes"] == pytest.approx(row["ms_per_step"] * 6250 / 60000)  # (50,000 - 4) / 8, rounded up
    assert row["protocol_minutes"] == pytest.approx(50 * row["epoch_minutes"])
    markdown = (out / "bench.md").read_text()
    assert "batch 8" in markdown and "6,250 steps (one epoch)" in markdown
    assert ("Recipe: augment_flip true, augment_translate 4, label_smoothing 0.1, validation_images 4, "
            "input_norm paper, bias_decay false." in markdown)
    with pytest.raises(SystemExit) as stop:  # checked as train checks its options
        cli.main(["bench", "--data", str(tiny_npz), "--steps", "1", "--device", "cpu", "--out", str(out),
                  "--lr-schedule", "plateau"])
    assert stop.value.code == 1 and "--lr-schedule: plateau lowers the lr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one batch of 8 training images, got 16 .less 12 held out"):
        bench.run_bench(tiny_npz, ["torchvision"], 1, "cpu", tmp_path, settings={"batch_size": 8,
                                                                                  "validation_images": 12})
