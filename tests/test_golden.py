"""The default protocol does not move: a deterministic CPU training at the default settings gives
the numbers recorded before training recipes were added (tests/golden/, commit 606374f)."""
from __future__ import annotations

import json

import pytest
from golden.default_protocol import ISA_ENV, MODELS, golden_path, train_golden, weight_sums, without_seconds

# The last bits of CPU arithmetic depend on the processor's vector instructions (recorded on an
# x86_64 AMD EPYC with AVX2, torch 2.14.1, 2 threads; tests/conftest.py caps them at AVX2 on a
# processor with AVX-512, default_protocol.ISA_ENV). Any change of behaviour (another random draw,
# order, learning rate, initialisation or augmentation) moves these numbers by far more than 1e-6.
REL = 1e-6


@pytest.mark.parametrize("model", MODELS)
def test_a_default_training_gives_the_golden_history_and_weights(model, tmp_path):
    import torch

    assert torch.backends.cpu.get_cpu_capability() == "AVX2", (
        f"torch computes with {torch.backends.cpu.get_cpu_capability()}, the golden files with AVX2: "
        f"set {ISA_ENV} before torch's first operation (tests/conftest.py does), on a processor with AVX2")
    history = without_seconds(train_golden(model, tmp_path))
    golden = [json.loads(line) for line in golden_path(model).read_text().splitlines()]
    # the fields added since (validation) are null at the default settings; the rest as recorded
    assert [{k: r[k] for k in r if k not in golden[0]} for r in history] == [{"val_loss": None, "val_acc": None}] * 2
    assert same_numbers(flat([{k: r[k] for k in golden[0]} for r in history]), flat(golden))
    recorded = json.loads(golden_path(model, "weights.json").read_text())
    sums = weight_sums(tmp_path / "model.pt")
    assert list(sums) == list(recorded)
    assert same_numbers(flat(sums), flat(recorded))


def same_numbers(got: dict, expected: dict) -> bool:
    """Equal keys; integers, booleans and nulls exactly, other numbers within REL."""
    assert list(got) == list(expected)
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=REL), key
        else:
            assert got[key] == value and type(got[key]) is type(value), key
    return True


def flat(value, where="") -> dict:
    """Nested records as {path: number or None}, which pytest.approx compares entry by entry."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{where}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{where}/{i}").items()}
    return {where: value}
