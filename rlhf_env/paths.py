"""Where the shipped assets live, what a model name or path resolves to, and where a run may write.

No torch or transformers import here: the configs' defaults and checks use these, and the ``rlhf`` command
reports a mistake in them before anything heavy loads. ``rlhf_env.models`` re-exports the names.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
MODELS_DIR = ASSETS / "models"
TOKENIZER_DIR = ASSETS / "tokenizer"
DATA_DIR = ASSETS / "data"

BUNDLED_POLICIES = ("base", "sft", "base-large", "sft-large")
BUNDLED_REWARDS = ("rm", "rm-scalar")  # see rlhf_env.rewards


def resolve(name_or_path: str | os.PathLike, bundled: tuple[str, ...] = BUNDLED_POLICIES) -> str:
    """Map a bundled name to its directory; check that a local path exists. Hub ids pass through."""
    name = str(name_or_path)
    what = "reward model" if bundled == BUNDLED_REWARDS else "policy"
    if name in bundled:
        path = MODELS_DIR / name
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"bundled model {name!r} is missing from {path}; run `rlhf build-assets`")
        return str(path)
    if os.path.exists(name):
        if not any(os.path.exists(os.path.join(name, f)) for f in ("config.json", "tokenizer_config.json")):
            raise ValueError(f"{name!r} is not a Hugging Face model directory (it has no config.json)")
        return name
    if not re.fullmatch(r"\w[\w.-]*(/[\w.-]+)?", name):  # not of the hub-id form "name" or "org/name"
        raise FileNotFoundError(f"no such {what} path: {name!r}")
    close = difflib.get_close_matches(name, bundled, n=1)
    if close:  # almost certainly a typo: fail now rather than after the hub's retries
        raise ValueError(f"{name!r} is not a bundled model {bundled}; did you mean {close[0]!r}?")
    return name  # a hub id such as "gpt2" or "org/model"


def assets_digest(assets: str | os.PathLike = ASSETS) -> str:
    """A short fingerprint of a build of the assets: every file's path and bytes but ``manifest.json``'s (its
    timings). The quality benchmarks record it in their JSON, and the results pages mark a table made on another
    build."""
    root, digest = Path(assets), hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(f"no assets in {root}; run `rlhf build-assets`")
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


BUILT_ON = "assets.txt"  # in a benchmark's run directory: the build of the assets the run used


def check_built_on(run_dir: str | os.PathLike, digest: str) -> None:
    """Refuse a benchmark's finished run in ``run_dir`` that was made on another build of the assets than
    ``digest``, or that never recorded one (``mark_built_on``): reusing it would stamp a table with a build its
    run did not use."""
    recorded = Path(run_dir) / BUILT_ON
    made = recorded.read_text().strip() if recorded.exists() else "an unrecorded build"
    if made != digest:
        raise RuntimeError(f"{run_dir} was made on {made} of the assets, not the shipped build {digest}; delete it "
                           "or pass another runs directory")


def mark_built_on(run_dir: str | os.PathLike, digest: str) -> None:
    """Record in ``run_dir`` the build of the assets that the run about to start uses (refused where a run started
    there on another build: a resumed run stays on one build)."""
    if (Path(run_dir) / BUILT_ON).exists():
        check_built_on(run_dir, digest)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / BUILT_ON).write_text(digest + "\n")


def finished_on(run_dir: str | os.PathLike, digest: str, finished: str) -> bool:
    """Whether ``run_dir`` holds a finished run (its file ``finished`` exists) to reuse: True if it was made on build
    ``digest`` of the assets (one of another build is refused, ``check_built_on``); False if not finished, after
    recording ``digest`` for the run about to start or resume there (``mark_built_on``)."""
    if (Path(run_dir) / finished).exists():
        check_built_on(run_dir, digest)
        return True
    mark_built_on(run_dir, digest)
    return False


def check_out(out: str | os.PathLike) -> Path:
    """A run's output directory, refused if it or a directory above it is a file (the run would fail at its first
    write)."""
    path = Path(out)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is under a file ({existing})"
        raise ValueError(f"--out {path} {what}; pass a directory")
    return path
