# Numbers derived from the histories; rebuilt without retraining. Seconds of work each: on a
# cluster they run where Snakemake runs rather than waiting in the queue.


rule metrics:
    input:
        rules.train.output.history,
    output:
        csv=f"{OUTDIR}/metrics/{{run}}.csv",
        facts=f"{OUTDIR}/metrics/{{run}}.facts.json",
    log:
        f"{OUTDIR}/logs/metrics/{{run}}.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/metrics.py"


rule summary:
    input:
        facts=outputs_of_every_run("{outdir}/metrics/{run}.facts.json"),
        csv=outputs_of_every_run("{outdir}/metrics/{run}.csv"),
        reference=config["reference_curve"],
    output:
        csv=report(
            workflow_file("metrics/summary.csv"),
            caption="../report/summary.rst",
            category="Summary",
        ),
        md=workflow_file("metrics/summary.md"),
        replicates=workflow_file("metrics/replicates.csv"),
        settings=report(
            workflow_file("metrics/settings.csv"),
            caption="../report/settings.rst",
            category="Summary",
        ),
    log:
        f"{OUTDIR}/logs/metrics/summary.log",
    localrule: True
    conda:
        ENV
    params:
        runs=run_table(),
        swept_keys=SWEPT_KEYS,
    script:
        "../scripts/summary.py"
