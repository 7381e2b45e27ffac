"""GPU assignment without GPUs: alexnet_cifar.devices with fake device counts, on the CPU.

The claims run in separate processes, as trainings do: a ``flock`` is per open file, and the kernel
drops it when the holding process ends.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alexnet_cifar import devices
from alexnet_cifar.devices import DeviceError, about, claim_gpu, estimate_cpu_seconds, resolve_device

SRC = Path(__file__).resolve().parents[1] / "src"

# Claims a GPU (printing "... waiting" while all are busy), prints its index, then holds it until
# its stdin is closed.
HOLDER = textwrap.dedent("""
    import sys
    from alexnet_cifar.devices import DeviceError, claim_gpu
    try:
        index = claim_gpu(int(sys.argv[1]), sys.argv[2], wait_seconds=float(sys.argv[3]), poll=0.05,
                          log=lambda message: print(message, flush=True))
    except DeviceError as exc:
        print("DeviceError:", exc, flush=True)
        sys.exit(3)
    print(index, flush=True)
    sys.stdin.read()
""")


class Holder:
    """A process that claims one of ``count`` GPUs (locks in ``lock_dir``) and keeps it until released."""

    def __init__(self, count: int, lock_dir: Path, wait_seconds: float = 0.0) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(count), str(lock_dir), str(wait_seconds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self._result: str | None = None

    @property
    def result(self) -> str:
        """The line with the claimed index, or with the error (waits for it)."""
        while self._result is None:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"holder exited without a result: {self.proc.stderr.read()}")
            if not line.rstrip().endswith("waiting"):
                self._result = line.strip()
        return self._result

    def wait_until_waiting(self) -> None:
        line = self.proc.stdout.readline()
        assert line.rstrip().endswith("busy; waiting"), (line, self.proc.stderr.read() if not line else "")

    @property
    def index(self) -> int:
        assert re.fullmatch(r"\d+", self.result), (self.result, self.proc.stderr.read())
        return int(self.result)

    def release(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=30)


@pytest.fixture
def holders():
    started: list[Holder] = []

    def start(*args, **kwargs) -> Holder:
        holder = Holder(*args, **kwargs)
        started.append(holder)
        return holder

    yield start
    for holder in started:
        if holder.proc.poll() is None:
            holder.proc.kill()
        holder.proc.wait(timeout=30)


def test_processes_get_different_gpus_and_a_third_times_out(tmp_path, holders):
    first, second = holders(2, tmp_path), holders(2, tmp_path)  # started together: they race
    assert {first.index, second.index} == {0, 1}

    third = holders(2, tmp_path, wait_seconds=0.5)
    third.wait_until_waiting()  # it waits first (how long: test_a_claim_waits_until_its_deadline...)
    assert third.release() == 3
    assert third.result.startswith("DeviceError:") and "all 2 GPUs are in use" in third.result
    assert str(tmp_path) in third.result  # says where the locks are

    # The lock records its holder's PID (for a person looking at the lock folder).
    assert (tmp_path / f"gpu{first.index}.lock").read_text().strip() == str(first.proc.pid)


class FakeClock:
    """``time.monotonic`` and ``time.sleep`` for :func:`claim_gpu`: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_claim_waits_until_its_deadline_polling_then_gives_up(tmp_path, holders, monkeypatch):
    """All GPUs held: the claim polls every ``poll`` seconds until ``wait_seconds`` have passed
    (on a clock the test drives, so the answer does not depend on the machine's speed)."""
    first = holders(1, tmp_path)
    assert first.index == 0
    clock, messages = FakeClock(), []
    monkeypatch.setattr(devices.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(devices.time, "sleep", clock.sleep)
    with pytest.raises(DeviceError, match="all 1 GPUs are in use"):
        claim_gpu(1, tmp_path, wait_seconds=5.0, poll=2.0, log=messages.append)
    assert clock.sleeps == [2.0, 2.0, 1.0] and clock.now == 1005.0  # the last sleep ends at the deadline
    assert messages == ["all 1 GPUs busy; waiting"] * 3


def test_a_gpu_is_free_again_after_its_process_exits(tmp_path, holders):
    first, second = holders(2, tmp_path), holders(2, tmp_path)
    assert {first.index, second.index} == {0, 1}
    freed = first.index
    assert first.release() == 0
    again = holders(2, tmp_path)
    assert again.index == freed
    assert second.proc.poll() is None  # still holding the other one


def test_a_crashed_process_frees_its_gpu(tmp_path, holders):
    first = holders(1, tmp_path)
    assert first.index == 0
    first.proc.kill()  # no clean exit: the kernel still drops the lock
    first.proc.wait(timeout=30)
    assert holders(1, tmp_path).index == 0


def test_a_waiting_claim_gets_the_gpu_once_it_is_released(tmp_path, holders):
    first = holders(1, tmp_path)
    assert first.index == 0
    waiter = holders(1, tmp_path, wait_seconds=60)
    waiter.wait_until_waiting()
    first.release()
    assert waiter.index == 0


def test_claim_in_this_process_never_returns_a_held_index(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "_held_locks", [])
    try:
        assert [claim_gpu(3, tmp_path) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(DeviceError, match="all 3 GPUs are in use"):
            claim_gpu(3, tmp_path, wait_seconds=0)
    finally:
        for handle in devices._held_locks:
            handle.close()


def test_resolve_auto_without_cuda_refuses_with_a_day_estimate(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as info:
        resolve_device("auto", model="paper", epochs=50, train_images=50000, batch_size=4)
    message = str(info.value)
    days = estimate_cpu_seconds("paper", 50, 50000, 4) / 86400
    assert 5 < days < 7  # 625,000 steps at 0.84 s
    assert f"would take about {days:.1f} days" in message
    assert "train.device: cpu" in message
    assert "no CUDA GPU" in message


def test_a_short_run_s_estimate_is_in_minutes_or_hours_not_a_fraction_of_a_day(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"\(paper, 1 epoch, 3600 images, batch 4\) would take about 13 minutes\."):
        resolve_device("auto", model="paper", epochs=1, train_images=3600, batch_size=4)  # 900 steps of 0.84 s
    assert [about(s) for s in (20, 60, 150, 3600, 5 * 3600, 86400, 6.1 * 86400)] == [
        "less than a minute", "about 1 minute", "about 2 minutes", "about 1.0 hours", "about 5.0 hours",
        "about 1.0 days", "about 6.1 days"]


def test_resolve_cpu_needs_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu", model="torchvision", epochs=1, train_images=10, batch_size=4) == torch.device("cpu")


def test_resolve_auto_with_several_gpus_claims_one(tmp_path, monkeypatch, holders):
    """Two visible (fake) GPUs, one held by another process: auto takes the other one."""
    other = holders(2, tmp_path)
    chosen = []
    monkeypatch.setenv("ALEXNET_CIFAR_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(devices, "_held_locks", [])
    try:
        device = resolve_device("auto", model="paper", epochs=1, train_images=10, batch_size=4)
        assert device == torch.device("cuda", 1 - other.index)
        assert chosen == [1 - other.index]
    finally:
        for handle in devices._held_locks:
            handle.close()


def test_resolve_auto_with_one_gpu_takes_it_without_a_lock(tmp_path, monkeypatch):
    """Under SLURM (--gpus=1) only the granted GPU is visible: it is cuda:0, no lock needed."""
    monkeypatch.setenv("ALEXNET_CIFAR_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    assert resolve_device("auto", model="paper", epochs=1, train_images=10, batch_size=4) == torch.device("cuda", 0)
    assert not (tmp_path / "locks").exists()


def test_resolve_cuda_n_takes_that_gpu_without_changing_the_current_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda:1", model="paper", epochs=1, train_images=10, batch_size=4) == torch.device("cuda", 1)
    assert current == []  # the engine runs on the device it is given, not on the current one


def test_resolve_cuda_n_beyond_the_visible_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"cuda:3 asks for GPU 3, but 2 GPU\(s\) are visible \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:3", model="paper", epochs=1, train_images=10, batch_size=4)
