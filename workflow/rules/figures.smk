# Figures: one per run with its peak marked, and every run against the reported curve.
# Each is saved as PNG (to look at) and SVG (what the HTML report shows). Local on a cluster.


localrules:
    run_figure,
    comparison_figure,


rule run_figure:
    input:
        csv=rules.metrics.output.csv,
        facts=rules.metrics.output.facts,
    output:
        png=f"{OUTDIR}/figures/{{run}}.png",
        svg=report(
            f"{OUTDIR}/figures/{{run}}.svg",
            caption="../report/run_figure.rst",
            category="Figures",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "test accuracy"},
        ),
    params:
        title=figure_title,
        settings=result_params,
    log:
        f"{OUTDIR}/logs/figures/{{run}}.log",
    conda:
        ENV
    script:
        "../scripts/run_figure.py"


rule comparison_figure:
    input:
        csv=outputs_of_every_run("{outdir}/metrics/{run}.csv").values(),
        reference=config["reference_curve"],
    output:
        png=f"{OUTDIR}/figures/comparison.png",
        svg=report(
            f"{OUTDIR}/figures/comparison.svg",
            caption="../report/comparison.rst",
            category="Figures",
            subcategory="all runs",
            labels={"run": "all runs", "figure": "comparison"},
        ),
    params:
        runs=RUNS,
    log:
        f"{OUTDIR}/logs/figures/comparison.log",
    conda:
        ENV
    script:
        "../scripts/comparison_figure.py"
