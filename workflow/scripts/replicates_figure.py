import package_path  # noqa: F401
from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.replicates_figure(runs, dict(zip(runs, snakemake.input.csv)), dict(zip(runs, snakemake.input.facts)),
                             snakemake.input.reference, snakemake.output.png)
