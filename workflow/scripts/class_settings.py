import package_path  # noqa: F401

from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.class_settings(runs, dict(zip(runs, snakemake.input.classes, strict=True)),
                          dict(zip(runs, snakemake.input.facts, strict=True)), snakemake.output.csv)
