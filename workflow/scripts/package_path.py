"""Makes this checkout's alexnet_cifar package importable from a workflow script.

Snakemake puts a script's own folder (this one) on sys.path, so ``import package_path`` works; it
then puts the checkout's ``src/`` first, as the Snakefile does, so the jobs run the same code that
built the job graph (also under ``--sdm conda``, where the environment holds only the third-party
packages).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
