"""The speed benchmark, run on the CPU with a few steps (its numbers are not checked, only its outputs)."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import pytest

from alexnet_cifar import bench


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("bench") / "tiny.npz"
    np.savez(path, train_images=rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8),
             train_labels=rng.integers(0, 10, 16).astype(np.int64),
             test_images=rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8),
             test_labels=rng.integers(0, 10, 8).astype(np.int64))
    return path


def test_bench_cli_writes_csv_and_markdown(tiny_npz, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["bench", "--data", str(tiny_npz), "--models", "paper,torchvision",
                              "--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)])
    bench.main(args)

    frame = pd.read_csv(out / "bench.csv")
    assert list(frame.columns) == bench.COLUMNS
    assert sorted(zip(frame["model"], frame["loop"], strict=True)) == [
        ("paper", "engine"), ("paper", "plain"), ("torchvision", "engine"), ("torchvision", "plain")]
    for _, row in frame.iterrows():
        assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0
        assert row["images_per_s"] == pytest.approx(4000 / row["ms_per_step"])
        assert row["protocol_minutes"] == pytest.approx(row["ms_per_step"] * 12500 * 50 / 60000)
        assert math.isnan(row["peak_mem_mb"])  # no CUDA memory on the CPU
    markdown = (out / "bench.md").read_text()
    assert markdown.startswith("| " + " | ".join(bench.COLUMNS) + " |")
    for model in ("paper", "torchvision"):
        assert model in markdown
    assert "Speedup over plain" in markdown and "1 timed steps" in markdown
    assert markdown in capsys.readouterr().out
    assert not (out / "profile.csv").exists()  # only with --profile


def test_bench_profile_lists_the_step_s_operators(tiny_npz, tmp_path):
    bench.run_bench(tiny_npz, ["paper"], 1, "cpu", tmp_path, warmup=0, loops=["engine"], profile_steps=2)
    profile = pd.read_csv(tmp_path / "profile.csv")
    assert list(profile.columns) == bench.PROFILE_COLUMNS
    assert set(profile["model"]) == {"paper"}
    assert profile["us_per_step"].is_monotonic_decreasing and (profile["us_per_step"] > 0).all()
    assert profile["share_pct"].sum() == pytest.approx(100)
    # Every step runs the 5 convolutions forward and one multi-tensor SGD update (the default):
    # the momentum and the weights, each in one call over all 16 parameter tensors.
    kernels = dict(zip(profile["kernel"], profile["calls_per_step"], strict=True))
    assert kernels["aten::convolution"] == 5 and kernels["aten::_foreach_add_"] == 2
    assert "aten::_fused_sgd_" not in kernels
    markdown = (tmp_path / "bench.md").read_text()
    assert "paper:" in markdown and "ms of device time per eager step" in markdown


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
        {"model": "paper", "loop": "plain", "device_name": "X", "ms_per_step": 4.0},
        {"model": "paper", "loop": "engine", "device_name": "X", "ms_per_step": 2.0},
    ]).reindex(columns=bench.COLUMNS)
    text = bench.bench_markdown(frame, steps=10, warmup=5)
    assert "paper: engine 2.00x" in text and "Device: X" in text
