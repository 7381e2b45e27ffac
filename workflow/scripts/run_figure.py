import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.run_figure(snakemake.input.csv, snakemake.input.facts, snakemake.output.png,
                      title=snakemake.params.title)
