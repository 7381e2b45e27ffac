# Numbers derived from the histories; rebuilt without retraining. Seconds of work each: on a
# cluster they run where Snakemake runs rather than waiting in the queue.


localrules:
    metrics,
    summary,


rule metrics:
    input:
        rules.train.output.history,
    output:
        csv=f"{OUTDIR}/metrics/{{run}}.csv",
        facts=f"{OUTDIR}/metrics/{{run}}.facts.json",
    log:
        f"{OUTDIR}/logs/metrics/{{run}}.log",
    conda:
        ENV
    script:
        "../scripts/metrics.py"


rule summary:
    input:
        facts=outputs_of_every_run("{outdir}/metrics/{run}.facts.json").values(),
        csv=outputs_of_every_run("{outdir}/metrics/{run}.csv").values(),
        reference=config["reference_curve"],
    output:
        csv=report(
            f"{OUTDIR}/metrics/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        md=f"{OUTDIR}/metrics/summary.md",
    params:
        runs=RUNS,
        models={run: run_settings(run).model for run in RUNS},
    log:
        f"{OUTDIR}/logs/metrics/summary.log",
    conda:
        ENV
    script:
        "../scripts/summary.py"
