import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.run_figure(csv=snakemake.input.csv, facts=snakemake.input.facts, png=snakemake.output.png,
                      title=snakemake.params.title)
