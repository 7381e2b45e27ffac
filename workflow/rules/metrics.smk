# Numbers derived from the histories; rebuilt without retraining. Seconds of work each: on a
# cluster they run where Snakemake runs rather than waiting in the queue.


rule metrics:
    input:
        history=rules.train.output.history,
    output:
        csv=run_metrics_file("csv"),
        facts=run_metrics_file("facts"),
    log:
        f"{OUTDIR}/logs/metrics/{{run}}.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/metrics.py"


rule summary:
    input:
        facts=outputs_of_every_run(rules.metrics.output.facts),
        csv=outputs_of_every_run(rules.metrics.output.csv),
        reference=config["reference_curve"],
    output:
        summary_csv=report(
            workflow_file("summary", "summary_csv"),
            caption="../report/summary.rst",
            category="Summary",
        ),
        summary_md=workflow_file("summary", "summary_md"),
        replicates_csv=workflow_file("summary", "replicates_csv"),
        settings_csv=report(
            workflow_file("summary", "settings_csv"),
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
