import package_path  # noqa: F401

from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.sweep_figure(runs, dict(zip(runs, snakemake.input.facts, strict=True)), snakemake.params.swept_keys,
                        snakemake.output.png)
