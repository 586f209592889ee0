"""One place that loads policies and tokenizers: a bundled name or anything ``from_pretrained`` takes.

Bundled policies ship inside the package (``rlhf_env/assets/models/NAME``), each a self-contained
Hugging Face directory (config, safetensors weights, tokenizer):

=============  =====================================================
name           what
=============  =====================================================
``base``       small (~1M parameters) GPT-2 pretrained on web text
``sft``        ``base`` fine-tuned on labeler demonstrations
``base-large`` large (~4M parameters) GPT-2 pretrained on web text
``sft-large``  ``base-large`` fine-tuned on labeler demonstrations
=============  =====================================================

Weights are stored in float16 to keep the package small and are loaded as float32.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlhf_env.accel import accelerate, c_gelu, onednn_layers
from rlhf_env.accel.gpt2 import load_torch_gpt2, read_config, supports
from rlhf_env.accel.switch import switched_on
from rlhf_env.paths import (  # noqa: F401  (re-exported: where the assets live, and what a name resolves to)
    ASSETS,
    BUNDLED_POLICIES,
    BUNDLED_REWARDS,
    DATA_DIR,
    MODELS_DIR,
    TOKENIZER_DIR,
    resolve,
)
from rlhf_env.tokenizer import JSONTokenizer

if TYPE_CHECKING:  # transformers is imported where a model is loaded through it: importing it takes seconds
    from transformers import GPT2LMHeadModel, PreTrainedModel

# GPT-2 architecture in two sizes; parameter counts with the 768-token vocabulary.
SIZES: dict[str, dict] = {
    "small": dict(n_embd=128, n_layer=4, n_head=4),  # ~0.9M parameters
    "large": dict(n_embd=256, n_layer=5, n_head=8),  # ~4.1M parameters
}
CONTEXT = 128  # n_positions: prompt plus response tokens


OURS = "rlhf_env_accel"  # config key that save_policy writes: a model this package built or trained


def is_bundled(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` lies under the package's shipped assets."""
    return path is not None and Path(path).resolve().is_relative_to(ASSETS.resolve())


def is_ours(model, path: str | os.PathLike | None = None) -> bool:
    """A bundled model (under the package's assets), or one this package saved (``save_policy`` marks its
    config): the models ``accel=None`` accelerates."""
    return is_bundled(path) or bool(getattr(model.config, OURS, False))


def sdpa_attention_forward(*args, **kwargs):
    """transformers' SDPA attention (imported at the first call)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward as forward

    return forward(*args, **kwargs)


def _sdpa_float32(module, query, key, value, attention_mask, *args, **kwargs):
    """transformers' SDPA attention, computed in float32 whatever autocast made of its inputs."""
    dtype = query.dtype
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              *args, **kwargs)
    return out.to(dtype), weights


FLOAT32_ATTENTION = "rlhf_sdpa_float32"


def float32_attention(model: PreTrainedModel) -> bool:
    """Under bfloat16 autocast, run ``model``'s attention in float32 (its projections stay in bfloat16).

    On a CPU, SDPA's bfloat16 backward is about 4x slower than its float32 one, which would cancel
    what bfloat16 matmuls gain. Not saved with the model's config. Returns False, changing nothing,
    for a model that cannot switch its attention implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FLOAT32_ATTENTION, _sdpa_float32)
    AttentionMaskInterface.register(FLOAT32_ATTENTION, sdpa_mask)  # SDPA's mask format (else: no padding mask)
    try:
        model.set_attn_implementation(FLOAT32_ATTENTION)
    except (ValueError, ImportError, AttributeError, NotImplementedError):
        return False
    return True


def context_length(model, default: int | None = None) -> int:
    """The model's context in tokens (``n_positions`` or ``max_position_embeddings``)."""
    config = model.config
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or default
    if context is None:
        raise ValueError(f"{type(model).__name__}'s config states no context length")
    return int(context)


