"""The training engine on the CPU: same numbers as a plain loop, resume, determinism, signals."""
from __future__ import annotations

import copy
import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_model
import torch
import torch.nn.functional as F

from alexnet_cifar import checkpoint
from alexnet_cifar.config import RunSettings
from alexnet_cifar.data import Cifar10Arrays
from alexnet_cifar.engine import (
    Evaluation,
    StopFlag,
    Trainer,
    TrainingInterrupted,
    fit,
    stop_on_signals,
    to_model_input,
)
from alexnet_cifar.history import read_history
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


def test_engine_matches_a_straightforward_loop(tiny):
    """Same seed, dropout off: the engine's per-epoch losses and final weights equal a plain loop's
    (on the stand-in AlexNet: the loop's logic does not depend on the network's size)."""
    torch.set_num_threads(2)
    data, epochs = arrays(n_train=10), 2  # 10 images: two full batches of 4 and one of 2
    # The protocol's lr: at 0.01 rounding differences (the two scale the pixels in another order)
    # grew to 1e-4 within 18 steps of the torchvision AlexNet, at 0.001 they stayed at 1e-9.
    settings = RunSettings(model=tiny, epochs=epochs, lr=0.001, device="cpu")
    trainer = Trainer(settings, data, torch.device("cpu"))
    no_dropout(trainer.model)
    engine_losses = [trainer.train_epoch()[0] for _ in range(epochs)]

    torch.manual_seed(settings.seed)
    model = no_dropout(build_model(tiny))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    order_rng = torch.Generator().manual_seed(settings.seed)
    images, labels = torch.from_numpy(data.train_images), torch.from_numpy(data.train_labels)
    reference_losses = []
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(labels), generator=order_rng).split(4):
            size = trainer.input_size
            x = F.interpolate(images[batch].float() / 127.5 - 1, size=(size, size), mode="bilinear")
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        reference_losses.append(total / len(labels))
    assert engine_losses == pytest.approx(reference_losses, rel=1e-5)
    assert engine_losses[-1] < engine_losses[0]  # it learns at all
    for a, b in zip(trainer.model.parameters(), model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def write_npz(path: Path, data: Cifar10Arrays) -> Path:
    np.savez(path, **data._asdict())
    return path


def train_cmd(npz, out, *extra):
    return [sys.executable, "-m", "alexnet_cifar", "train", "--data", str(npz), "--model", "torchvision",
            "--out", str(out), "--device", "cpu", "--deterministic", "--threads", "2", "--eval-batch-size", "8",
            *extra]


def strip_time(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


#: Steps an epoch in the subprocess tests: a stop asked for in the second epoch's first step must
#: find steps left to stop (each step of a 57 M-parameter model takes most of a second on 2 CPU cores).
STEPS = 3


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "data.npz", arrays(n_train=4 * STEPS, n_test=4))


@pytest.fixture(scope="module")
def uninterrupted(npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(train_cmd(npz, out, "--epochs", "2"), check=True, capture_output=True, timeout=600)
    return read_history(out / "history.jsonl")


def test_the_step_is_one_backward_pass_and_one_sgd_step_dropout_included(tiny):
    """The engine's step changes the weights bit for bit as ``loss.backward()`` and one
    multi-tensor SGD step over all parameters do, with the same dropout masks."""
    torch.set_num_threads(2)
    data = arrays(n_train=8)
    trainer = Trainer(RunSettings(model=tiny, device="cpu"), data, torch.device("cpu"))
    assert trainer.optimizer.param_groups[0]["foreach"] is True  # the update a GPU has measured
    initial, reference = copy.deepcopy(trainer.model), copy.deepcopy(trainer.model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.001, momentum=0.9, foreach=True)
    for step, idx in enumerate(torch.arange(8).view(2, 4)):
        torch.manual_seed(step)  # the same dropout masks for both
        trainer.train_step(idx)
        torch.manual_seed(step)
        x = to_model_input(trainer.train_x[idx], trainer.input_size)
        optimizer.zero_grad()
        F.cross_entropy(reference(x), trainer.train_y[idx]).backward()
        optimizer.step()
    for a, b in zip(trainer.model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(trainer.model.parameters(), initial.parameters(), strict=True):
        assert not torch.equal(a, b)  # every layer was trained


def test_fused_sgd_is_an_option_that_trains_alike_and_a_resume_keeps_the_chosen_update(tmp_path, tiny):
    """``fused_sgd`` agrees with the default foreach update up to rounding, and a checkpoint written
    with one does not bring it back into a run that asked for the other."""
    torch.set_num_threads(2)
    data = arrays(n_train=8)
    trainers = {}
    for fused in (True, False):
        settings = RunSettings(model=tiny, epochs=2, device="cpu", fused_sgd=fused)
        trainers[fused] = Trainer(settings, data, torch.device("cpu"))
        no_dropout(trainers[fused].model)
    assert trainers[True].optimizer.param_groups[0]["fused"] is True
    assert trainers[False].optimizer.param_groups[0]["foreach"] is True
    losses = {fused: [t.train_epoch()[0] for _ in range(2)] for fused, t in trainers.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for a, b in zip(trainers[True].model.parameters(), trainers[False].model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)

    fused = trainers[True]
    fused.history = [record(1)]
    fused.predictions.add("test", torch.zeros(len(fused.test_y)))  # as an evaluation leaves them
    fused.steps_done = fused.steps_per_epoch
    fingerprint = RunSettings(model=tiny, epochs=2).fingerprint("md5")
    checkpoint.save(tmp_path / "checkpoint.pt", fused, fingerprint)
    resumed = Trainer(RunSettings(model=tiny, epochs=2, device="cpu"), data, torch.device("cpu"))
    assert checkpoint.resume(tmp_path / "checkpoint.pt", resumed, fingerprint, log=print)
    group = resumed.optimizer.param_groups[0]
    assert (group["fused"], group["foreach"]) == (False, True)
    assert len(resumed.optimizer.state_dict()["state"]) == len(list(resumed.model.parameters()))  # momenta came


def record(epoch: int, **changes) -> dict:
    """A well-formed history record."""
    return {"epoch": epoch, "train_loss": 2.0, "train_acc": 10.0, "test_loss": 2.0, "test_acc": 10.0,
            "lr": 0.001, "seconds": 1.0, "diverged_at_step": None, **changes}


class Terminal:
    """A process whose stderr is a pseudo-terminal, where the training draws its progress bar after
    every step ("[###...] 3/6 steps", a new line after the epoch's last): what a test reads to know
    which step the run is in, rather than guessing from the clock."""

    def __init__(self, cmd: list[str]) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        self.master, self.text = master, ""

    def _read(self) -> bool:
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: every writer closed the terminal, the process ended
            chunk = b""
        self.text += chunk.decode(errors="replace")
        return bool(chunk)

    def wait_for(self, pattern: str) -> None:
        """Read until ``pattern`` (a regex, DOTALL) matches what the process wrote."""
        while not re.search(pattern, self.text, re.DOTALL):
            assert self._read(), f"the process ended before {pattern!r}:\n{self.text[-3000:]}"

    def finish(self) -> int:
        """Read to the end (a full terminal would block the writer), then the exit status."""
        while self._read():
            pass
        os.close(self.master)
        return self.proc.wait()


@pytest.mark.parametrize("signum, status", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 128 + 15)])
def test_an_interrupted_run_resumes_to_the_same_history(npz, tmp_path, uninterrupted, signum, status):
    """Stopped in the second epoch, when its progress bar shows the first step done (the first
    epoch's checkpoint is written by then): SIGKILL, or SIGTERM, which the training obeys after the
    current step, with two steps left to stop. Run again, it resumes to the uninterrupted history."""
    log = tmp_path / "train.log"
    run = Terminal(train_cmd(npz, tmp_path, "--epochs", "2", "--log", str(log)))
    run.wait_for(rf"{STEPS}/{STEPS} steps\s.*\] 1/{STEPS} steps")  # epoch 2, step 1
    run.proc.send_signal(signum)
    assert run.finish() == status
    assert not (tmp_path / "history.jsonl").exists()
    assert (tmp_path / "checkpoint.pt").exists()
    if signum == signal.SIGTERM:
        assert "stopped by signal SIGTERM" in log.read_text()

    subprocess.run(train_cmd(npz, tmp_path, "--epochs", "2", "--log", str(log)), check=True,
                   capture_output=True, timeout=600)
    assert "resuming from" in log.read_text() and "after epoch 1" in log.read_text()
    assert strip_time(read_history(tmp_path / "history.jsonl")) == strip_time(uninterrupted)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["resumed_from_epoch"] == 1


def test_a_checkpoint_from_other_settings_is_set_aside(tmp_path, tiny):
    data = arrays(n_train=8, n_test=4)
    other = RunSettings(model=tiny, epochs=2, lr=0.02, device="cpu")
    trainer = Trainer(other, data, torch.device("cpu"))
    trainer.history, trainer.steps_done = [record(1, test_acc=99.0)], 2
    checkpoint.save(tmp_path / "checkpoint.pt", trainer, other.fingerprint("md5"))
    messages = []
    history, resumed = fit(RunSettings(model=tiny, epochs=1, device="cpu"), data, tmp_path,
                           torch.device("cpu"), data_md5="md5", log=messages.append)
    assert resumed == 0 and history[0]["test_acc"] != 99.0
    assert any("written by other settings or data" in m for m in messages)
    assert len(list(tmp_path.glob("checkpoint.set-aside-*.pt"))) == 1


def test_a_checkpoint_of_an_older_format_is_set_aside_naming_both_formats(tmp_path, tiny):
    settings = RunSettings(model=tiny, epochs=2, device="cpu")
    trainer = Trainer(settings, arrays(8, 4), torch.device("cpu"))
    old = checkpoint.state(trainer, settings.fingerprint("md5"))
    old["format"] = 3  # before the augmentation generator, the schedule's state and the lr
    for key in ("schedule", "lr"):
        del old[key]
    del old["rng"]["augment"]
    torch.save(old, tmp_path / "checkpoint.pt")
    messages = []
    assert not checkpoint.resume(tmp_path / "checkpoint.pt", trainer, settings.fingerprint("md5"), log=messages.append)
    assert any("it has format 3, this version reads format 4" in m for m in messages)
    assert len(list(tmp_path.glob("checkpoint.set-aside-*.pt"))) == 1


def test_a_checkpoint_keeps_the_layout_of_format_4(tmp_path, tiny):
    """Each owner gives its own part, and together they are still the layout that format 4 has had
    on disk since before the parts had owners, plus the mean image of ``input_norm`` (a part a
    format-4 checkpoint written before it lacks; the next test resumes one): interrupted runs of
    earlier versions resume. A change here needs a new format number (checkpoint.FORMAT) and a
    CHANGELOG entry."""
    settings = RunSettings(model=tiny, epochs=2, device="cpu", augment_flip=True, validation_images=2)
    trainer = Trainer(settings, arrays(8, 4), torch.device("cpu"))
    checkpoint.save(tmp_path / "checkpoint.pt", trainer, "fingerprint")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint.FORMAT == 4
    assert list(saved) == ["format", "fingerprint", "epoch", "steps_done", "history", "model", "optimizer", "rng",
                           "schedule", "lr", "predictions", "input_norm"]
    assert list(saved["rng"]) == ["torch", "data_order", "cuda", "augment"]
    assert list(saved["schedule"]) == ["drops", "best", "bad_epochs"]
    assert saved["predictions"] == {"test": None, "val": None}
    assert list(saved["model"]) == list(trainer.model.state_dict())


def test_a_checkpoint_written_before_the_mean_image_was_carried_resumes_a_run_on_the_write_up_s_input(tmp_path,
                                                                                                        tiny):
    """Format 4 before ``input_norm`` had no such part: for an ``input_norm: half`` run that means
    no mean image, which is what the run has, so an interrupted run goes on."""
    settings = RunSettings(model=tiny, epochs=2, device="cpu", weight_decay=5e-4)
    trainer = Trainer(settings, arrays(8, 4), torch.device("cpu"))
    trainer.train_epoch()
    trainer.history, trainer.steps_done = [record(1)], trainer.steps_per_epoch
    trainer.predictions.add("test", torch.zeros(4))  # as an evaluation leaves them
    old = checkpoint.state(trainer, settings.fingerprint("md5"))
    assert old.pop("input_norm") == {"mean": None}
    torch.save(old, tmp_path / "checkpoint.pt")
    resumed = Trainer(settings, arrays(8, 4), torch.device("cpu"))
    assert checkpoint.resume(tmp_path / "checkpoint.pt", resumed, settings.fingerprint("md5"), log=print)
    assert [r["epoch"] for r in resumed.history] == [1] and resumed.input_norm.mean is None
    for a, b in zip(resumed.model.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_unreadable_checkpoint_is_set_aside(tmp_path, tiny):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    messages = []
    history, resumed = fit(RunSettings(model=tiny, epochs=1, device="cpu"), arrays(8, 4), tmp_path,
                           torch.device("cpu"), data_md5="md5", log=messages.append)
    assert resumed == 0 and len(history) == 1
    assert any("cannot be read" in m for m in messages)


class StopAfterFirstEpoch(Exception):
    pass


def _stop_after_first_epoch(records):
    raise StopAfterFirstEpoch


def _damage(ck: dict, part: str) -> None:
    """Break one part of a real checkpoint, as a bad disk, an old writer or a hand edit would."""
    first_weight = next(iter(ck["model"]))
    if part == "model: a weight of another shape":
        ck["model"][first_weight] = ck["model"][first_weight][:1]
    elif part == "model: a NaN weight":
        ck["model"][first_weight][0].view(-1)[0] = float("nan")
    elif part == "model: a missing weight":
        del ck["model"][first_weight]
    elif part == "optimizer: a momentum of another shape":
        ck["optimizer"]["state"][3]["momentum_buffer"] = torch.zeros(3)
    elif part == "optimizer: a missing momentum":
        del ck["optimizer"]["state"][5]
    elif part == "rng: the torch state":
        ck["rng"]["torch"] = ck["rng"]["torch"][:100]
    elif part == "rng: the data order state":
        ck["rng"]["data_order"] = ck["rng"]["data_order"].float()
    elif part == "history: an accuracy over 100":
        ck["history"][0]["test_acc"] = 150.0
    elif part == "history: a missing field":
        del ck["history"][0]["train_loss"]
    elif part == "step count":
        ck["steps_done"] += 1
    elif part == "epoch count":
        ck["epoch"] = 2
    elif part == "rng: the augmentation state":
        ck["rng"]["augment"] = ck["rng"]["augment"][:50]
    elif part == "schedule: a plateau count its history does not give":
        ck["schedule"]["bad_epochs"] += 1
    elif part == "lr: not the lr of the last epoch":
        ck["lr"] *= 10
    elif part == "history: an lr the schedule does not give":
        ck["history"][0]["lr"] *= 10
        ck["lr"] *= 10
    elif part == "history: a validation accuracy over 100":
        ck["history"][0]["val_acc"] = 101.0
    elif part == "predictions: a test row of another length":
        ck["predictions"]["test"] = ck["predictions"]["test"][:, :-1]
    elif part == "predictions: a class beyond the model's outputs":
        ck["predictions"]["val"][0, 0] = 10
    elif part == "predictions: no validation rows":
        ck["predictions"]["val"] = None
    elif part == "input_norm: the mean image of other images":
        ck["input_norm"]["mean"][0, 0, 0] += 1.0
    elif part == "input_norm: no mean image (as a checkpoint written before it)":
        del ck["input_norm"]
    else:
        raise AssertionError(part)


DAMAGES = ["model: a weight of another shape", "model: a NaN weight", "model: a missing weight",
           "optimizer: a momentum of another shape", "optimizer: a missing momentum", "rng: the torch state",
           "rng: the data order state", "history: an accuracy over 100", "history: a missing field",
           "step count", "epoch count", "rng: the augmentation state",
           "schedule: a plateau count its history does not give", "lr: not the lr of the last epoch",
           "history: an lr the schedule does not give", "history: a validation accuracy over 100",
           "predictions: a test row of another length", "predictions: a class beyond the model's outputs",
           "predictions: no validation rows", "input_norm: the mean image of other images",
           "input_norm: no mean image (as a checkpoint written before it)"]

#: Every recipe setting on (the plateau, the schedule with a state, for the schedule).
EVERY_RECIPE = {"augment_flip": True, "augment_translate": 4, "augment_pca_colour": 0.1, "lr_schedule": "plateau",
                "lr_patience": 1, "lr_max_drops": 2, "nesterov": True, "weight_decay": 5e-4,
                "label_smoothing": 0.1, "init": "paper", "validation_images": 2, "tta_flip": True,
                "input_norm": "paper", "bias_decay": False}


@pytest.fixture(scope="module")
def first_epoch_checkpoint(tmp_path_factory):
    """A genuine checkpoint after epoch 1 of 4 (deterministic, one thread count, every recipe
    setting on) and the history of a fresh, uninterrupted run of the same settings. The network is
    a small stand-in (tests/tiny_model.py): the checkpoint's logic does not depend on its size, and
    each of the damaged runs below trains a whole fresh run."""
    torch.set_num_threads(2)  # every run of these tests then uses the same thread count
    with tiny_model.registered() as model:
        settings = RunSettings(model=model, epochs=4, device="cpu", deterministic=True, eval_batch_size=8,
                               **{**EVERY_RECIPE, "validation_images": 10, "lr": 0.05})
        data = arrays(n_train=26, n_test=12)  # 10 held out (one a class), 4 steps an epoch
        fresh_dir, stopped_dir = tmp_path_factory.mktemp("fresh"), tmp_path_factory.mktemp("stopped")
        fresh, _ = fit(settings, data, fresh_dir, torch.device("cpu"), data_md5="md5", log=lambda _: None)
        with pytest.raises(StopAfterFirstEpoch):
            fit(settings, data, stopped_dir, torch.device("cpu"), data_md5="md5", log=lambda _: None,
                on_epoch=_stop_after_first_epoch)
        yield (settings, data, torch.load(stopped_dir / "checkpoint.pt", weights_only=True), strip_time(fresh),
               fresh_dir)


def test_an_intact_checkpoint_resumes_to_the_fresh_run_s_history(first_epoch_checkpoint, tmp_path):
    settings, data, ck, fresh, _ = first_epoch_checkpoint
    torch.save(ck, tmp_path / "checkpoint.pt")
    messages = []
    history, resumed = fit(settings, data, tmp_path, torch.device("cpu"), data_md5="md5", log=messages.append)
    assert resumed == 1 and any("after epoch 1" in m for m in messages)
    assert strip_time(history) == fresh


def test_a_run_with_every_recipe_setting_stopped_by_sigterm_resumes_to_the_same_history(first_epoch_checkpoint,
                                                                                        tmp_path):
    """SIGTERM after epoch 1 (sent by the run to itself, as SLURM would send it): the training stops
    at its next step keeping the checkpoint; run again, it ends with the uninterrupted history:
    the augmentation draws, the plateau's state and each epoch's lr included."""
    settings, data, _, fresh, fresh_dir = first_epoch_checkpoint
    flag = StopFlag()

    def sigterm_after_epoch_1(records):
        if len(records) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_on_signals(flag), pytest.raises(TrainingInterrupted):
        fit(settings, data, tmp_path, torch.device("cpu"), data_md5="md5", log=lambda _: None, stop=flag,
            on_epoch=sigterm_after_epoch_1)
    assert flag.signum == signal.SIGTERM and (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "history.jsonl").exists()
    history, resumed = fit(settings, data, tmp_path, torch.device("cpu"), data_md5="md5", log=lambda _: None)
    assert resumed == 1 and strip_time(history) == fresh
    assert all(r["val_acc"] is not None for r in history)
    record, uninterrupted = (np.load(folder / "predictions.npz") for folder in (tmp_path, fresh_dir))
    for key in ("test", "val", "val_index"):  # the record of predictions too
        np.testing.assert_array_equal(record[key], uninterrupted[key])


@pytest.mark.parametrize("part", DAMAGES)
def test_a_damaged_checkpoint_part_leaves_the_run_exactly_as_a_fresh_one(first_epoch_checkpoint, tmp_path, part):
    """Resuming is all or nothing: whichever part is bad, nothing of the checkpoint is taken, the
    file is set aside with the part named, and the history equals a fresh run's."""
    settings, data, ck, fresh, _ = first_epoch_checkpoint
    damaged = copy.deepcopy(ck)
    _damage(damaged, part)
    torch.save(damaged, tmp_path / "checkpoint.pt")
    messages = []
    history, resumed = fit(settings, data, tmp_path, torch.device("cpu"), data_md5="md5", log=messages.append)
    assert resumed == 0
    assert strip_time(history) == fresh
    (message,) = [m for m in messages if "not resuming" in m]
    named = part.split(":")[0].replace("rng", "RNG state")
    assert named.split()[0] in message, message
    assert len(list(tmp_path.glob("checkpoint.set-aside-*.pt"))) == 1


def test_a_diverging_run_stops_and_still_writes_its_model(tmp_path, tiny):
    history, _ = fit(RunSettings(model=tiny, epochs=5, lr=1000.0, device="cpu"), arrays(16, 4), tmp_path,
                     torch.device("cpu"), data_md5="md5", log=lambda _: None, poll_every=1)
    assert len(history) < 5
    assert history[-1]["diverged_at_step"] >= 1 and history[-1]["train_loss"] is None
    assert (tmp_path / "model.pt").exists() and not (tmp_path / "checkpoint.pt").exists()
    json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])  # strict JSON, no NaN


def test_weights_that_go_non_finite_in_the_last_update_count_as_divergence(tmp_path, monkeypatch, tiny):
    """Every training loss finite, yet the epoch's last update left weights that evaluate to a NaN
    loss (seen with lr 1000): the epoch is marked diverged at its last step, and training stops."""
    monkeypatch.setattr(Trainer, "evaluate",
                        lambda self, split="test": Evaluation(float("nan"), 10.0, torch.zeros(len(self.test_y))))
    history, _ = fit(RunSettings(model=tiny, epochs=3, device="cpu"), arrays(8, 4), tmp_path,
                     torch.device("cpu"), data_md5="md5", log=lambda _: None)
    assert len(history) == 1 and history[0]["diverged_at_step"] == 2  # 8 images: 2 steps
    assert history[0]["train_loss"] is not None and history[0]["test_loss"] is None
    assert read_history(tmp_path / "history.jsonl") == history


def test_auto_device_without_a_gpu_stops_with_the_cpu_estimate(npz, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "alexnet_cifar", "train", "--data", str(npz), "--model", "paper",
                             "--out", str(tmp_path), "--epochs", "50"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    # 50 epochs of 3 steps of 0.84 s
    assert "no CUDA GPU is available" in result.stderr and "would take about 2 minutes." in result.stderr
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


def test_progress_bar_only_on_a_terminal_and_fed_by_the_epoch(tiny):
    from alexnet_cifar.stages import progress_bar

    assert progress_bar(FakeTerminal(tty=False)) is None
    terminal = FakeTerminal(tty=True)
    trainer = Trainer(RunSettings(model=tiny, epochs=1, device="cpu"), arrays(n_train=8, n_test=4),
                      torch.device("cpu"), progress=progress_bar(terminal, width=10))
    trainer.train_epoch()
    assert "[#####.....] 1/2 steps" in terminal.text and terminal.text.endswith("[##########] 2/2 steps\n")


def _cuda_calls_off_the_run_s_device(path: Path) -> list[str]:
    """Calls in ``path`` that would act on the *current* CUDA device rather than the run's: a
    stream, RNG or sync call without a device argument, or a graph capture outside
    ``with on_device(...)``."""
    import ast

    needs_device = {"Stream", "current_stream", "get_rng_state", "set_rng_state", "synchronize"}
    needs_context = {"graph", "CUDAGraph", "stream"}
    tree = ast.parse(path.read_text())
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any("on_device" in ast.unparse(item.context_expr) for item in node.items):
            inside |= {id(n) for n in ast.walk(node)}
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and ast.unparse(node.func).startswith("torch.cuda.")):
            continue
        name = ast.unparse(node.func).removeprefix("torch.cuda.")
        if name in needs_device and not (node.args or node.keywords):
            problems.append(f"{path.name}:{node.lineno} torch.cuda.{name}() without the run's device")
        if name in needs_context and id(node) not in inside:
            problems.append(f"{path.name}:{node.lineno} torch.cuda.{name} outside `with on_device(...)`")
    return problems


def test_every_cuda_call_acts_on_the_run_s_device_not_the_current_one(tmp_path):
    """``train.device: cuda:N`` must warm up, capture, stream and draw random numbers on GPU N.
    Without a GPU this is checked in the code: no call may fall back to the current device."""
    src = REPO / "src/alexnet_cifar"
    assert _cuda_calls_off_the_run_s_device(src / "engine.py") == []
    assert _cuda_calls_off_the_run_s_device(src / "checkpoint.py") == []
    # the check itself finds the mistakes it is for
    bad = tmp_path / "example.py"
    bad.write_text("import torch\ns = torch.cuda.Stream()\ng = torch.cuda.CUDAGraph()\n")
    assert len(_cuda_calls_off_the_run_s_device(bad)) == 2
