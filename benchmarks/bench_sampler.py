"""Rollout sampler throughput: HF ``generate`` vs our sampler, on both bundled policy sizes, in one run.

Every method decodes the same left-padded batch of held-out prompts for exactly ``--new-tokens``
tokens per row (EOS does not stop any of them), sampling at temperature 1 from the full
distribution (HF: ``top_k=0``, ``min_new_tokens`` = ``max_new_tokens``). Methods:

- ``hf_generate_mkl``: ``model.generate(do_sample=True)`` with HF's layers on PyTorch's own kernels (MKL
  on a CPU; ``rlhf_env.accel.onednn.disabled()``), as a plain HF model runs it; it returns no log-probs, which
  flatters it;
- ``hf_generate``: the same, with the linear kernels this package chose for the model on this machine
  (``rlhf_env.accel.kernels``: oneDNN where it measured faster, else MKL);
- ``hf_cache_loop``: our sampler through the model's own HF forward and dynamic cache (``fast=False``),
  the generic path any causal LM takes;
- ``lean_torch_attention``: our sampler through ``rlhf_env.accel.decoder.GPT2Decoder`` (static cache, plain
  ops) with each decode step's attention in PyTorch ops (``attend_torch``), and so unfused (below);
- ``lean_unfused``: the same with the attention the package's kernels chose on this machine (``attend_c``, the C
  kernel, where ``rlhf_env.accel.kernels`` measured it faster), and each projection with its bias, the residual sums
  and the LayerNorms in PyTorch's ops;
- ``lean_gpt2``: the same with the biases, the residual sums and the LayerNorms in the C kernels' passes where
  ``rlhf_env.accel.kernels`` chose them (the decoder's ``fused`` layers): the default for GPT-2 policies.

Prints a table (tokens/s, median of ``--repeats`` rounds, the methods interleaved) and writes JSON. A second
table says where the lean path's time goes: the prefill (a run that samples one token), the decode steps, the
share of the wall time spent in the decode steps' attention (timed around each call), and, from one profiled run
(``torch.profiler``, self CPU time by op, over that run's wall time), the share of the projections and LM head (oneDNN's
``mkldnn::_linear_pointwise``, or MKL's ``aten::addmm`` and ``aten::mm``). It also gives the rate at which the
attention reads the KV cache (the columns it reads: the C kernel skips each row's left padding, PyTorch's ops
read every column), next to this machine's streaming read rate (the sum of a 256 MB tensor), and the float32
GFLOP/s of one decode-step projection through MKL and through oneDNN.

    python benchmarks/bench_sampler.py [--batch-size 64] [--new-tokens 48] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from rlhf_env.accel import decoder, kernels, onednn
from rlhf_env.models import DATA_DIR, load_policy
from rlhf_env.sampling import encode_prompts, sample_from_ids
from rlhf_env.world.build import load_split

METHODS = ("hf_generate_mkl", "hf_generate", "hf_cache_loop", "lean_torch_attention", "lean_unfused", "lean_gpt2")
PROJECTION_OPS = ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise")  # MKL's GEMMs, oneDNN's


def median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def lean_breakdown(model, tokenizer, ids, mask, new_tokens: int, repeats: int, lean_s: float) -> dict:
    """Where the lean path's time goes (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    prefill_s = median_time(partial(run, "lean_gpt2", model, tokenizer, ids, mask, 1, 0), repeats)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run("lean_gpt2", model, tokenizer, ids, mask, new_tokens, 0)
        profiled_us = (time.perf_counter() - start) * 1e6  # (the C kernels are not the profiler's ops: wall time)
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    attention = {"s": 0.0, "columns": 0}
    attend_c, attend_torch = decoder.attend_c, decoder.attend_torch

    def timed(fn, columns):
        def call(*args):
            start = time.perf_counter()
            out = fn(*args)
            attention["s"] += time.perf_counter() - start
            attention["columns"] += columns(*args)
            return out
        return call

    # the columns read: the C kernel's, each row's from its start to t; PyTorch's, every one up to t
    with (mock.patch.object(decoder, "attend_c", timed(attend_c, lambda qkv, kv, bias, start, t, scale, qkv_bias=None:
                                                        int((t + 1 - start).sum()))),
          mock.patch.object(decoder, "attend_torch", timed(attend_torch, lambda qkv, kv, bias, t, scale:
                                                            len(qkv) * (t + 1)))):
        timed_s = median_time(partial(run, "lean_gpt2", model, tokenizer, ids, mask, new_tokens, 0), 1)
    kv_bytes = 2 * model.config.n_embd * 4 * attention["columns"]  # keys and values, float32
    return {"lean_prefill_s": prefill_s, "lean_step_ms": (lean_s - prefill_s) / (new_tokens - 1) * 1e3,
            "lean_prefill_share": prefill_s / lean_s, "lean_attention_share": attention["s"] / timed_s,
            "lean_projection_share": sum(self_us.get(k, 0.0) for k in PROJECTION_OPS) / profiled_us,
            "kv_cache_read_gb_per_s": kv_bytes / attention["s"] / 1e9}


def gemm_gflops(batch: int, width: int, repeats: int = 200) -> dict[str, float]:
    """float32 GFLOP/s of one decode-step projection, (batch, width) @ (width, 4 * width) + bias, through
    MKL (``addmm``, what HF's GPT-2 runs) and through oneDNN (what the lean path runs where available)."""
    x, w, b = torch.randn(batch, width), torch.randn(width, 4 * width), torch.randn(4 * width)
    rates = {"mkl": median_time(partial(_repeat, lambda: torch.addmm(b, x, w), repeats), 3)}
    if onednn.available(w):
        packed = onednn.pack(w.T)  # as the lean decoder packs its weights
        rates["onednn"] = median_time(partial(_repeat, partial(onednn.packed_linear, x, packed, b), repeats), 3)
    return {k: 2 * batch * width * 4 * width * repeats / t / 1e9 for k, t in rates.items()}


