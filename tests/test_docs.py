"""The README stays a front door, and the results pages are what benchmarks/results_tables.py writes from the
JSON in the repository (numbers are never typed by hand)."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_the_generated_pages_are_up_to_date():
    pages = runpy.run_path(str(ROOT / "benchmarks" / "results_tables.py"))["pages"](ROOT)
    assert {p.name for p in pages} == {"results.md", "performance.md", "README.md"}
    for path, text in pages.items():
        assert path.read_text() == text, f"{path.name} is stale: run python benchmarks/results_tables.py"


def test_the_readme_is_short_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_docs_page_links_back_to_the_readme(page):
    assert "(../README.md)" in page.read_text().split("\n\n", 3)[1]
