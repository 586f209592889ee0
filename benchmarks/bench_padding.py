"""Padding the batch's forwards and the sampler skip: each measured against the same code with it switched off.

- ``rests in chunks``: the responses of a shared-prompt forward (``rlhf_env.sampling.prompt_then_rest``) run in
  chunks of rows of similar length, each cut to its own longest (``length_chunks``, ``CHUNK_COST``), against one
  forward of every row padded to the batch's longest. Whole groups of 4 and 8 responses to 16 held-out prompts,
  sampled by the policy at temperature 1 (ending at EOS), as RLOO's update (``train``: forward and backward) and the
  env's reference (``env``: forward) run them, and the bundled classifier RM ``rm-scalar`` scoring them.
- ``packing``: prompt + response rows packed end to end (``rlhf_env.packing``) against the same rows padded
  (``PACK_BELOW`` = 0): 64 responses to 64 distinct held-out prompts, sampled by the policy, as PPO's update runs a
  minibatch of 16 of them (``train``: forward and backward) and the env's reference (the torch-only GPT-2) all 64
  (``env``: forward).
- ``sampler``: the rollout's sampler on the env's prompts (left-padded to ``max_prompt_tokens``, 64), with neither
  of its two cuts, with the prompt columns that are padding in every row cut, and with the decoder also dropping
  the rows that have ended (``COMPACT_AT``). The samples are the same in all three (tested).

Prints seconds per call (median of ``--repeats``) and the speed-ups, at 1 thread (as ``vs_trl.py`` runs) and at
torch's default, and writes JSON.

    python benchmarks/bench_padding.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from bench_shared_prompts import timed  # benchmarks/: a script's own folder is on sys.path

from rlhf_env import packing, sampling
from rlhf_env.models import DATA_DIR, load_policy, load_reference
from rlhf_env.rewards.classifier import SequenceClassifierReward, classifier_logits
from rlhf_env.sampling import encode_prompts, response_logprobs, sample_from_ids, trim_padding
from rlhf_env.world.build import load_split

GROUPS = [("RLOO batch (16 prompts x 4)", 16, 4), ("whole batch (16 prompts x 8)", 16, 8)]
MAX_PROMPT_TOKENS = 64  # the env's default: its prompts come left-padded to this width


def env_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts as the env gives them: left-padded to ``MAX_PROMPT_TOKENS``."""
    ids, mask = encode_prompts(tokenizer, prompts)
    pad = MAX_PROMPT_TOKENS - ids.shape[1]
    return (torch.cat([torch.full((len(ids), pad), tokenizer.pad_token_id), ids], 1),
            torch.cat([torch.zeros(len(ids), pad, dtype=mask.dtype), mask], 1))


@contextlib.contextmanager
def switched(chunk_cost: int | None = None, compact_at: float | None = None, trim: bool = True):
    """The sampling module with chunking, the decoder's row dropping or the prompt trim switched as given."""
    with contextlib.ExitStack() as stack:
        for name, value in (("CHUNK_COST", chunk_cost), ("COMPACT_AT", compact_at)):
            if value is not None:
                stack.enter_context(mock.patch.object(sampling, name, value))
        if not trim:  # the columns that are padding in every row: none found
            stack.enter_context(mock.patch.object(sampling, "first_real_column", lambda mask: 0))
        yield


def sample_seeded(model, tokenizer, ids, mask, new_tokens: int):
    return sample_from_ids(model, tokenizer, ids, mask, new_tokens, 1.0, torch.Generator().manual_seed(0))


def forward_seconds(model, ids, mask, R, train: bool, repeats: int) -> float:
    def call():
        with torch.set_grad_enabled(train):
            logp = response_logprobs(model, ids, mask, R)[0]
            if train:
                (logp * mask[:, -R:]).sum().backward()
                model.zero_grad(set_to_none=True)

    return timed(call, repeats)


