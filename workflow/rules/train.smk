# One training job per run, each holding one GPU; its files are named in alexnet_cifar.layout. The
# checkpoint (runs/{run}/checkpoint.pt) is not an output: Snakemake deletes outputs before a job starts, and the checkpoint must survive to resume.


rule train:
    input:
        data=rules.prepare.output[0],
    output:
        history=run_file("history"),
        model=run_file("model"),
        provenance=run_file("provenance"),
        predictions=run_file("predictions"),
    log:
        f"{OUTDIR}/logs/train/{{run}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/train/{{run}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
    params:
        settings=result_params,
    script:
        "../scripts/train.py"
