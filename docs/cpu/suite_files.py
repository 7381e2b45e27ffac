"""The ten slowest test files of a ``pytest --durations=0`` log: seconds (setup, call and teardown
added up per file, as each worker spent them), as a Markdown table.

    .venv/bin/python docs/cpu/suite_files.py LOG [N]
"""
from __future__ import annotations

import collections
import re
import sys

DURATION = re.compile(r"([\d.]+)s (?:setup|call|teardown)\s+(\S+?)::")


def main() -> None:
    log, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10
    per_file: collections.Counter = collections.Counter()
    summary = ""
    with open(log) as handle:
        for line in handle:
            match = DURATION.match(line)
            if match:
                per_file[match[2]] += float(match[1])
            elif re.search(r"\d+ passed", line):
                summary = line.strip(" =\n")
    print(f"{summary}; {sum(per_file.values()):.0f} s of test time over both workers\n")
    print("| file | seconds |\n| --- | --- |")
    for name, seconds in per_file.most_common(top):
        print(f"| `{name}` | {seconds:.0f} |")


if __name__ == "__main__":
    main()
