import package_path  # noqa: F401

from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.summary(runs, dict(zip(runs, snakemake.input.facts, strict=True)),
                   dict(zip(runs, snakemake.input.csv, strict=True)),
                   snakemake.input.reference, snakemake.params.swept_keys, snakemake.output.csv,
                   snakemake.output.md, snakemake.output.replicates, snakemake.output.settings)
