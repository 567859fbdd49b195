"""The slowest tests of a `make test` run, from its JUnit files (build/tests-*.xml).

    python tests/durations.py [N] [XML ...]      # default: 20, build/tests-*.xml

Prints a Markdown table (seconds, test) and the total; docs/testing.md records one.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def durations(paths: list[Path]) -> list[tuple[float, str]]:
    """(seconds, test id) of every test case in the JUnit files, slowest first."""
    cases = []
    for path in paths:
        for case in ET.parse(path).iter("testcase"):
            module = case.get("classname", "").replace(".", "/")
            name = case.get("name", "").split("@")[0]  # xdist loadgroup appends @group
            cases.append((float(case.get("time", 0)), f"{module}.py::{name}"))
    return sorted(cases, reverse=True)


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv and argv[0].isdigit() else 20
    paths = [Path(a) for a in argv if not a.isdigit()] or sorted(Path("build").glob("tests-*.xml"))
    cases = durations(paths)
    print("| s | test |\n|---:|---|")
    for seconds, name in cases[:count]:
        print(f"| {seconds:.1f} | `{name}` |")
    print(
        f"\n{len(cases)} tests, {sum(s for s, _ in cases):.0f} s in all (test time, not wall time)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