def _repeat(fn, n: int) -> None:
    for _ in range(n):
        fn()


def streaming_read_gb_per_s(repeats: int = 5) -> float:
    x = torch.ones(64 * 1024 * 1024)  # 256 MB, far larger than any cache
    return x.numel() * 4 / median_time(x.sum, repeats) / 1e9


def run(method: str, model, tokenizer, ids, mask, new_tokens: int, seed: int) -> torch.Tensor:
    if method == "hf_generate_mkl":
        with onednn.disabled():
            return run("hf_generate", model, tokenizer, ids, mask, new_tokens, seed)
    generator = torch.Generator().manual_seed(seed)
    if method == "hf_generate":
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
        return out[:, ids.shape[1]:]
    if method == "lean_torch_attention":
        with mock.patch.object(decoder, "c_attention", lambda config: False):
            return run("lean_gpt2", model, tokenizer, ids, mask, new_tokens, seed)
    if method == "lean_unfused":
        with mock.patch.object(decoder.GPT2Decoder, "_fuses", lambda self: False):
            return run("lean_gpt2", model, tokenizer, ids, mask, new_tokens, seed)
    return sample_from_ids(model, tokenizer, ids, mask, new_tokens, 1.0, generator, fast=method != "hf_cache_loop",
                           stop_at_eos=False).response_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["sft", "sft-large"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/sampler.json")
    args = parser.parse_args()

    prompts = list(load_split(DATA_DIR, "prompts", "heldout")["prompt"][:args.batch_size])
    rows = []
    for name in args.policies:
        model, tokenizer = load_policy(name)
        ids, mask = encode_prompts(tokenizer, prompts)
        n_params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            for method in METHODS:
                out = run(method, model, tokenizer, ids, mask, args.new_tokens, 0)  # warm-up
                assert out.shape == (args.batch_size, args.new_tokens), out.shape
            samples = {method: [] for method in METHODS}
            for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every method alike
                for method in METHODS:
                    samples[method].append(median_time(partial(run, method, model, tokenizer, ids, mask,
                                                               args.new_tokens, 0), 1))
            times = {method: float(np.median(samples[method])) for method in METHODS}
            breakdown = lean_breakdown(model, tokenizer, ids, mask, args.new_tokens, args.repeats,
                                       times["lean_gpt2"])
        tokens = args.batch_size * args.new_tokens
        row = {"policy": name, "parameters": n_params, "prompt_tokens": ids.shape[1],
               "kernels": kernels.choose(model.config).describe(),
               **{f"{m}_s": times[m] for m in METHODS}, **{f"{m}_tokens_per_s": tokens / times[m] for m in METHODS},
               "speedup_vs_generate_mkl": times["hf_generate_mkl"] / times["lean_gpt2"],
               "speedup_vs_generate": times["hf_generate"] / times["lean_gpt2"],
               "speedup_vs_hf_cache_loop": times["hf_cache_loop"] / times["lean_gpt2"],
               "speedup_vs_torch_attention": times["lean_torch_attention"] / times["lean_gpt2"],
               "speedup_vs_unfused": times["lean_unfused"] / times["lean_gpt2"], **breakdown,
               **{f"gemm_gflops_{k}": v for k, v in gemm_gflops(args.batch_size, model.config.n_embd).items()}}
        rows.append(row)

    print(f"batch {args.batch_size}, {args.new_tokens} new tokens per row, tokens/s (median of {args.repeats}), "
          f"{torch.get_num_threads()} threads")
    print(f"{'policy':<11}{'params':>8}{'generate, MKL':>15}{'generate':>10}{'HF loop':>10}{'lean, torch attn':>18}"
          f"{'lean, unfused':>15}{'lean':>10}{'vs generate, MKL':>18}{'vs generate':>13}")
    for r in rows:
        print(f"{r['policy']:<11}{r['parameters'] / 1e6:>7.1f}M{r['hf_generate_mkl_tokens_per_s']:>15.0f}"
              f"{r['hf_generate_tokens_per_s']:>10.0f}{r['hf_cache_loop_tokens_per_s']:>10.0f}"
              f"{r['lean_torch_attention_tokens_per_s']:>18.0f}{r['lean_unfused_tokens_per_s']:>15.0f}"
              f"{r['lean_gpt2_tokens_per_s']:>10.0f}{r['speedup_vs_generate_mkl']:>17.1f}x"
              f"{r['speedup_vs_generate']:>12.1f}x")
    for r in rows:
        print(f"{r['policy']} kernels: {r['kernels']}")
    read_rate = streaming_read_gb_per_s()
    print(f"\nwhere the lean path's time goes; this machine streams memory at {read_rate:.0f} GB/s")
    print(f"{'policy':<11}{'prefill':>9}{'step':>9}{'attention':>11}{'projections':>13}{'KV cache read':>15}"
          f"{'GEMM, MKL':>12}{'GEMM, oneDNN':>15}")
    for r in rows:
        print(f"{r['policy']:<11}{r['lean_prefill_share']:>9.0%}{r['lean_step_ms']:>7.2f}ms"
              f"{r['lean_attention_share']:>11.0%}{r['lean_projection_share']:>13.0%}"
              f"{r['kv_cache_read_gb_per_s']:>10.1f} GB/s{r['gemm_gflops_mkl']:>7.0f} GF/s"
              f"{r.get('gemm_gflops_onednn', float('nan')):>10.0f} GF/s")
    result = {"streaming_read_gb_per_s": read_rate,
              "batch_size": args.batch_size, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": kernels.machine(),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
