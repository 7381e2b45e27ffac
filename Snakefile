# Rebuilds the AlexNet-on-CIFAR-10 experiment: download -> prepare -> train (per run) -> metrics -> figures,
# and per class.
# The logic lives in the package alexnet_cifar (src/); the rules only wire files together.
import os
import sys

from snakemake.utils import min_version, validate

min_version("8.0")
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
# Both torch-free: building the job graph (a dry run, a cluster's login node) never imports torch.
from alexnet_cifar.config import SettingsError, check_config, numbers_from_text, schema_file  # noqa: E402
from alexnet_cifar.metrics import CurveError, read_reference  # noqa: E402


configfile: "config/config.yaml"


# YAML reads 1e-3 as text: the number it says, in place (the jobs get this config), before any check.
config.update(numbers_from_text(config))
# Our check words each problem for people, naming the key, and covers what the schema cannot
# express (sweep keys, seeds, run names); it stops here with one line per problem, no traceback.
try:
    check_config(config)
except SettingsError as error:
    sys.exit(str(error))


# Fills in the defaults. The file is workflow/schemas/config.schema.yaml (the package's schema), or
# under the test suite's stand-in switch a copy that also allows the stand-in model (schema_file).
validate(config, schema_file())


try:  # read by the last rules: checked before any job, not after the trainings
    read_reference(config["reference_curve"])
except CurveError as error:
    sys.exit(str(error))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/classes.smk"


rule all:
    default_target: True
    input:
        all_targets(),
