import package_path  # noqa: F401

from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.sweep_figure(runs=runs, facts=dict(zip(runs, snakemake.input.facts, strict=True)),
                        swept_keys=snakemake.params.swept_keys, png=snakemake.output.png)
