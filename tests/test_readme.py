"""The README's Layout names every package and module (its code blocks are tested in tests/test_examples.py)."""

from pathlib import Path


def test_the_layout_section_names_every_package_and_module():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    root = Path(__file__).parents[1]
    for package in ("rlhf_env", "agents"):
        for path in sorted((root / package).iterdir()):
            if path.name.startswith("_") or path.name == "assets" or path.suffix not in (".py", ""):
                continue
            name = path.name + ("/" if path.is_dir() else "")
            assert name in layout, f"the README's Layout does not mention {package}/{name}"
            if path.is_dir() and path.name != "world":  # the world's modules are listed by what they hold
                for module in sorted(path.glob("[!_]*.py")):
                    assert module.name in layout, f"the README's Layout does not mention {package}/{name}{module.name}"
