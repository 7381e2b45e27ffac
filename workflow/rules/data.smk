# The data set: a local rule (compute nodes often have no internet), then an npz the trainings share.
# The URL is not a param: switching to a mirror with the same MD5 retrains nothing.


rule download:
    output:
        f"{DATADIR}/cifar-10-python.tar.gz",
    log:
        f"{OUTDIR}/logs/download.log",
    localrule: True
    conda:
        ENV
    params:
        md5=config["dataset"]["md5"],
    script:
        "../scripts/download.py"


rule prepare:
    input:
        rules.download.output,
    output:
        f"{DATADIR}/cifar10.npz",
    log:
        f"{OUTDIR}/logs/prepare.log",
    benchmark:
        f"{OUTDIR}/benchmarks/prepare.tsv"
    conda:
        ENV
    params:
        md5=config["dataset"]["md5"],
        limit_train=config["dataset"].get("limit_train"),
        limit_test=config["dataset"].get("limit_test"),
    script:
        "../scripts/prepare.py"
