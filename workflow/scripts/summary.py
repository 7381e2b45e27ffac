import package_path  # noqa: F401
from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.logging_to(snakemake.log[0]):
    stages.summary(dict(zip(runs, snakemake.input.facts)), dict(zip(runs, snakemake.input.csv)),
                   snakemake.params.models, snakemake.input.reference, snakemake.output.csv, snakemake.output.md)
