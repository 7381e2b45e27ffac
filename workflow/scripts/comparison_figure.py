import package_path  # noqa: F401

from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.comparison_figure(runs=runs, csv=dict(zip(runs, snakemake.input.csv, strict=True)),
                             facts=dict(zip(runs, snakemake.input.facts, strict=True)),
                             reference=snakemake.input.reference, png=snakemake.output.png)
