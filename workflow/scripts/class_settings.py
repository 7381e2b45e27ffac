import package_path  # noqa: F401

from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.class_settings(runs=runs, classes=dict(zip(runs, snakemake.input.classes, strict=True)),
                          facts=dict(zip(runs, snakemake.input.facts, strict=True)), csv=snakemake.output.csv)
