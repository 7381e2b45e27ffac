"""``python -m snakemake ARGS`` without paying for Snakemake's start at every call.

Importing Snakemake and its plugins is most of a short Snakemake call, a dry run of a small config
(docs/cpu/suite.md), and the suite makes dozens of them. multiprocessing's
forkserver imports Snakemake once per pytest worker (``set_forkserver_preload``); each call is a
fresh fork of that server, so it is still a process of its own, as ``subprocess.run`` gives: the
caller's environment and working folder, its own exit status, its stdout and stderr captured
(through files, since a fork inherits file descriptors, not pipes). Nothing of one call reaches
the next. A library start (the standard forkserver) rather than a hand-written fork loop: it owns
the server's life, its reaping and its pipes.
"""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# What the forkserver imports once, before its first fork: Snakemake, and what the Snakefile and
# Snakemake's file handling import. Names from site-packages: Python 3.11's forkserver imports its
# preloads before it takes the caller's sys.path, so it could not find this module.
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["snakemake.cli", "jsonschema", "smart_open"])
# sys.argv[0] of ``python -m snakemake``, which Snakemake prints as its command
_MAIN = str(Path(importlib.util.find_spec("snakemake").origin).with_name("__main__.py"))


def _main(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the fork: the caller's environment and folder, stdout and stderr to files, then
    Snakemake's own command line, which ends with ``sys.exit`` and so the exit status."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [_MAIN, *argv]
    import snakemake.cli  # imported by the server already
    import snakemake.workflow

    # The one thing Snakemake takes at import rather than at its start: the folder it was started
    # in ("Run directory" in its log), for the server the folder of its own start.
    snakemake.workflow.Workflow._rundir = str(Path.cwd().absolute())
    snakemake.cli.main(argv)


def run(argv: list[str], *, cwd: Path | str, timeout: float,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """What ``subprocess.run([sys.executable, "-m", "snakemake", *argv], cwd=cwd, env=env,
    capture_output=True, text=True, timeout=timeout)`` returns, from a fork of the warm server."""
    with tempfile.TemporaryDirectory(prefix="snakemake-output-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        out.touch()
        err.touch()
        env = dict(os.environ if env is None else env)
        process = _CONTEXT.Process(target=_main, args=(list(argv), str(cwd), env, str(out), str(err)))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["snakemake", *argv], timeout)
        return subprocess.CompletedProcess(["snakemake", *argv], process.exitcode,
                                           out.read_text(errors="replace"), err.read_text(errors="replace"))
