import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.class_results(snakemake.input.history, snakemake.input.predictions, snakemake.input.data,
                         snakemake.output.csv, snakemake.output.png, title=snakemake.params.title)
