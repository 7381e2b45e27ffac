import package_path  # noqa: F401

from alexnet_cifar import stages

runs = snakemake.params.runs
with stages.job(snakemake.log[0]):
    stages.summary(runs=runs, facts=dict(zip(runs, snakemake.input.facts, strict=True)),
                   csv=dict(zip(runs, snakemake.input.csv, strict=True)), reference=snakemake.input.reference,
                   swept_keys=snakemake.params.swept_keys, summary_csv=snakemake.output.summary_csv,
                   summary_md=snakemake.output.summary_md, replicates_csv=snakemake.output.replicates_csv,
                   settings_csv=snakemake.output.settings_csv)
