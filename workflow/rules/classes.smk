# What the network gets wrong, class by class: tables and figures derived from each run's record of
# its predictions (runs/{run}/predictions.npz), rebuilt without retraining. Each run's files go in
# folders of their own. Seconds of work each: local on a cluster.


rule classes:
    input:
        history=rules.train.output.history,
        predictions=rules.train.output.predictions,
        data=rules.prepare.output[0],
    output:
        csv=f"{OUTDIR}/metrics/classes/{{run}}.csv",
        png=f"{OUTDIR}/figures/classes/{{run}}.png",
        svg=report(
            f"{OUTDIR}/figures/classes/{{run}}.svg",
            caption="../report/classes.rst",
            category="Per class",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "accuracy per class"},
        ),
    log:
        f"{OUTDIR}/logs/classes/{{run}}.log",
    localrule: True
    conda:
        ENV
    params:
        title=figure_title,
    script:
        "../scripts/classes.py"


rule confusion:
    input:
        history=rules.train.output.history,
        predictions=rules.train.output.predictions,
        data=rules.prepare.output[0],
    output:
        csv=f"{OUTDIR}/metrics/confusion/{{run}}.csv",
        png=f"{OUTDIR}/figures/confusion/{{run}}.png",
        svg=report(
            f"{OUTDIR}/figures/confusion/{{run}}.svg",
            caption="../report/confusion.rst",
            category="Per class",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "confusion"},
        ),
    log:
        f"{OUTDIR}/logs/confusion/{{run}}.log",
    localrule: True
    conda:
        ENV
    params:
        title=figure_title,
    script:
        "../scripts/confusion.py"


rule class_settings:
    input:
        classes=outputs_of_every_run(rules.classes.output.csv),
        facts=outputs_of_every_run(rules.metrics.output.facts),
    output:
        csv=report(
            workflow_file("class_settings", "csv"),
            caption="../report/classes_by_setting.rst",
            category="Per class",
            subcategory="all settings",
        ),
    log:
        f"{OUTDIR}/logs/metrics/classes_by_setting.log",
    localrule: True
    conda:
        ENV
    params:
        runs=run_table(),
    script:
        "../scripts/class_settings.py"
