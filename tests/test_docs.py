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


def test_a_table_made_on_another_build_of_the_assets_is_marked(tmp_path):
    from rlhf_env.paths import assets_digest, check_built_on, finished_on, mark_built_on

    assets = tmp_path / "assets"
    (assets / "models" / "sft").mkdir(parents=True)
    weights = assets / "models" / "sft" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    (assets / "manifest.json").write_text('{"seconds": {"sft:small": 1.0}}')
    digest = assets_digest(assets)
    (assets / "manifest.json").write_text('{"seconds": {"sft:small": 2.0}}')  # timings only: the same build
    assert assets_digest(assets) == digest
    weights.write_bytes(b"\x00" * 63 + b"\x01")  # one byte of a model: another build
    changed = assets_digest(assets)
    assert changed != digest
    (assets / ".DS_Store").write_bytes(b"x")  # hidden files are no part of a build
    assert assets_digest(assets) == changed
    with pytest.raises(FileNotFoundError, match="no assets in"):
        assets_digest(tmp_path / "nowhere")

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="was made on an unrecorded build of the assets"):
        check_built_on(run, digest)  # a run from before runs recorded their build
    mark_built_on(run, digest)
    check_built_on(run, digest)
    mark_built_on(run, digest)  # resumed on the same build
    with pytest.raises(RuntimeError, match=f"was made on {digest} of the assets"):
        mark_built_on(run, digest[::-1])  # resumed on another
    with pytest.raises(RuntimeError, match=f"was made on {digest} of the assets, not the shipped build {digest[::-1]}"):
        check_built_on(run, digest[::-1])
    fresh = tmp_path / "fresh"
    assert not finished_on(fresh, digest, "result.json")  # not finished: its build recorded for the run to come
    check_built_on(fresh, digest)
    (fresh / "result.json").write_text("{}")
    assert finished_on(fresh, digest, "result.json")
    with pytest.raises(RuntimeError, match=f"was made on {digest} of the assets, not the shipped build {digest[::-1]}"):
        finished_on(fresh, digest[::-1], "result.json")  # finished on another build: refused, not reused

    stale = runpy.run_path(str(ROOT / "benchmarks" / "results_tables.py"))["stale"]
    assert stale({"assets": assets_digest(), "rows": []}, "ppo.json") == []
    for result in ({"assets": digest}, {}):  # another build, or none recorded
        (note,) = stale(result, "ppo.json")
        assert "Not rerun on the shipped assets" in note and "`ppo.json`" in note