def new_model(size: str, tokenizer, **overrides) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of a named size (``small``, ``large``) or explicit dims."""
    from transformers import GPT2Config, GPT2LMHeadModel

    dims = SIZES[size] if isinstance(size, str) else size
    settings = dict(vocab_size=len(tokenizer), n_positions=CONTEXT, bos_token_id=tokenizer.eos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config = GPT2Config(**{**settings, **dims, **overrides})
    return accelerate(GPT2LMHeadModel(config), bundled=True)


@contextlib.contextmanager
def no_progress_bars(quiet: bool = True):
    """Inside: no transformers progress bars ("Loading weights", "Writing model shards"); restored after."""
    from transformers.utils import logging as hf_logging

    quiet = quiet and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


def quiet_local_load(path: str | os.PathLike):
    """No "Loading weights" bar for a model read from a local directory (it takes a moment); a download from
    the hub keeps its bars."""
    return no_progress_bars(os.path.isdir(path))


def load_tokenizer(name_or_path: str | os.PathLike = "sft"):
    from transformers import AutoTokenizer

    path = resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ValueError(_unknown(name_or_path, e)) from None
    if tokenizer.pad_token is None:  # e.g. GPT-2: pad with EOS; attention masks keep them apart
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(name_or_path: str | os.PathLike = "sft", device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, accel: bool | None = None,
                **config_overrides) -> tuple[PreTrainedModel, object]:
    """Load a causal LM and its tokenizer by bundled name, local path or hub id.

    Returns ``(model, tokenizer)`` with the model in eval mode (dropout off) on ``device``.
    ``accel``: this package's faster CPU kernels (``rlhf_env.accel``); None gives them to the bundled models
    and those this package saved, not to others. ``config_overrides`` go to the model config (e.g.
    ``resid_pdrop=0.2`` for SFT).
    """
    from transformers import AutoModelForCausalLM

    path = resolve(name_or_path)
    _check_causal_lm(path, name_or_path)
    try:
        with quiet_local_load(path):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **config_overrides)
    except OSError as e:
        raise ValueError(_unknown(name_or_path, e)) from None
    model = accelerate(model, accel, bundled=is_ours(model, path))
    return model.to(device).eval(), load_tokenizer(name_or_path)


def load_reference(name_or_path: str | os.PathLike = "sft", device: str | torch.device = "cpu"):
    """A frozen causal LM and its tokenizer, for scoring only (the envs' reference policy, the likelihood RM's
    LM): ``(model, tokenizer)``, the model in eval mode without gradients.

    A bundled GPT-2 loads as ``rlhf_env.accel.gpt2.TorchGPT2`` with a ``tokenizers``-only tokenizer, without
    importing transformers, unless acceleration is switched off (``RLHF_ENV_ACCEL=0``); any other model
    as ``load_policy`` loads it."""
    path = resolve(name_or_path)
    if switched_on() and is_bundled(path) and Path(path, "config.json").is_file() and supports(read_config(path)):
        config = read_config(path)
        model = load_torch_gpt2(path, onednn=onednn_layers(config), c_gelu=c_gelu(config))
        return model.to(device), JSONTokenizer(path)
    model, tokenizer = load_policy(name_or_path, device)
    return model.requires_grad_(False), tokenizer


def load_classifier(path: str | os.PathLike, accel: bool | None = None, **overrides) -> PreTrainedModel:
    """A float32 sequence classifier (a reward model) from a local path or hub id; ``accel`` as in
    ``load_policy``; ``overrides`` go to ``from_pretrained`` (e.g. ``num_labels=1``)."""
    from transformers import AutoModelForSequenceClassification

    with quiet_local_load(path):
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32, **overrides)
    return accelerate(model, accel, bundled=is_ours(model, path))


def save_policy(model: PreTrainedModel, tokenizer, directory: str | os.PathLike, half: bool = False) -> None:
    """Save model (safetensors) and tokenizer as a self-contained HF directory; its config marks it as this
    package's (``is_ours``)."""
    setattr(model.config, OURS, True)
    state_dict = {k: v.half() for k, v in model.state_dict().items()} if half else None
    with no_progress_bars():
        model.save_pretrained(directory, state_dict=state_dict)
    tokenizer.save_pretrained(directory)
    usual_file_modes(directory)


def _umask() -> int:
    """The process's umask: from /proc where Linux has it (reading it through os.umask sets it for a moment, which
    another thread's new file could catch)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def usual_file_modes(directory: str | os.PathLike) -> None:
    """Give the ``*.safetensors`` files in ``directory`` the mode of any other new file (0666 less the umask), as
    its JSON files have: safetensors writes them readable by their owner alone."""
    umask = _umask()
    for path in Path(directory).glob("*.safetensors"):
        path.chmod(0o666 & ~umask)


def _check_causal_lm(path: str, name) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not os.path.isdir(path):
        return  # a hub id: from_pretrained will check
    config_file = Path(path) / "config.json"
    if not config_file.exists():
        raise ValueError(f"{str(name)!r} holds no model (it has no config.json)")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    if config.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        architectures and not any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in architectures)
    ):
        kind = ", ".join(architectures) or config.get("model_type", "unknown")
        raise ValueError(f"{name!r} is a {kind} checkpoint, not a causal language model")


def _unknown(name, error) -> str:
    return (f"could not load {str(name)!r}: it is not a bundled policy {BUNDLED_POLICIES}, not a local "
            f"path, and loading it as a Hugging Face hub id failed ({type(error).__name__}).")
