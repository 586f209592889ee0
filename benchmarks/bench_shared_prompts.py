"""Shared prompts: one forward over each distinct prompt, the responses attending to its cached keys and values
(``rlhf_env.sampling.shared_prompt_forward``), against one forward over every prompt + response.

Where the agents and the env meet it: a PPO minibatch (``train``: forward and backward), RLOO's whole-batch
step (``train``), and the env's frozen reference and reward model (``env``: forward only, every episode of a
step). The batches are held-out prompts with responses the policy sampled (temperature 1, up to
``--new-tokens``), laid out as the agents lay them out; rows per distinct prompt vary from a default PPO
minibatch's (16 episodes of a batch of 16 prompts x 8, about 1.5) to a whole group's. For whole groups of 4
and 8 also the rollout (``sample``: the lean decoder prefills each distinct prompt once, then decodes every
row) and the bundled classifier RM (``classifier``: ``rm-scalar`` scoring the texts,
``rlhf_env.rewards.classifier.shared_prompt_logits``). Prints seconds per call (median of ``--repeats``), the
speed-up and whether the agents share them by default (``rlhf_env.sampling.shares``: from any repeated prompt
where the package's trunk runs the model with its C attention, else from ``rlhf_env.sampling.SHARE_FROM`` rows per
prompt, which comes from this benchmark's HF-cache path), and writes JSON.

    python benchmarks/bench_shared_prompts.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlhf_env.models import DATA_DIR, context_length, load_policy
from rlhf_env.rewards.classifier import SequenceClassifierReward, classifier_logits, shared_prompt_logits
from rlhf_env.sampling import (
    SHARE_FROM,
    encode_prompts,
    lean_decoder_applies,
    response_logprobs,
    sample_from_ids,
    shared_prompt_forward,
    shares,
    trim_padding,
)
from rlhf_env.world.build import load_split

# (label, distinct prompts, responses per prompt); a default PPO minibatch draws 16 of 128 episodes
SHAPES = [("PPO minibatch (16 of 16 prompts x 8)", None, None), ("16 rows, 2 per prompt", 8, 2),
          ("16 rows, 3 per prompt", 6, 3), ("16 rows, 4 per prompt", 4, 4), ("16 rows, 8 per prompt", 2, 8),
          ("whole batch (16 prompts x 8)", 16, 8)]
GROUPS = [("RLOO batch (16 prompts x 4)", 16, 4), ("whole batch (16 prompts x 8)", 16, 8)]  # sample, classifier


def batch(model, tokenizer, prompts: list[str], rows: np.ndarray, new_tokens: int):
    ids, mask = encode_prompts(tokenizer, [prompts[i] for i in rows])
    s = sample_from_ids(model, tokenizer, ids, mask, new_tokens, 1.0, torch.Generator().manual_seed(0))
    return trim_padding(torch.cat([s.prompt_ids, s.response_ids], 1), torch.cat([s.prompt_mask, s.response_mask], 1),
                        s.response_mask)


def seconds(model, ids, mask, R, share: bool, train: bool, repeats: int) -> float:
    def call():
        with torch.set_grad_enabled(train):
            if share:  # whatever the rows per prompt (response_log_softmax shares from SHARE_FROM only)
                logits = shared_prompt_forward(model, ids, mask, R, share_from=0).logits[:, :-1]
                logp = torch.log_softmax(logits.float(), -1).gather(2, ids[:, -R:, None]).squeeze(2)
            else:
                logp = response_logprobs(model, ids, mask, R, share_prompts=False)[0]
            if train:
                (logp * mask[:, -R:]).sum().backward()
                model.zero_grad(set_to_none=True)

    return timed(call, repeats)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first warms up
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def sample_seconds(model, tokenizer, ids, mask, new_tokens: int, share: bool, repeats: int) -> float:
    return timed(lambda: sample_from_ids(model, tokenizer, ids, mask, new_tokens, 1.0, torch.Generator().manual_seed(0),
                                         stop_at_eos=False, share_prompts=share), repeats)  # the same tokens


def classifier_seconds(rm, texts: list[str], prompts: list[str], share: bool, repeats: int) -> float:
    shared = prompts if share else None
    with torch.no_grad():
        return timed(lambda: classifier_logits(rm.model, rm.tokenizer, texts, rm.max_length, shared), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["sft", "sft-large"])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/shared_prompts.json")
    args = parser.parse_args()
    prompts = list(load_split(DATA_DIR, "prompts", "heldout")["prompt"])
    rm = SequenceClassifierReward("rm-scalar")
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "share_from": SHARE_FROM, "rows": []}
    print(f"{'policy':<10}{'batch':<38}{'rows/prompt':>12}{'mode':>11}{'full s':>9}{'shared s':>10}{'speed-up':>10}")
    for name in args.policies:
        model, tokenizer = load_policy(name)
        model.train()
        for label, distinct, each in SHAPES:
            if distinct is None:  # a random minibatch of the default PPO batch
                group = np.repeat(np.arange(16), 8)
                rows = group[np.random.default_rng(0).permutation(128)[:16]]
            else:
                rows = np.repeat(np.arange(distinct), each)
            ids, mask, R = batch(model, tokenizer, prompts, rows, args.new_tokens)
            per_prompt = len(rows) / len(np.unique(rows))
            for mode in ("train", "env"):
                full = seconds(model, ids, mask, R, False, mode == "train", args.repeats)
                shared = seconds(model, ids, mask, R, True, mode == "train", args.repeats)
                row = {"policy": name, "batch": label, "rows": len(rows), "rows_per_prompt": per_prompt, "mode": mode,
                       "full_s": full, "shared_s": shared, "speedup": full / shared,
                       "shared_path_taken": shares(model, len(rows), len(np.unique(rows)))}
                result["rows"].append(row)
                print(f"{name:<10}{label:<38}{per_prompt:>12.2f}{mode:>11}{full:>9.4f}{shared:>10.4f}"
                      f"{full / shared:>9.2f}x", flush=True)
        for label, distinct, each in GROUPS:
            rows = np.repeat(np.arange(distinct), each)
            group_prompts = [prompts[i] for i in rows]
            ids, mask = encode_prompts(tokenizer, group_prompts)
            timings = {"sample": [sample_seconds(model, tokenizer, ids, mask, args.new_tokens, share, args.repeats)
                                  for share in (False, True)]}
            taken = {"sample": lean_decoder_applies(model)}  # (the HF path runs every prompt)
            if name == args.policies[0]:  # the reward model scores this policy's samples
                s = sample_from_ids(model, tokenizer, ids, mask, args.new_tokens, 1.0, torch.Generator().manual_seed(0))
                texts = [p + r + (rm.tokenizer.eos_token if e and rm.append_eos else "")
                         for p, r, e in zip(group_prompts, s.texts, s.eos.tolist())]
                timings["classifier"] = [classifier_seconds(rm, texts, group_prompts, share, args.repeats)
                                         for share in (False, True)]
                with torch.no_grad():
                    taken["classifier"] = shared_prompt_logits(rm.model, rm.tokenizer, texts, group_prompts,
                                                               rm.max_length or context_length(rm.model, default=512)
                                                               ) is not None
            for mode, (full, shared) in timings.items():
                row = {"policy": name if mode == "sample" else rm.name, "batch": label, "rows": len(rows),
                       "rows_per_prompt": float(each), "mode": mode, "full_s": full, "shared_s": shared,
                       "speedup": full / shared, "shared_path_taken": taken[mode]}
                result["rows"].append(row)
                print(f"{row['policy']:<10}{label:<38}{each:>12.2f}{mode:>11}{full:>9.4f}{shared:>10.4f}"
                      f"{full / shared:>9.2f}x", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
