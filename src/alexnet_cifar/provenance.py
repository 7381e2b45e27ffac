"""What a run was made with: settings, software, hardware, code version, times."""
from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import importlib.util
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .config import RunSettings


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the checkout this package runs from (``+dirty`` if it has changes), if any."""
    where = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def torchvision_version() -> str | None:
    """``torchvision.__version__`` (``0.29.1+cu130``, the build's own), read from its ``version.py``
    without importing torchvision, which takes seconds (its ops import torch._dynamo) in a run of a
    model that does not need it; an imported torchvision answers itself. The installed package's
    metadata would not do: it leaves out the build (``0.29.1``)."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations)), "version.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def provenance(settings: RunSettings, device: torch.device, *, data_md5: str, started: str,
               resumed_from_epoch: int) -> dict:
    cuda = device.type == "cuda"
    return {
        "settings": dataclasses.asdict(settings),
        "seed": settings.seed,
        "data_md5": data_md5,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "versions": {
            "python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision_version(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        },
        "git_commit": git_commit(),
        "host": platform.node(),
        "started": started,
        "finished": now(),
        "resumed_from_epoch": resumed_from_epoch,
    }
