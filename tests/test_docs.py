"""The documentation holds together: every relative link resolves, the README stays short, and the
workflow catalog finds its keys."""
from __future__ import annotations

import re

import yaml
from workflow_helpers import REPO

PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", REPO / "config" / "README.md",
                *(REPO / "docs").rglob("*.md")])
#: [text](target): a target without a scheme (http:, https:, mailto:) or a leading # is a path
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page):
    for target in LINK.findall(page.read_text()):
        if not re.match(r"[a-z]+:|#", target):
            yield target.split("#", 1)[0]


def test_every_relative_link_in_the_docs_resolves():
    broken = [f"{page.relative_to(REPO)}: {target}" for page in PAGES for target in relative_links(page)
              if not (page.parent / target).exists()]
    assert broken == []
    assert sum(1 for page in PAGES for _ in relative_links(page)) > 30  # the pattern finds the links


def test_the_readme_is_read_in_one_sitting():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def test_the_workflow_catalog_reads_its_keys_where_it_looks_for_them():
    """snakemake-workflow-catalog's generator reads usage.mandatory-flags, usage.software-stack-deployment
    and usage.report from this file."""
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert usage["mandatory-flags"]["flags"] == "--resources gpu=1" and usage["mandatory-flags"]["desc"]
    assert usage["software-stack-deployment"] == {"conda": True}
    assert usage["report"] is True
