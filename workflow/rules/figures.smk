# Figures: one per run with its peak marked, every run against the reported curve, the spread of
# each setting's seeds and, with a sweep, the peak against the swept values.
# Each is saved as PNG (to look at) and SVG (what the HTML report shows). Local on a cluster.


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
    log:
        f"{OUTDIR}/logs/figures/{{run}}.log",
    localrule: True
    conda:
        ENV
    params:
        title=figure_title,
        settings=result_params,
        differences=protocol_differences,
    script:
        "../scripts/run_figure.py"


rule comparison_figure:
    input:
        csv=outputs_of_every_run(rules.metrics.output.csv),
        facts=outputs_of_every_run(rules.metrics.output.facts),
        reference=config["reference_curve"],
    output:
        png=workflow_file("comparison_figure", "png"),
        svg=report(
            workflow_file("comparison_figure", "svg"),
            caption="../report/comparison.rst",
            category="Figures",
            subcategory="all runs",
            labels={"run": "all runs", "figure": "comparison"},
        ),
    log:
        f"{OUTDIR}/logs/figures/comparison.log",
    localrule: True
    conda:
        ENV
    params:
        runs=run_table(),
    script:
        "../scripts/comparison_figure.py"


rule replicates_figure:
    input:
        csv=outputs_of_every_run(rules.metrics.output.csv),
        facts=outputs_of_every_run(rules.metrics.output.facts),
        reference=config["reference_curve"],
    output:
        png=workflow_file("replicates_figure", "png"),
        svg=report(
            workflow_file("replicates_figure", "svg"),
            caption="../report/replicates.rst",
            category="Figures",
            subcategory="seeds",
            labels={"run": "all settings", "figure": "replicates"},
        ),
    log:
        f"{OUTDIR}/logs/figures/replicates.log",
    localrule: True
    conda:
        ENV
    params:
        runs=run_table(),
    script:
        "../scripts/replicates_figure.py"


rule sweep_figure:
    input:
        facts=outputs_of_every_run(rules.metrics.output.facts),
    output:
        png=workflow_file("sweep_figure", "png"),
        svg=report(
            workflow_file("sweep_figure", "svg"),
            caption="../report/sweep.rst",
            category="Figures",
            subcategory="sweep",
            labels={"run": "all settings", "figure": "sweep"},
        ),
    log:
        f"{OUTDIR}/logs/figures/sweep.log",
    localrule: True
    conda:
        ENV
    params:
        runs=run_table(),
        swept_keys=SWEPT_KEYS,
    script:
        "../scripts/sweep_figure.py"
