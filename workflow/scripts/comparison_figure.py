import package_path  # noqa: F401

from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.comparison_figure(dict(zip(runs, snakemake.input.csv, strict=True)),
                             dict(zip(runs, snakemake.input.facts, strict=True)), snakemake.input.reference,
                             snakemake.output.png)
