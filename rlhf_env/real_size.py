"""Standard architectures at a real model's size, with random weights, to run the pipeline at that size offline.

``build_real_size(arch, directory)`` writes ``directory/policy`` (a causal LM) and ``directory/reward`` (a
sequence classifier of the same architecture with one output), each a self-contained Hugging Face directory
with this package's tokenizer, so that

    rlhf ppo --policy DIR/policy --reference DIR/policy --reward DIR/reward

trains at that size. Nothing is downloaded: the weights are a fresh initialisation, so the policy samples
noise and the reward is arbitrary. The point is the cost (memory, time per iteration) and that the code paths
work, not learning.

=================  =========================================================================================
``arch``           what
=================  =========================================================================================
``gpt2-small``     GPT-2 small's trunk: 12 layers, 768 wide, 12 heads, 1,024 positions, tied LM head
``llama``          a Llama-style model of about that size: 12 layers, 768 wide, 12 query and 4 key-value
                   heads (grouped-query attention), SwiGLU MLP 2,048 wide, RMSNorm, rotary positions
=================  =========================================================================================

**The vocabulary is this package's tokenizer's**, not GPT-2's 50,257 tokens: the embeddings and LM head are
far smaller than GPT-2 small's, so the models have fewer parameters than the published 124M
(``parameter_counts`` gives both). The trunk, where a response's compute goes, has GPT-2 small's shapes.
The directories are saved as a hub checkpoint would be (not marked as this package's), so they load on stock
PyTorch layers, without this package's CPU kernels (``rlhf_env.accel``), as a user's own model would.

    python -m rlhf_env.real_size gpt2-small runs/gpt2-small
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from rlhf_env.models import TOKENIZER_DIR, load_tokenizer, no_progress_bars, usual_file_modes

ARCHITECTURES = ("gpt2-small", "llama")
GPT2_SMALL_VOCAB = 50257  # GPT-2's byte-level BPE vocabulary, for the published parameter count


def model_config(arch: str, tokenizer, vocab_size: int | None = None):
    """The Hugging Face config of ``arch`` with ``tokenizer``'s special tokens (``vocab_size``: its vocabulary
    unless given), dropout off."""
    from transformers import GPT2Config, LlamaConfig

    tokens = dict(vocab_size=vocab_size or len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt2-small":
        return GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, **tokens)
    if arch == "llama":
        return LlamaConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, num_key_value_heads=4,
                           intermediate_size=2048, max_position_embeddings=1024, **tokens)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


def new_causal_lm(arch: str, tokenizer, seed: int = 0, vocab_size: int | None = None):
    """A freshly initialised causal LM of ``arch`` (``vocab_size`` as in ``model_config``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(arch, tokenizer, vocab_size)).eval()


def new_reward_model(arch: str, tokenizer, seed: int = 1):
    """A freshly initialised sequence classifier of ``arch`` with one output: a reward model."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = model_config(arch, tokenizer)
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_config(config).eval()


def parameter_counts(arch: str, tokenizer) -> dict[str, int]:
    """Parameters of ``arch`` with ``tokenizer``'s vocabulary, and with GPT-2's (the published size)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        ours, published = (sum(p.numel() for p in new_causal_lm(arch, tokenizer, vocab_size=v).parameters())
                           for v in (None, GPT2_SMALL_VOCAB))
    return {"parameters": ours, "parameters_with_gpt2_vocab": published}


def build_real_size(arch: str, directory: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write ``directory/policy`` and ``directory/reward`` (see the module docstring); returns their paths."""
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    paths = {"policy": Path(directory) / "policy", "reward": Path(directory) / "reward"}
    models = {"policy": new_causal_lm(arch, tokenizer, seed), "reward": new_reward_model(arch, tokenizer, seed + 1)}
    for name, model in models.items():
        with no_progress_bars():
            model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
        usual_file_modes(paths[name])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf_env.real_size", description=__doc__.split("\n\n")[0])
    parser.add_argument("arch", choices=ARCHITECTURES)
    parser.add_argument("directory", help="where policy/ and reward/ are written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = build_real_size(args.arch, args.directory, args.seed)
    print(f"rlhf ppo --policy {paths['policy']} --reference {paths['policy']} --reward {paths['reward']}")


if __name__ == "__main__":
    main()
