import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.comparison_figure(dict(zip(snakemake.params.runs, snakemake.input.csv, strict=True)),
                             snakemake.input.reference, snakemake.output.png)
