# One training job per run, each holding one GPU. The checkpoint (runs/{run}/checkpoint.pt) is not
# an output: Snakemake deletes outputs before a job starts, and the checkpoint must survive to resume.


rule train:
    input:
        data=rules.prepare.output[0],
    output:
        history=f"{OUTDIR}/runs/{{run}}/history.jsonl",
        model=f"{OUTDIR}/runs/{{run}}/model.pt",
        provenance=f"{OUTDIR}/runs/{{run}}/run.json",
        predictions=f"{OUTDIR}/runs/{{run}}/predictions.npz",
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
