#!/usr/bin/env bash
# Installs what tests/test_slurm.py needs: Debian's slurm-wlm (slurmctld, slurmd, sbatch, squeue,
# scontrol, scancel, sinfo, srun) and munge. Idempotent: returns at once when all are there.
# Needs root and apt-get; without them it says so and exits 0 (the SLURM tests then skip themselves).
set -euo pipefail

have_all() {
    for tool in slurmctld slurmd sbatch squeue scontrol scancel sinfo srun munged; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || return 1
    done
}

if have_all; then
    echo "slurm.sh: slurm-wlm and munge are installed"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm.sh: slurm-wlm/munge missing and cannot install them (needs root and apt-get);" \
         "the SLURM tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Installing starts no daemon here (no systemd); the test harness starts its own with its own confs.
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }; then
    echo "slurm.sh: apt-get could not install slurm-wlm and munge" >&2
    exit 1
fi
if ! have_all; then
    echo "slurm.sh: slurm-wlm and munge are installed but a tool is missing:" \
         "slurmctld slurmd sbatch squeue scontrol scancel sinfo srun munged" >&2
    exit 1
fi
echo "slurm.sh: installed slurm-wlm and munge"
