import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.confusion_results(history=snakemake.input.history, predictions=snakemake.input.predictions,
                             data=snakemake.input.data, csv=snakemake.output.csv, png=snakemake.output.png,
                             title=snakemake.params.title)
