"""One GPU session, in parts, within a deadline: what a short device lease can prove.

Run through ``tests/gpu/gpu_session.sh`` (which sets the paths). Parts, in this order:

1. the default training path: the train rule's own call (``stages.train`` with the default
   config's settings) for 1 epoch of each model on the real images, with a training set whose size
   is not a multiple of the batch size (the last, smaller batch after graph capture) and the
   evaluation;
2. the bench of every loop, with ``--profile``, and the step of each ladder run (part 6's) at its
   batch size and recipe;
3. graph against eager (``check_graph_vs_eager.py``), the fused SGD update and a training recipe
   (augmentation, a cosine schedule) inside the graph too; from the weights, that a replayed step
   after an lr change applies the new lr; that the augmentation draws anew at every replay;
4. both models at lr 0.01 (``config/as-stated.yaml``) for 2 epochs;
5. with the time left, the paper model at the default config, its history saved after every
   epoch; it resumes from its checkpoint in the work folder in the next call;
6. the ladder's four recipe runs (``config/ladder.yaml``, seed 0 each: the paper's recipe with and
   without LRN, the modern recipe for paper and torchvision), or those ``--ladder-runs`` names, one
   after the other in its order, each for an equal share of the time left, one history line saved
   per epoch; a run cut at its share resumes from its checkpoint in the next call, and a run
   finished in an earlier call is not trained again.

Results go to OUT (flat, at most 8 files): ``session.log``, ``session.json`` (the machine, the
versions, the commit that ran: ``--commit`` or $ALEXNET_CIFAR_COMMIT where the copy has no .git,
and each part's outcome, rewritten after every part), ``bench.csv``, ``bench.md``, ``profile.csv``,
``graph_vs_eager.json``, ``history_paper.json`` and ``history_ladder.json``. The data and the
checkpoints live in the work folder, outside OUT. ``--tiny`` shrinks everything for a dry run on
the CPU (part 6: batch 4, 2 validation images, 3 epochs a run, no bf16).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from alexnet_cifar import bench, config, data, provenance, stages
from alexnet_cifar.atomic import write_text
from alexnet_cifar.history import read_history
from alexnet_cifar.layout import HISTORY_FILE

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
import check_graph_vs_eager  # noqa: E402

log = logging.getLogger("alexnet_cifar")
PARTS = (1, 2, 3, 4, 5, 6)
#: seconds a part needs at least on an H100 (measured on the H200: docs/speed.md; part 6: one
#: epoch of each ladder run, estimated in docs/gpu/ladder-estimate.md); a part that does not fit in
#: the time left is skipped, not started
NEEDS = {1: 90, 2: 120, 3: 180, 4: 150, 5: 60, 6: 240}
#: part 6: the ladder's recipe runs (config/ladder.yaml), seed 0 of each
LADDER_RUNS = ("paper-recipe", "paper-recipe-nolrn", "modern-paper", "modern-torchvision")
#: part 6 in a dry run (--tiny): what 10 training images allow, 3 epochs that end on their own (two
#: left when the test stops the first run after its first: the signal lands with work to spare; the
#: cosine warm-up shortened to 1 to fit), and no bf16 (emulated on a CPU without it, ten times
#: slower; part 2 times it)
TINY_LADDER = {"batch_size": 4, "validation_images": 2, "epochs": 3, "bf16": False}
MARGIN_S = 15  # kept free at the end: writing the last files (the tiny dry run needs 5)


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out, self.work = args, Path(args.out), Path(args.work)
        self.deadline = time.monotonic() + args.deadline
        self.device = torch.device(args.device)
        self.report: dict = {"machine": machine(self.device, args.commit), "deadline_s": args.deadline,
                             "parts": {}, "args": vars(args)}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        write_text(self.out / "session.json", json.dumps(self.report, indent=1, default=str) + "\n")

    # -- data ---------------------------------------------------------------------------
    def data(self) -> Path:
        """The prepared npz in the work folder, built once from the real images (or --archive)."""
        npz = self.work / ("cifar10-tiny.npz" if self.args.tiny else "cifar10.npz")  # never mixed up
        if npz.exists():
            return npz
        archive = Path(self.args.archive) if self.args.archive else self.work / "cifar-10-python.tar.gz"
        if not self.args.archive:
            subprocess.run([sys.executable, self.args.tool, str(archive), "--npz", self.args.jpeg], check=True)
        limits = {"limit_train": 10, "limit_test": 4} if self.args.tiny else {}
        stages.prepare(archive=archive, out=npz, **limits)
        return npz

    def subset(self, npz: Path, train: int) -> Path:
        """The first ``train`` training images of ``npz``, in a file of its own."""
        arrays = data.load_npz(npz)
        path = self.work / f"cifar10-train{train}.npz"
        with open(path, "wb") as handle:
            np.savez(handle, **arrays._replace(train_images=arrays.train_images[:train],
                                               train_labels=arrays.train_labels[:train])._asdict())
        return path

    # -- running a part -----------------------------------------------------------------
    def run(self, part: int, body) -> None:
        record = self.report["parts"].setdefault(str(part), {})
        if self.left() < NEEDS[part] * (0.05 if self.args.tiny else 1):
            record.update(status="skipped", why=f"{self.left():.0f} s left, the part needs about {NEEDS[part]} s")
            log.info(f"part {part}: skipped ({record['why']})")
            self.save()
            return
        log.info(f"part {part}: started, {self.left():.0f} s left")
        started = time.monotonic()
        try:
            record.update(body(record) or {})
            record.setdefault("status", "ok")
        except Exception as exc:  # a failed part is a result too; the next parts still run
            log.exception(f"part {part} failed")
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            record["seconds"] = round(time.monotonic() - started, 1)
            self.save()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        log.info(f"part {part}: {record['status']} in {record['seconds']} s")

    @property
    def margin(self) -> float:
        return 5 if self.args.tiny else MARGIN_S

    def train(self, settings, npz: Path, out_dir: Path, on_epoch=None, seconds: float | None = None) -> dict:
        """``stages.train`` as the train rule calls it, stopped by SIGTERM (as SLURM stops a job)
        when the deadline comes (or after ``seconds``, if sooner), or when the caller sends one; a
        stopped run keeps its checkpoint for the next call."""
        deadline_came = threading.Event()

        def stop_at_the_deadline() -> None:
            deadline_came.set()
            os.kill(os.getpid(), signal.SIGTERM)

        timer = threading.Timer(max(1.0, min(self.left() - self.margin, seconds or math.inf)), stop_at_the_deadline)
        timer.start()
        try:
            history = stages.train(settings=settings, data_path=npz, out_dir=out_dir, on_epoch=on_epoch)
            return {"status": "ok", "history": history}
        except SystemExit as exc:
            if exc.code != 128 + signal.SIGTERM:
                raise
            why = "cut at the deadline" if deadline_came.is_set() else "stopped by a SIGTERM from outside"
            return {"status": f"{why}; the checkpoint is kept"}
        finally:
            timer.cancel()

    def settings(self, run: str, *overlays: str, **changes):
        """The run's settings in the config files (config/config.yaml and ``overlays``), on this
        session's device, with ``changes`` (which win over the run entry's own values)."""
        cfg = config.load_config(REPO / "config/config.yaml", *(REPO / "config" / o for o in overlays))
        changes = {"device": self.args.device, **({"eval_batch_size": 8} if self.args.tiny else {}), **changes}
        return dataclasses.replace(config.resolve_run(cfg, run), **changes)

    # -- the parts ----------------------------------------------------------------------
    def part1(self, record: dict) -> dict:
        npz = self.data()
        n = len(data.load_npz(npz).train_labels)
        size = n - 1 if (n - 1) % 4 else n - 2  # not a multiple of the batch size, 4
        subset, runs = self.subset(npz, size), {}
        record.update(train_images=size, runs=runs)
        for run in self.models():
            runs[run] = self.train(self.settings(run, epochs=1), subset, self.work / "part1" / run)
            self.save()
        return {"status": "ok" if all(r["status"] == "ok" for r in runs.values()) else "not all ok"}

    def part2(self, record: dict) -> None:
        steps, warmup, profile = (1, 0, 1) if self.args.tiny else (400, 50, 50)
        bench.run_bench(self.data(), self.bench_models(), steps, self.args.device, self.out, warmup=warmup,
                        loops=["plain", *bench.ENGINE_LOOPS], profile_steps=profile, log=log.info)
        record["bench_md"] = (self.out / "bench.md").read_text()
        self.save()
        record["ladder_bench"] = self.ladder_bench(*((1, 0) if self.args.tiny else (100, 20)))

    def ladder_bench(self, steps: int, warmup: int) -> list[dict]:
        """The step of each ladder run (its model, batch size and recipe; bf16 and channels-last
        where it has them), timed by the bench: what the ladder table of docs/ladder.md estimates. The
        bench's files go to the work folder (OUT holds at most 8), its rows into session.json."""
        rows = []
        for run in LADDER_RUNS:
            own = self.ladder_settings(run)
            s = self.as_trained(own)
            loop = "engine+bf16+channels_last" if s.bf16 else "engine"
            recipe = {key: getattr(s, key) for key in bench.SETTINGS if getattr(s, key) != config.DEFAULTS[key]}
            frame = bench.run_bench(self.data(), [s.model], steps, self.args.device, self.work / "ladder-bench" / run,
                                    warmup=warmup, loops=[loop], settings=recipe, log=log.info)
            rows.append({"run": run, "run_model": own.model, "epochs": s.epochs, **frame.iloc[0].to_dict()})
        return rows

    def part3(self, record: dict) -> dict:
        # a dry run: on the CPU the graph variants run eagerly, so one of them shows the plumbing
        limit = ["--limit-train", "10", "--limit-test", "4", "--epochs", "1", "--variants", "graph+recipe"] \
            if self.args.tiny else ["--limit-train", "10000", "--epochs", "2"]
        code = check_graph_vs_eager.main(["--data", str(self.data()), "--models", ",".join(self.bench_models()),
                                          "--device", self.args.device, "--out", str(self.out / "graph_vs_eager.json"),
                                          *limit])
        return {"status": "ok" if code == 0 else "failed", "passed": code == 0}

    def part4(self, record: dict) -> None:
        results = {}
        for run in self.models():
            settings = self.as_trained(self.settings(run, "as-stated.yaml", epochs=2))
            results[run] = self.train(settings, self.data(), self.work / "part4" / run)
            results[run].update(lr=settings.lr, trained_model=settings.model)
            record["runs"] = results
            self.save()

    def part5(self, record: dict) -> dict:
        def saved(history: list[dict]) -> None:
            write_text(self.out / "history_paper.json", json.dumps(history, indent=1) + "\n")
            record["epochs_done"] = len(history)
            self.save()

        trained = self.as_trained(self.settings("paper"))
        record["trained_model"] = trained.model
        outcome = self.train(trained, self.data(), self.work / "part5" / "paper", on_epoch=saved)
        outcome.pop("history", None)  # in history_paper.json
        return outcome

    def as_trained(self, settings):
        """Parts 2-6: ``settings`` with ``--train-model`` in place of the run's own model, if given."""
        return dataclasses.replace(settings, model=self.args.train_model or settings.model)

    def ladder_settings(self, run: str):
        """Seed 0 of a ladder run (config/ladder.yaml); in a dry run shrunk to :data:`TINY_LADDER`."""
        settings = self.settings(f"{run}-seed0", "ladder.yaml")
        if not self.args.tiny:
            return settings
        tiny = {**TINY_LADDER, "epochs": self.args.ladder_epochs or TINY_LADDER["epochs"]}
        warmup = {"warmup_epochs": 1} if settings.lr_schedule == "cosine" else {}
        return dataclasses.replace(settings, **tiny, **warmup)

    def part6(self, record: dict) -> dict:
        npz, runs, histories = self.data(), {}, {}
        record["runs"] = runs

        def saved(run: str):
            def save(history: list[dict]) -> None:
                histories[run] = history
                write_text(self.out / "history_ladder.json", json.dumps(histories, indent=1) + "\n")
                runs[run]["epochs_done"] = len(history)
                self.save()
            return save

        for position, run in enumerate(self.args.ladder_runs):
            out_dir = self.work / "part6" / run
            runs[run] = {}
            if (out_dir / HISTORY_FILE).exists():  # finished in an earlier call
                saved(run)(read_history(out_dir / HISTORY_FILE))
                runs[run]["status"] = "finished in an earlier call"
                continue
            share = (self.left() - self.margin) / (len(self.args.ladder_runs) - position)
            settings = self.ladder_settings(run)
            trained = self.as_trained(settings)
            runs[run].update(share_s=round(share), settings=settings.result_params(), trained_model=trained.model)
            outcome = self.train(trained, npz, out_dir, on_epoch=saved(run), seconds=share)
            outcome.pop("history", None)  # in history_ladder.json
            runs[run].update(outcome)
        finished = all(r["status"] in ("ok", "finished in an earlier call") for r in runs.values())
        return {"status": "ok" if finished else "not every run finished; run part 6 again to continue"}

    def models(self) -> list[str]:
        return self.args.models.split(",")

    def bench_models(self) -> list[str]:
        """Parts 2 and 3: ``--train-model`` if given, else ``--models``."""
        return [self.args.train_model] if self.args.train_model else self.models()


