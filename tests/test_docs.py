"""The documentation points at things that exist: every relative link in the Markdown files
resolves (to a file, a folder, or a heading of a Markdown file), and every file path a document
names on its own in backticks (`docs/quality.md`, `experiments/beyond-defaults/analyse.py`) is
in the repository. Moving or renaming a file fails here until the documents follow."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATTERNS = ("*.md", "docs/*.md", "experiments/**/*.md", "benchmarks/**/*.md", "jaxpref/**/*.md")
DOCUMENTS = sorted(path for pattern in PATTERNS for path in REPO.glob(pattern))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TOP_FOLDERS = ("jaxpref", "scripts", "tests", "docs", "benchmarks", "experiments")
# A backticked path and nothing else; globs and placeholders (`RUN/...`, `<epoch>`) are left out.
NAMED_PATH = re.compile(rf"`((?:{'|'.join(TOP_FOLDERS)})/[\w./-]*)`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a file's headings: lower case, punctuation dropped, spaces -> '-'."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def broken_links(document: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", document.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path) if path else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif (
            anchor
            and resolved.suffix == ".md"
            and anchor not in heading_anchors(resolved.read_text())
        ):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def test_documents_are_found():
    names = {str(path.relative_to(REPO)) for path in DOCUMENTS}
    assert {"README.md", "docs/quality.md", "experiments/README.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(document):
    assert not broken_links(document), f"{document.relative_to(REPO)}: {broken_links(document)}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_paths_exist(document):
    missing = sorted(
        path
        for path in NAMED_PATH.findall(document.read_text())
        if not (REPO / path.rstrip(".")).exists()
    )
    assert not missing, f"{document.relative_to(REPO)} names paths that do not exist: {missing}"


def test_a_moved_file_is_caught(tmp_path):
    document = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading, with punctuation\n")
    document.write_text(
        "[ok](there.md) [anchor](there.md#a-heading-with-punctuation) [web](https://x.org)\n"
        "[gone](moved.md) [bad anchor](there.md#nowhere)\n"
    )
    assert broken_links(document) == [
        "moved.md: no such file",
        "there.md#nowhere: no heading with that anchor",
    ]
