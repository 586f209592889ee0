"""Ranked comparisons: K = 4..9 policy samples per prompt, ranked by simulated labelers.

This is the data of InstructGPT's reward-model stage. Samples come from one policy at a temperature
drawn per prompt (so the ranks are informative) and are de-duplicated: identical responses carry no
preference. Prompts with fewer than 4 distinct samples are dropped, so every ranking has K = 4..9.
Splits of ``build_comparisons``:

- ``train``: most ``rm`` prompts, each ranked by one training labeler;
- ``test``: held-out comparisons (other ``rm`` prompts), ranked by training labelers;
- ``test_heldout_labelers``: the same prompts and responses as ``test``, ranked by held-out labelers.
  Comparing the two gives the inter-labeler agreement on exactly the data the RM is scored on;
- ``heldout_customers``: samples on held-out customers' prompts, ranked by held-out labelers. For
  evaluation only (the RM's correlation with gold on unseen customers); never trained on.

Columns: ``prompt``, ``task``, ``customer_id``, ``responses`` (list), ``eos`` (list), ``ranking``
(indices into ``responses``, best first), ``labeler_id``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from datasets import Dataset, DatasetDict

from rlhf_env.configs import WorldStatsConfig
from rlhf_env.sampling import sample
from rlhf_env.world.build import SPLITS, WorldConfig, load_split
from rlhf_env.world.customers import HELDOUT_CUSTOMERS, N_CUSTOMERS
from rlhf_env.world.labelers import (
    N_HELDOUT_LABELERS,
    N_LABELERS,
    Labeler,
    LabelerConfig,
    make_panel,
    panel_agreement,
    rank,
)
from rlhf_env.world.stats import correct_first, padded_preference


def sample_candidates(model, tokenizer, prompts: list[str], seed: int, k_range=(4, 9), temperatures=(0.6, 1.4),
                      draws: int = 16, max_new_tokens: int = 48, batch_size: int = 512
                      ) -> list[tuple[list[str], list[bool]]]:
    """K distinct responses per prompt (K uniform in ``k_range``), each with its EOS flag.

    Each prompt gets its own temperature, uniform in ``temperatures``; ``draws`` samples are drawn
    and the first K distinct ones kept. A prompt with fewer than ``k_range[0]`` distinct samples gets
    an empty list (callers drop it).
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    prompt_temps = rng.uniform(*temperatures, size=len(prompts))
    flat = [(p, t) for p, t in zip(prompts, prompt_temps) for _ in range(draws)]
    texts, eos = [], []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        out = sample(model, tokenizer, [p for p, _ in chunk], max_new_tokens, torch.tensor([t for _, t in chunk]),
                     generator)
        texts += out.texts
        eos += out.eos.tolist()
    candidates = []
    for i, k in enumerate(rng.integers(k_range[0], k_range[1] + 1, size=len(prompts))):
        distinct: dict[str, tuple[str, bool]] = {}  # stripped text -> (text, eos), first occurrence
        for text, e in zip(texts[i * draws:(i + 1) * draws], eos[i * draws:(i + 1) * draws]):
            if len(distinct) < k:
                distinct.setdefault(text.strip(), (text, e))
        kept = list(distinct.values()) if len(distinct) >= k_range[0] else []
        candidates.append(([t for t, _ in kept], [e for _, e in kept]))
    return candidates


def rank_all(rng: np.random.Generator, labelers: list[Labeler], rows, candidates) -> Dataset:
    out = []
    for row, (responses, eos) in zip(rows, candidates):
        labeler = labelers[int(rng.integers(len(labelers)))]
        out.append({"prompt": row["prompt"], "task": row["task"], "customer_id": row["customer_id"],
                    "responses": responses, "eos": eos, "ranking": rank(rng, labeler, row["task"], responses, eos),
                    "labeler_id": labeler.id})
    return Dataset.from_list(out)


def build_comparisons(model, tokenizer, prompts, heldout_prompts, seed: int = 0, test_fraction: float = 0.1,
                      labeler_config: LabelerConfig | None = None) -> DatasetDict:
    """Rank samples of ``model`` on ``prompts`` (the ``rm`` split) and on ``heldout_prompts``."""
    rng = np.random.default_rng([seed, 6])
    candidates = sample_candidates(model, tokenizer, list(prompts["prompt"]), seed)
    heldout_candidates = sample_candidates(model, tokenizer, list(heldout_prompts["prompt"]), seed + 1)
    keep = [i for i, (responses, _) in enumerate(candidates) if responses]
    heldout_keep = [i for i, (responses, _) in enumerate(heldout_candidates) if responses]
    n_test = max(1, round(test_fraction * len(keep)))
    panel = make_panel(seed, labeler_config)
    train_labelers, heldout_labelers = panel[:N_LABELERS - N_HELDOUT_LABELERS], panel[N_LABELERS - N_HELDOUT_LABELERS:]
    test_ix, train_ix = keep[:n_test], keep[n_test:]
    return DatasetDict({
        "train": rank_all(rng, train_labelers, prompts.select(train_ix), [candidates[i] for i in train_ix]),
        "test": rank_all(rng, train_labelers, prompts.select(test_ix), [candidates[i] for i in test_ix]),
        "test_heldout_labelers": rank_all(rng, heldout_labelers, prompts.select(test_ix),
                                          [candidates[i] for i in test_ix]),
        "heldout_customers": rank_all(rng, heldout_labelers, heldout_prompts.select(heldout_keep),
                                      [heldout_candidates[i] for i in heldout_keep]),
    })


def world_stats(config: WorldStatsConfig) -> dict:
    """``rlhf world``: the world's splits, family mix and customers, and its labelers measured on a policy's
    samples (agreement), on padded reference answers (bias) and on correct against incorrect answers."""
    from rlhf_env.models import DATA_DIR, load_policy

    data = config.data or str(DATA_DIR)
    splits = {s: load_split(data, "prompts", s) for s in SPLITS}
    rows = splits["rm"].shuffle(seed=config.seed).select(range(min(config.n_prompts, len(splits["rm"]))))
    panel = make_panel(WorldConfig().seed, LabelerConfig(noise=config.noise, length_bias=config.length_bias))
    rng = np.random.default_rng(config.seed)
    model, tokenizer = load_policy(config.policy)
    candidates = sample_candidates(model, tokenizer, list(rows["prompt"]), config.seed)
    tasks, pool, eos = list(rows["task"]), [c[0] for c in candidates], [c[1] for c in candidates]
    return {
        "customers": N_CUSTOMERS,
        "heldout_customers": [f"customer-{i:02d}" for i in HELDOUT_CUSTOMERS],
        "splits": {s: len(d) for s, d in splits.items()},
        "labeler_written_fraction": {s: float(np.mean(np.array(d["source"]) == "labeler")) for s, d in splits.items()},
        "families": dict(sorted(Counter(splits["heldout"]["family"]).items())),
        "labelers": len(panel),
        "labeler_agreement": panel_agreement(rng, panel, tasks, pool, eos),
        "agreement_pool": f"{config.policy} samples, K=4..9 distinct per prompt, {len(tasks)} prompts",
        "prefer_padded": padded_preference(rng, panel, tasks),
        "correct_first": correct_first([
            {"task": t, "responses": r, "eos": e, "ranking": rank(rng, panel[int(rng.integers(len(panel)))], t, r, e)}
            for t, r, e in zip(tasks, pool, eos)])[0],
    }
