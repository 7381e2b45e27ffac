import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.download(snakemake.config["dataset"]["url"], snakemake.output[0], snakemake.params.md5)
