"""Each file named once: the rules declare exactly the files that alexnet_cifar.layout names, and no
other code spells one of those names."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath

from workflow_helpers import REPO, make_workdir, snakemake

from alexnet_cifar import config, layout


def test_the_rules_declare_the_files_that_the_package_names(tmp_path):
    """``snakemake --summary`` lists every output of the job graph with the rule that writes it; for a
    config with seeds and a sweep (so that every rule has a job) those are the package's names."""
    workdir = make_workdir(tmp_path, {})
    lines = snakemake(workdir, "--summary", configfile="config/lr-sweep.yaml").stdout.splitlines()
    header = lines.index("output_file\tdate\trule\tlog-file(s)\tstatus\tplan")
    by_rule = defaultdict(set)
    for line in lines[header + 1:]:
        path, _, rule, *_ = line.split("\t")
        by_rule[rule].add(path)
    cfg = config.with_defaults(config.load_config(REPO / "config/config.yaml", REPO / "config/lr-sweep.yaml"))
    outdir, runs = cfg["outdir"], list(config.expand_runs(cfg))
    assert len(runs) == 16
    assert by_rule["train"] == {f"{outdir}/{layout.RUN_FOLDER.format(run=run)}/{name}"
                                for run in runs for name in layout.RUN_FILES.values()}
    assert by_rule["metrics"] == {f"{outdir}/metrics/{name.format(run=run)}"
                                  for run in runs for name in layout.RUN_METRICS.values()}
    for rule, outputs in layout.WORKFLOW_FILES.items():
        assert by_rule[rule] == {f"{outdir}/{path}" for path in outputs.values()}, rule


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal of ``path`` in code: docstrings, comments and ``help=``
    texts left out. A rule file (not Python) is read line by line, comments cut off."""
    if path.suffix == ".smk" or path.name == "Snakefile":
        return [(number, text) for number, line in enumerate(path.read_text().splitlines(), 1)
                for text in re.findall(r"\"[^\"]*\"|'[^']*'", line.split("#", 1)[0])]
    tree = ast.parse(path.read_text())
    exempt = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            exempt.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            exempt |= {id(inner) for inner in ast.walk(node.value)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exempt]


def test_no_code_but_the_layout_spells_a_file_name_of_it():
    names = [*layout.RUN_FILES.values(), layout.CHECKPOINT_FILE, ".facts.json",
             *(PurePosixPath(path).name for path in layout.workflow_paths())]
    code = [*(REPO / "src").rglob("*.py"), *(REPO / "workflow").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"),
            REPO / "Snakefile"]
    assert REPO / "src/alexnet_cifar/layout.py" in code
    spelled = defaultdict(list)
    for path in code:
        for line, text in _string_literals(path):
            for name in names:
                if name in text:
                    spelled[name].append(f"{path.relative_to(REPO)}:{line}")
    assert set(spelled) == set(names)  # the check finds each where it is spelled
    assert {name: places for name, places in spelled.items()
            if len(places) != 1 or not places[0].startswith("src/alexnet_cifar/layout.py:")} == {}
