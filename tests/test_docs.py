"""The repository documents itself: no pointer to files outside it, and every relative doc link resolves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The outside design notes users never see; spelled in two parts so this file does not match itself.
OUTSIDE_REFERENCES = ("DESIGN" + ".md", "DESIGN" + " §")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split("\0") if name]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (except - and _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(markdown: Path) -> set[str]:
    text = _FENCE.sub("", markdown.read_text(encoding="utf-8"))
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def _doc_pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "data_cards").glob("*.md")), *sorted((ROOT / "method_comparison").glob("*.md")),
            ROOT / "eagle_align" / "recipes" / "README.md", ROOT / "benchmarks" / "README.md"]


# The product: the package, its recipes, docs and data cards. Dated lab history belongs in
# method_comparison/history.md (README.md is left out while it is being rewritten).
_PRODUCT = ("eagle_align/", "docs/", "data_cards/", "benchmarks/", "README.md", "Makefile", "constraints.txt",
            "pyproject.toml")
_DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for path in _tracked_files():
        if not path.is_file():
            continue  # deleted in the working tree, not yet committed
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), start=1):
            if any(reference in line for reference in OUTSIDE_REFERENCES):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "references to design notes that are not part of the repository:\n" + "\n".join(offenders)


def test_docs_exist_and_readme_links_them():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/method.md", "docs/conventions.md"):
        assert (ROOT / page).is_file(), page
        assert f"]({page})" in readme, f"README.md does not link {page}"


@pytest.mark.parametrize("page", _doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
            broken.append(f"{target} (no heading #{fragment} in {linked.name})")
    assert not broken, f"{page.relative_to(ROOT)} has broken links: {broken}"


def test_the_product_carries_no_dated_lab_history():
    dated = []
    for path in _tracked_files():
        name = path.relative_to(ROOT).as_posix()
        if not path.is_file() or not name.startswith(_PRODUCT):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        dated += [f"{name}:{number}: {line.strip()}" for number, line in enumerate(text.splitlines(), start=1)
                  if _DATE.search(line)]
    assert not dated, "dated history in the product (move it to method_comparison/history.md):\n" + "\n".join(dated)


def test_readme_reads_top_to_bottom():
    """Install, quickstart, one CLI example, results, links, citation; short enough to read in one go."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("|"))  # tables are not prose
    assert len(text.split()) <= 1000
    assert max(len(paragraph.split()) for paragraph in re.split(r"\n\s*\n", prose)) <= 120
    order = [text.index(heading) for heading in ("## Install", "## Quickstart", "## Command line", "## Results",
                                                  "## Documentation", "## Citation")]
    assert order == sorted(order)
    assert "pip install eagle-align" in text and "make demo" in text and "make test" in text
    assert "arXiv:2602.07008" in text and "arXiv:2509.22496" in text
    quickstart = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(quickstart.strip().splitlines()) <= 15
