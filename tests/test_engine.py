"""The training engine on the CPU: same numbers as a plain loop, resume, determinism, signals."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet_cifar.config import RunSettings
from alexnet_cifar.data import Cifar10Arrays
from alexnet_cifar.engine import Trainer, fit, read_history, to_model_input
from alexnet_cifar.models import build_model

REPO = Path(__file__).resolve().parents[1]


def arrays(n_train=24, n_test=8, seed=0) -> Cifar10Arrays:
    rng = np.random.default_rng(seed)
    return Cifar10Arrays(rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
                         rng.integers(0, 10, n_train).astype(np.int64),
                         rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
                         rng.integers(0, 10, n_test).astype(np.int64))


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def test_engine_matches_a_straightforward_loop():
    """Same seed, dropout off: the engine's per-epoch losses and final weights equal a plain loop's."""
    torch.set_num_threads(2)
    data, epochs = arrays(n_train=22), 3  # 22 images: five full batches of 4 and one of 2
    settings = RunSettings(model="torchvision", epochs=epochs, lr=0.01, device="cpu")
    trainer = Trainer(settings, data, torch.device("cpu"), log=lambda _: None)
    no_dropout(trainer.model)
    engine_losses = [trainer.train_epoch()[0] for _ in range(epochs)]

    torch.manual_seed(settings.seed)
    model = no_dropout(build_model("torchvision"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order_rng = torch.Generator().manual_seed(settings.seed)
    images, labels = torch.from_numpy(data.train_images), torch.from_numpy(data.train_labels)
    reference_losses = []
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(labels), generator=order_rng).split(4):
            x = F.interpolate(images[batch].float() / 127.5 - 1, size=(224, 224), mode="bilinear")
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        reference_losses.append(total / len(labels))
    assert engine_losses == pytest.approx(reference_losses, rel=1e-5)
    assert engine_losses[-1] < engine_losses[0]  # it learns at all
    for a, b in zip(trainer.model.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def write_npz(path: Path, data: Cifar10Arrays) -> Path:
    np.savez(path, **data._asdict())
    return path


def train_cmd(npz, out, *extra):
    return [sys.executable, "-m", "alexnet_cifar", "train", "--data", str(npz), "--model", "torchvision",
            "--out", str(out), "--device", "cpu", "--deterministic", "--threads", "1", "--eval-batch-size", "8",
            *extra]


def strip_time(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "data.npz", arrays(n_train=40, n_test=8))


@pytest.fixture(scope="module")
def uninterrupted(npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(train_cmd(npz, out, "--epochs", "3"), check=True, capture_output=True, timeout=600)
    return read_history(out / "history.jsonl")


def test_two_runs_with_the_same_seed_are_identical(npz, tmp_path, uninterrupted):
    subprocess.run(train_cmd(npz, tmp_path, "--epochs", "3"), check=True, capture_output=True, timeout=600)
    assert strip_time(read_history(tmp_path / "history.jsonl")) == strip_time(uninterrupted)
    assert len(uninterrupted) == 3


@pytest.mark.parametrize("model", ["paper", "torchvision"])
def test_the_cut_backward_pass_is_exactly_one_backward_pass_and_one_sgd_step(model):
    """The engine's step (classifier's backward and update, then the features') changes the weights
    bit for bit as ``loss.backward()`` and one SGD step over all parameters do, dropout included."""
    torch.set_num_threads(2)
    data = arrays(n_train=8)
    trainer = Trainer(RunSettings(model=model, device="cpu"), data, torch.device("cpu"), log=lambda _: None)
    initial, reference = copy.deepcopy(trainer.model), copy.deepcopy(trainer.model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.001, momentum=0.9, fused=True)
    for step, idx in enumerate(torch.arange(8).view(2, 4).repeat(2, 1)):
        torch.manual_seed(step)  # the same dropout masks for both
        trainer.train_step(idx)
        torch.manual_seed(step)
        x = to_model_input(trainer.train_x[idx], trainer.input_size)
        optimizer.zero_grad()
        F.cross_entropy(reference(x), trainer.train_y[idx]).backward()
        optimizer.step()
    for a, b in zip(trainer.model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(trainer.model.parameters(), initial.parameters()):
        assert not torch.equal(a, b)  # every layer was trained


def test_fused_and_foreach_sgd_train_alike_and_a_resume_keeps_the_chosen_update(tmp_path):
    """The fused update is the default, agrees with foreach up to rounding, and a checkpoint written
    with one does not bring it back into a run that asked for the other."""
    torch.set_num_threads(2)
    data = arrays(n_train=16)
    trainers = {}
    for fused in (True, False):
        settings = RunSettings(model="paper", epochs=2, device="cpu", fused_sgd=fused)
        trainers[fused] = Trainer(settings, data, torch.device("cpu"), log=lambda _: None)
        no_dropout(trainers[fused].model)
    for part in ("features", "classifier"):
        assert trainers[True].optimizers[part].param_groups[0]["fused"] is True
        assert trainers[False].optimizers[part].param_groups[0]["foreach"] is True
    losses = {fused: [t.train_epoch()[0] for _ in range(2)] for fused, t in trainers.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for a, b in zip(trainers[True].model.parameters(), trainers[False].model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)

    fingerprint = RunSettings(model="paper").fingerprint("md5")
    trainers[True].save_checkpoint(tmp_path / "checkpoint.pt", fingerprint)
    resumed = Trainer(RunSettings(model="paper", device="cpu", fused_sgd=False), data, torch.device("cpu"),
                      log=lambda _: None)
    assert resumed.load_checkpoint(tmp_path / "checkpoint.pt", fingerprint)
    for optimizer in resumed.optimizers.values():
        group = optimizer.param_groups[0]
        assert (group["fused"], group["foreach"]) == (False, True)
        assert optimizer.state_dict()["state"]  # the momenta came with it


@pytest.mark.parametrize("signum, status", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 128 + 15)])
def test_an_interrupted_run_resumes_to_the_same_history(npz, tmp_path, uninterrupted, signum, status):
    log = tmp_path / "train.log"
    proc = subprocess.Popen(train_cmd(npz, tmp_path, "--epochs", "3", "--log", str(log)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (tmp_path / "checkpoint.pt").exists():  # written after the first epoch
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its checkpoint"
        time.sleep(0.05)
    time.sleep(0.3)  # inside the second epoch
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == status
    assert not (tmp_path / "history.jsonl").exists()
    assert (tmp_path / "checkpoint.pt").exists()

    subprocess.run(train_cmd(npz, tmp_path, "--epochs", "3", "--log", str(log)), check=True,
                   capture_output=True, timeout=600)
    assert "resuming from" in log.read_text() and "after epoch 1" in log.read_text()
    assert strip_time(read_history(tmp_path / "history.jsonl")) == strip_time(uninterrupted)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["resumed_from_epoch"] >= 1


def test_a_checkpoint_from_other_settings_is_set_aside(npz, tmp_path):
    data = arrays(n_train=8, n_test=4)
    other = RunSettings(model="torchvision", epochs=2, lr=0.02, device="cpu")
    trainer = Trainer(other, data, torch.device("cpu"), log=lambda _: None)
    trainer.history = [{"epoch": 1, "test_acc": 99.0}]
    trainer.save_checkpoint(tmp_path / "checkpoint.pt", other.fingerprint("md5"))
    messages = []
    history, resumed = fit(RunSettings(model="torchvision", epochs=1, device="cpu"), data, tmp_path,
                           torch.device("cpu"), data_md5="md5", log=messages.append)
    assert resumed == 0 and history[0]["test_acc"] != 99.0
    assert any("written by other settings or data" in m for m in messages)
    assert len(list(tmp_path.glob("checkpoint.set-aside-*.pt"))) == 1


def test_a_checkpoint_of_an_older_format_is_set_aside_naming_both_formats(tmp_path):
    settings = RunSettings(model="torchvision", epochs=1, device="cpu")
    trainer = Trainer(settings, arrays(8, 4), torch.device("cpu"), log=lambda _: None)
    old = {**trainer.state(settings.fingerprint("md5")), "format": 1}
    torch.save(old, tmp_path / "checkpoint.pt")
    messages = []
    _, resumed = fit(settings, arrays(8, 4), tmp_path, torch.device("cpu"), data_md5="md5", log=messages.append)
    assert resumed == 0
    assert any("it has format 1, this version reads format 2" in m for m in messages)
    assert len(list(tmp_path.glob("checkpoint.set-aside-*.pt"))) == 1


def test_an_unreadable_checkpoint_is_set_aside(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    messages = []
    history, resumed = fit(RunSettings(model="torchvision", epochs=1, device="cpu"), arrays(8, 4), tmp_path,
                           torch.device("cpu"), data_md5="md5", log=messages.append)
    assert resumed == 0 and len(history) == 1
    assert any("cannot be read" in m for m in messages)


def test_a_diverging_run_stops_and_still_writes_its_model(tmp_path):
    history, _ = fit(RunSettings(model="paper", epochs=5, lr=1000.0, device="cpu"), arrays(16, 4), tmp_path,
                     torch.device("cpu"), data_md5="md5", log=lambda _: None, poll_every=1)
    assert len(history) < 5
    assert history[-1]["diverged_at_step"] >= 1 and history[-1]["train_loss"] is None
    assert (tmp_path / "model.pt").exists() and not (tmp_path / "checkpoint.pt").exists()
    json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])  # strict JSON, no NaN


def test_auto_device_without_a_gpu_stops_with_the_cpu_estimate(npz, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "alexnet_cifar", "train", "--data", str(npz), "--model", "paper",
                             "--out", str(tmp_path), "--epochs", "50"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no CUDA GPU is available" in result.stderr and "days" in result.stderr
    assert "train.device: cpu" in result.stderr
    assert not (tmp_path / "history.jsonl").exists()


class FakeTerminal:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_bar_only_on_a_terminal_and_fed_by_the_epoch():
    from alexnet_cifar.stages import progress_bar

    assert progress_bar(FakeTerminal(tty=False)) is None
    terminal = FakeTerminal(tty=True)
    trainer = Trainer(RunSettings(model="torchvision", epochs=1, device="cpu"), arrays(n_train=8, n_test=4),
                      torch.device("cpu"), log=lambda _: None, progress=progress_bar(terminal, width=10))
    trainer.train_epoch()
    assert "[#####.....] 1/2 steps" in terminal.text and terminal.text.endswith("[##########] 2/2 steps\n")
