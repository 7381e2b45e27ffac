# Rebuilds the AlexNet-on-CIFAR-10 experiment: download -> prepare -> train (per run) -> metrics -> figures.
# The logic lives in the package alexnet_cifar (src/); the rules only wire files together.
import os
import sys

from snakemake.utils import min_version, validate

min_version("8.0")
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from alexnet_cifar.config import check_config  # noqa: E402  (torch-free)


configfile: "config/config.yaml"


# Our check words each problem for people; Snakemake's validate then fills in the defaults.
check_config(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        all_targets(),
    default_target: True
