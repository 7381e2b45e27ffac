import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.run_metrics(snakemake.input[0], snakemake.output.csv, snakemake.output.facts)
