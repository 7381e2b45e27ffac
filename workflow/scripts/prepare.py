import package_path  # noqa: F401
from alexnet_cifar import stages

with stages.logging_to(snakemake.log[0]):
    stages.prepare(snakemake.input[0], snakemake.output[0],
                   limit_train=snakemake.params.limit_train, limit_test=snakemake.params.limit_test)
