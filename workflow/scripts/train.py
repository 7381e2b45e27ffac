from pathlib import Path

import package_path  # noqa: F401

from alexnet_cifar import stages
from alexnet_cifar.config import resolve_run

with stages.job(snakemake.log[0]):
    stages.train(resolve_run(snakemake.config, snakemake.wildcards.run), snakemake.input.data,
                 Path(snakemake.output.history).parent, threads=snakemake.threads)
