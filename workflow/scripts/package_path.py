"""Makes the alexnet_cifar package importable from a workflow script.

Snakemake puts a script's own folder (this one) on sys.path, so ``import package_path`` works; it
then adds the checkout's ``src/``, which also covers ``--sdm conda``, where the environment holds
only the third-party packages. An installed copy of the package is used if there is one.
"""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("alexnet_cifar") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
