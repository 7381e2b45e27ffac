#!/usr/bin/env bash
# One GPU session within a deadline, in parts (see tests/gpu/gpu_session.py for what each proves):
#   1 default training path, 1 epoch   2 bench + profile   3 graph vs eager, lr change, augmentation
#   4 both models at lr 0.01, 2 epochs 5 the paper model at the default config, resumable
#   6 the ladder's four recipe runs (config/ladder.yaml, seed 0), sharing the time left, resumable
#
# usage: tests/gpu/gpu_session.sh --deadline SECONDS --out OUT [--parts 1,2,...]
#            (--jpeg cifar10-jpeg.npz --tool make_cifar10_archive.py | --archive ARCHIVE)
#            [--work DIR] [--device cuda|cpu] [--models paper,torchvision] [--tiny]
# OUT gets at most 8 files, saved after every part; data and checkpoints stay in --work
# (default .gpuwork/, ignored by git), so a second call resumes parts 5 and 6. Needs torch, torchvision,
# numpy, pandas, matplotlib, pillow and pyyaml; not snakemake. A dry run on the CPU (the tests run it):
#   tests/gpu/gpu_session.sh --deadline 100 --out /tmp/dry --archive ARCHIVE --device cpu --tiny --models torchvision
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
exec "${PYTHON:-python3}" "$repo/tests/gpu/gpu_session.py" "$@"
