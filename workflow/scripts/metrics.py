import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.run_metrics(history=snakemake.input.history, csv=snakemake.output.csv, facts=snakemake.output.facts)
