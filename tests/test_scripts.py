"""The workflow's scripts: three stay byte-identical, the others hand their rule's files and params
to a stage by the rule's own names."""
from __future__ import annotations

import ast
import hashlib
import inspect

import pytest
from workflow_helpers import REPO

from alexnet_cifar import stages

SCRIPTS = REPO / "workflow/scripts"

#: sha256 of the scripts of download, prepare and train as commit 18e1829 has them. Snakemake 9.27.1
#: (the pinned version) reruns a script rule whenever its script file is newer than its outputs,
#: even after an edit of a comment, and a git pull that changes the file moves its modification
#: time. A rerun of download or prepare rewrites the data, and that reruns every training
#: downstream; a rerun of train retrains every finished run. So these files never change: what
#: they call in the package keeps its signature instead (stages.download, prepare, train).
FROZEN = {
    "download.py": "963fbc77441bba80d5f5ee24f4f431661feb0a5b551d1ab13701b0ae278fbe25",
    "prepare.py": "6ee414d63e2ec6b3a2784b8bdf46016f9ef20c2d00ca757b9482f7242e79a183",
    "train.py": "6102e64b954e8626921d6b9af5e6bea97ca4d70abac9c0d45527b1a747912784",
}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_the_scripts_of_download_prepare_and_train_are_byte_identical(name):
    assert hashlib.sha256((SCRIPTS / name).read_bytes()).hexdigest() == FROZEN[name]


def _stage_calls(path):
    """Every ``stages.X(...)`` call of a script but ``stages.job``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                ast.unparse(node.func.value) == "stages" and node.func.attr != "job":
            yield node


def _rule_keys(value: ast.expr) -> set[str]:
    """The keys of ``snakemake.input.K``, ``snakemake.output.K`` and ``snakemake.params.K`` in ``value``;
    ``runs`` for the name a script gives ``snakemake.params.runs``."""
    keys = {node.attr for node in ast.walk(value) if isinstance(node, ast.Attribute)
            and ast.unparse(node.value) in ("snakemake.input", "snakemake.output", "snakemake.params")}
    return keys | {"runs" for node in ast.walk(value) if isinstance(node, ast.Name) and node.id == "runs"}


def test_every_other_script_passes_its_stage_the_rule_s_keys_by_name():
    scripts = sorted(path for path in SCRIPTS.glob("*.py") if path.name not in {*FROZEN, "package_path.py"})
    assert len(scripts) == 9
    for path in scripts:
        (call,) = _stage_calls(path)
        assert not call.args, f"{path.name}: positional arguments"
        for keyword in call.keywords:
            # the value is the rule's file or param of that name (a run's files as a mapping by run)
            assert keyword.arg in _rule_keys(keyword.value), f"{path.name}: {ast.unparse(keyword)}"
        function = getattr(stages, call.func.attr)
        kinds = {parameter.kind for parameter in inspect.signature(function).parameters.values()}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}, function.__name__
