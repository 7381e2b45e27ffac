import package_path  # noqa: F401

from alexnet_cifar import stages

with stages.job(snakemake.log[0]):
    stages.prepare(snakemake.input[0], snakemake.output[0], md5=snakemake.params.md5,
                   limit_train=snakemake.params.limit_train, limit_test=snakemake.params.limit_test)