def packing_rows(name: str, prompts: list[str], threads: int, new_tokens: int, repeats: int) -> list[dict]:
    """Padded against packed: a minibatch of 16 rows that share no prompt, forward and backward, and the env's
    reference forward over all 64."""
    model, tokenizer = load_policy(name)
    model.train()
    reference = load_reference(name)[0]
    ids, mask = env_prompts(tokenizer, prompts[:64])
    s = sample_from_ids(model, tokenizer, ids, mask, new_tokens, 1.0, torch.Generator().manual_seed(0))
    rows = []
    for mode, lm, take in (("train", model, 16), ("env", reference, 64)):
        full, full_mask, R = trim_padding(torch.cat([s.prompt_ids, s.response_ids], 1)[:take],
                                          torch.cat([s.prompt_mask, s.response_mask], 1)[:take],
                                          s.response_mask[:take])
        plan = packing.plan(full, full_mask, R)
        pair = []
        for below in (0.0, packing.PACK_BELOW):
            with mock.patch.object(packing, "PACK_BELOW", below):
                pair.append(forward_seconds(lm, full, full_mask, R, mode == "train", repeats))
        rows.append({"policy": name, "threads": threads, "batch": f"{take} rows, distinct prompts", "mode": mode,
                     "padded_s": pair[0], "packed_s": pair[1], "speedup": pair[0] / pair[1],
                     "padded_positions": full.numel(), "packed_positions": None if plan is None else plan.ids.numel(),
                     "real_positions": int(full_mask.sum())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["sft", "sft-large"])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--out", default="benchmarks/results/padding.json")
    args = parser.parse_args()
    prompts = list(load_split(DATA_DIR, "prompts", "heldout")["prompt"])
    rm = SequenceClassifierReward("rm-scalar")
    result = {"threads": args.threads, "torch": torch.__version__, "chunk_cost": sampling.CHUNK_COST,
              "compact_at": sampling.COMPACT_AT, "pack_below": packing.PACK_BELOW, "chunks": [], "sampler": [],
              "packing": []}
    off = 10 ** 9  # a chunk cost no saving beats: one chunk
    print(f"{'policy':<10}{'threads':>8} {'batch':<32}{'pass':>12}{'one chunk s':>13}{'chunked s':>11}"
          f"{'speed-up':>10}{'chunks':>8}")
    for threads, name in [(t, p) for t in args.threads for p in args.policies]:
        torch.set_num_threads(threads)
        model, tokenizer = load_policy(name)
        model.train()
        for label, distinct, each in GROUPS:
            group_prompts = [prompts[i] for i in np.repeat(np.arange(distinct), each)]
            ids, mask = env_prompts(tokenizer, group_prompts)
            s = sample_from_ids(model, tokenizer, ids, mask, args.new_tokens, 1.0, torch.Generator().manual_seed(0))
            full, full_mask, R = trim_padding(torch.cat([s.prompt_ids, s.response_ids], 1),
                                              torch.cat([s.prompt_mask, s.response_mask], 1), s.response_mask)
            chunks = len(sampling.length_chunks(full_mask[:, -R:].sum(1)))
            timings = {}
            for mode in ("train", "env"):
                pair = []
                for cost in (off, result["chunk_cost"]):
                    with switched(chunk_cost=cost):
                        pair.append(forward_seconds(model, full, full_mask, R, mode == "train", args.repeats))
                timings[mode] = pair
            if name == args.policies[0]:  # the reward model scores this policy's samples
                texts = [p + r + (rm.tokenizer.eos_token if e and rm.append_eos else "")
                         for p, r, e in zip(group_prompts, s.texts, s.eos.tolist())]
                pair = []
                for cost in (off, result["chunk_cost"]):
                    with switched(chunk_cost=cost), torch.no_grad():
                        pair.append(timed(functools.partial(classifier_logits, rm.model, rm.tokenizer, texts,
                                                            rm.max_length, group_prompts), args.repeats))
                timings["classifier"] = pair
            for mode, (one, chunked) in timings.items():
                row = {"policy": name if mode != "classifier" else rm.name, "threads": threads, "batch": label,
                       "mode": mode,
                       "one_chunk_s": one, "chunked_s": chunked, "speedup": one / chunked, "chunks": chunks,
                       "mean_response_tokens": float(s.response_mask.sum(1).float().mean()), "width": R}
                result["chunks"].append(row)
                print(f"{row['policy']:<10}{threads:>8} {label:<32}{mode:>12}{one:>13.4f}{chunked:>11.4f}"
                      f"{one / chunked:>9.2f}x{chunks:>8}", flush=True)
            variants = {"neither": dict(trim=False, compact_at=0.0), "prompt columns cut": dict(compact_at=0.0),
                        "and ended rows dropped": {}}
            seconds = {}
            for variant, settings in variants.items():
                with switched(**settings):
                    seconds[variant] = timed(functools.partial(sample_seeded, model, tokenizer, ids, mask,
                                                               args.new_tokens), args.repeats)
            row = {"policy": name, "threads": threads, "batch": label, **{f"{k}_s": v for k, v in seconds.items()},
                   "speedup": seconds["neither"] / seconds["and ended rows dropped"]}
            result["sampler"].append(row)
            print(f"{name:<10}{threads:>8} {label:<32}{'sample':>12} "
                  + ", ".join(f"{k} {v:.4f}" for k, v in seconds.items()) + f": {row['speedup']:.2f}x", flush=True)
    print(f"\n{'policy':<10}{'threads':>8} {'batch':<28}{'pass':>6}{'padded s':>10}{'packed s':>10}{'speed-up':>10}"
          f"{'positions padded / packed / real':>34}")
    for threads, name in [(t, p) for t in args.threads for p in args.policies]:
        torch.set_num_threads(threads)
        for row in packing_rows(name, prompts, threads, args.new_tokens, args.repeats):
            result["packing"].append(row)
            print(f"{name:<10}{threads:>8} {row['batch']:<28}{row['mode']:>6}{row['padded_s']:>10.4f}"
                  f"{row['packed_s']:>10.4f}{row['speedup']:>9.2f}x{row['padded_positions']:>14} / "
                  f"{row['packed_positions']} / {row['real_positions']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
