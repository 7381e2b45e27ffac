"""Shared fixtures: small CIFAR-10 archives and a local HTTP server (127.0.0.1 only)."""
from __future__ import annotations

import collections
import functools
import http.server
import os
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alexnet_cifar import stand_in

sys.path.insert(0, str(Path(__file__).parent))  # tests import the cifar_archive helper module

import tiny_model  # noqa: E402
from cifar_archive import build_archive  # noqa: E402
from golden import default_protocol as golden_isa  # noqa: E402

# The stand-in AlexNet (alexnet_cifar.stand_in) for the whole session: set here, in the environment,
# so that every subprocess (Snakemake, its jobs, SLURM's, the CLI, the GPU script's dry run) inherits
# it, under plain `pytest` as under `make test`. A test that needs it off deletes the variable.
os.environ[stand_in.SWITCH] = "1"
# Two workers, each with trainings of 2 threads, share 2 cores: OpenMP threads that spin while they
# wait take the cores from the other worker's (twice the time for two stand-in trainings side by
# side). Waiting passively changes no number, only who holds the core. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The golden history's last bits depend on the vector instructions that torch's own kernels and
# oneDNN's pick (tests/golden/default_protocol.py records them with AVX2): pinned for the session,
# and for its subprocesses, so that a processor with AVX-512 gives the same numbers.
for _name, _value in golden_isa.ISA_ENV.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture
def tiny():
    """The name of the stand-in AlexNet (tests/tiny_model.py)."""
    with tiny_model.registered() as name:
        yield name


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory) -> tuple[Path, str]:
    """(path, md5) of an archive in the official layout: 30 train images in batches of 7, 5, 6, 4, 8; 12 test."""
    return build_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")


@dataclass
class LocalServer:
    """A file server on 127.0.0.1: put files in ``root``, fetch them from ``url(name)``.

    Besides plain files it serves ``/status/<code>`` (that status), ``/html`` (a 200 HTML page),
    ``/truncated/<name>`` (half the file under a full Content-Length) and ``/flaky/<name>`` (500 on
    the first request for that name, the file afterwards). ``hits`` counts requests per path.
    """

    root: Path
    base: str = ""
    hits: collections.Counter = field(default_factory=collections.Counter)
    failed: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``state.root``, plus the failure paths that :class:`LocalServer` lists."""

    def __init__(self, *args, state: LocalServer, **kwargs) -> None:
        self.state = state
        super().__init__(*args, directory=str(state.root), **kwargs)

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        with self.state.lock:
            self.state.hits[path] += 1
        kind, _, rest = path.lstrip("/").partition("/")
        if kind == "status":
            self._reply(int(rest), b"status page\n", "text/plain")
        elif kind == "html" and not rest:
            self._reply(200, b"<!DOCTYPE html>\n<html><body><h1>Please log in</h1></body></html>\n", "text/html")
        elif kind == "truncated":
            body = (self.state.root / rest).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif kind == "flaky":
            with self.state.lock:
                first = rest not in self.state.failed
                self.state.failed.add(rest)
            if first:
                self._reply(500, b"try again\n", "text/plain")
            else:
                self.path = "/" + rest
                super().do_GET()
        else:
            super().do_GET()

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """A :class:`LocalServer` running in a daemon thread for the whole session."""
    state = LocalServer(root=tmp_path_factory.mktemp("http_root"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, state=state))
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


#: The longest files first (on 2 cores, beside the other worker: SLURM about 1.5 minutes, mostly
#: waiting for the scheduler; the whole workflow of the real models 2; the engine's resumes of a
#: real model 1.5; then about a minute or less each): under pytest-xdist with --dist loadfile
#: (``make test``) each file goes to one worker, and this order lets the two workers finish
#: together. The SLURM tests start at once on one worker, beside the first workflow file on the other.
LONGEST_FIRST = ("test_slurm.py", "test_workflow.py", "test_engine.py", "test_workflow_seeds.py", "test_gpu_script.py",
                 "test_deploy.py", "test_golden.py", "test_recipes.py", "test_train_params.py", "test_packaging.py",
                 "test_config.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
