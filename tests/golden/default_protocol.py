"""The golden default history: a deterministic CPU training at the default settings, recorded with
the code of commit 606374f (before training recipes existed), so that any later change to the
engine that alters the default protocol's numbers is seen.

``python tests/golden/default_protocol.py`` rewrites the files; do that only for a change that is
meant to alter the default protocol's numbers, and say why in the commit.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = ("torchvision", "paper")
#: 10 training images (batches of 4, 4 and the last, smaller one of 2), 6 test images evaluated
#: in batches of 4 and 2, two epochs, two threads (CPU results differ bitwise between thread counts)
N_TRAIN, N_TEST, EPOCHS, EVAL_BATCH, THREADS = 10, 6, 2, 4, 2
#: The vector instructions the files were recorded with (x86_64, AMD EPYC): the last bits of CPU
#: arithmetic depend on them, and both torch's own kernels and oneDNN's pick the widest the
#: processor has unless told. These variables cap them at AVX2, so a processor with AVX-512 gives
#: the same numbers; they take effect only if set before torch's first operation (tests/conftest.py).
ISA_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def golden_path(model: str, what: str = "history.jsonl") -> Path:
    return HERE / f"{model}.{what}"


def golden_data():
    """Images and labels from a formula, not a random generator whose stream may change between
    numpy versions."""
    from alexnet_cifar.data import Cifar10Arrays

    def images(n: int, offset: int) -> np.ndarray:
        i = np.arange(n * 3 * 32 * 32, dtype=np.int64) + offset
        return ((i * 2654435761) % 251).astype(np.uint8).reshape(n, 3, 32, 32)

    def labels(n: int, offset: int) -> np.ndarray:
        return ((np.arange(n, dtype=np.int64) + offset) * 7 % 10).astype(np.int64)

    return Cifar10Arrays(images(N_TRAIN, 0), labels(N_TRAIN, 0), images(N_TEST, 10**6), labels(N_TEST, 3))


def train_golden(model: str, out_dir: Path) -> list[dict]:
    """The default settings (every recipe setting at its default), deterministic, on the CPU."""
    import torch

    from alexnet_cifar.config import RunSettings
    from alexnet_cifar.engine import fit

    torch.set_num_threads(THREADS)
    settings = RunSettings(model=model, epochs=EPOCHS, device="cpu", deterministic=True, eval_batch_size=EVAL_BATCH)
    history, _ = fit(settings, golden_data(), out_dir, torch.device("cpu"), data_md5="golden", log=lambda _: None)
    return history


def weight_sums(model_file: Path) -> dict[str, list[float]]:
    """Each trained parameter's sum and sum of squares (float64): the initialisation and every
    update of the run in a few numbers, which the history's near-chance losses could hide."""
    import torch

    state = torch.load(model_file, weights_only=True)["state_dict"]
    return {name: [float(t.double().sum()), float(t.double().square().sum())] for name, t in state.items()}


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def main() -> None:
    import os

    os.environ.update(ISA_ENV)  # before torch is imported below
    for model in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            history = train_golden(model, Path(tmp))
            sums = weight_sums(Path(tmp) / "model.pt")
        golden_path(model).write_text("".join(json.dumps(r) + "\n" for r in without_seconds(history)))
        golden_path(model, "weights.json").write_text(json.dumps(sums, indent=1) + "\n")
        print(f"wrote {golden_path(model)} and {golden_path(model, 'weights.json')}")


if __name__ == "__main__":
    sys.exit(main())