#: the environment variable that gives the commit where git cannot tell it (a device machine gets a
#: copy of the working tree without .git); --commit does the same
COMMIT_ENV = "ALEXNET_CIFAR_COMMIT"


def session_commit(given: str | None) -> tuple[str | None, str]:
    """The commit this session runs and where that came from: ``given`` (``--commit``, else
    $ALEXNET_CIFAR_COMMIT), else git's answer for the checkout; ``(None, "unknown")`` if neither."""
    given = given or os.environ.get(COMMIT_ENV)
    if given:
        return given, "given"
    found = provenance.git_commit(REPO)
    return (found, "git") if found else (None, "unknown")


def machine(device: torch.device, commit: str | None = None) -> dict:
    cuda = device.type == "cuda"
    git_commit, source = session_commit(commit)
    return {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "git_commit": git_commit, "git_commit_from": source, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, required=True, help="seconds this call may take in all")
    parser.add_argument("--parts", default="1,2,3,4,5,6", help="comma-separated, from 1-6 (run in order)")
    parser.add_argument("--out", required=True, help="results (at most 8 files)")
    parser.add_argument("--work", default=str(REPO / ".gpuwork"), help="data and checkpoints (kept between calls)")
    parser.add_argument("--jpeg", help="the shared cifar10-jpeg.npz (real images as JPEG)")
    parser.add_argument("--tool", help="make_cifar10_archive.py, which turns --jpeg into the official archive")
    parser.add_argument("--archive", help="an archive in the official layout instead of --jpeg and --tool")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="paper,torchvision", help="for parts 1-4")
    parser.add_argument("--tiny", action="store_true", help="a dry run: 10 training images, single steps")
    parser.add_argument("--train-model", help="parts 2-6 train and time this model in place of each run's own (a "
                        "dry run's stand-in: they check the bookkeeping; part 1 trains the real ones); "
                        "session.json keeps each run's settings")
    parser.add_argument("--ladder-epochs", type=int, help="with --tiny: part 6's epochs a run (default 3)")
    parser.add_argument("--ladder-runs", default=",".join(LADDER_RUNS),
                        help=f"part 6's runs, in the order to train them (default {','.join(LADDER_RUNS)})")
    parser.add_argument("--commit", help=f"the commit that runs, for session.json where git cannot tell it (a copy "
                        f"without .git); default ${COMMIT_ENV}, else git's")
    args = parser.parse_args(argv)
    args.ladder_runs = tuple(args.ladder_runs.split(","))
    unknown = [run for run in args.ladder_runs if run not in LADDER_RUNS]
    if unknown or len(set(args.ladder_runs)) != len(args.ladder_runs):
        parser.error(f"--ladder-runs {','.join(args.ladder_runs)}: name each of {', '.join(LADDER_RUNS)} at most "
                     f"once" + (f" ({', '.join(unknown)} is not one)" if unknown else " (one is named twice)"))
    args.parts = sorted({int(p) for p in args.parts.split(",")})
    if set(args.parts) - set(PARTS):
        parser.error(f"--parts: choose from {PARTS}")
    if not args.archive and not (args.jpeg and args.tool):
        parser.error("give --archive, or --jpeg and --tool")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = Session(args)
    session.out.mkdir(parents=True, exist_ok=True)
    session.work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(stages.logging_to(session.out / "session.log"))
        # a SIGTERM that arrives between trainings must not end the session
        previous = signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM outside a training: ignored"))
        stack.callback(signal.signal, signal.SIGTERM, previous)
        log.info(f"session on {session.report['machine']}: parts {args.parts}, deadline {args.deadline:.0f} s")
        session.save()
        for part in args.parts:
            session.run(part, getattr(session, f"part{part}"))
    failed = [p for p, r in session.report["parts"].items() if r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
