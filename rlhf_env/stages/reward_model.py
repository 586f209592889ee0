"""Stage 2: the reward model (RM), from ranked comparisons of K = 4..9 responses. Two kinds (``--kind``):

``likelihood`` (the default, the bundled ``rm``): the frozen SFT LM's summed log-likelihood of the response, with
a weight (and a length weight) fitted in full-batch Adam steps to the same all-pairs ranking loss
(``fit_likelihood_rm``, ``rlhf_env.rewards.likelihood``). It ranks responses by what the LM has learnt to answer,
so it checks answers without learning the labelers' length bias. ``--lm_epochs`` also trains the LM by that loss
(``train_likelihood_lm``), on the pairs of equal length (``--lm_pairs same_length``, the default) or on all
(``--lm_pairs all``); ``benchmarks/rm_forms.py`` measures both against the frozen LM. The LM's run is the
trainer's, under ``OUT/lm``: an interrupted one resumes from its checkpoint, and a finished one is reused, not
trained again, by a rerun with the same settings (``train_loop(reuse=True)``; after a crash in the refit).

``scalar`` (the bundled ``rm-scalar``), as in InstructGPT (Ouyang et al. 2022, section 3.5):

- the RM starts from the SFT model with the unembedding removed and a scalar head added
  (``GPT2ForSequenceClassification`` with one label, read at the EOS token);
- the loss is ``-1/C(K,2) * sum over pairs log sigmoid(r(x, y_w) - r(x, y_l))``, and **all C(K,2)
  pairs of one prompt form one batch element**: each of the K completions takes one forward pass,
  and the pairs are never shuffled apart (they are strongly correlated, and the RM would overfit);
- three epochs, where the paper trains one: it had ~33k prompts, we have ~2.8k, and one epoch
  underfitted here (held-out accuracy of the small RM peaked at three epochs, of 1, 3 and 6, when measured);
- after training, a gain and a bias make the RM's scores of SFT samples mean 0 and std 1; they are
  stored in the checkpoint's ``config.json`` (``reward_gain``, ``reward_bias``).

    rlhf rm --out runs/rm                                  # the likelihood RM on sft-large
    rlhf rm --lm_epochs 2 --out runs/rm-trained            # its LM trained too
    rlhf rm --kind scalar --policy sft --out runs/rm-scalar
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlhf_env.configs import RMConfig
from rlhf_env.models import load_classifier, load_policy, load_tokenizer, resolve, save_policy
from rlhf_env.rewards.classifier import classifier_logits, prepare_tokenizer
from rlhf_env.rewards.likelihood import LikelihoodRewardModel
from rlhf_env.rewards.metrics import completions
from rlhf_env.training import distributed
from rlhf_env.training.run import prepare
from rlhf_env.training.trainer import train_loop
from rlhf_env.world.build import load_split


def ranking_pairs(rankings: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All C(K,2) (winner, loser) pairs of each ranking, as indices into the flattened completions.

    Returns ``(winners, losers, group)``, each of shape (P,), ``group`` naming each pair's prompt.
    """
    winners, losers, group, offset = [], [], [], 0
    for g, ranking in enumerate(rankings):
        for better, worse in itertools.combinations(ranking, 2):  # ranking is best first
            winners.append(offset + better)
            losers.append(offset + worse)
            group.append(g)
        offset += len(ranking)
    return torch.tensor(winners), torch.tensor(losers), torch.tensor(group)


def ranking_loss(rewards: torch.Tensor, rankings: list[list[int]] | tuple[torch.Tensor, ...]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The InstructGPT RM loss, averaged over prompts, and the pairwise accuracy.

    ``rewards`` (N,) holds the scores of every prompt's completions, concatenated in prompt order;
    ``rankings[g]`` orders prompt g's completions best first (or ``rankings`` is ``ranking_pairs(rankings)``,
    computed once for a loss taken many times).
    """
    pairs = rankings if isinstance(rankings, tuple) else ranking_pairs(rankings)
    winners, losers, group = (t.to(rewards.device) for t in pairs)
    margin = rewards[winners] - rewards[losers]  # (P,)
    n_groups = int(group.max()) + 1 if len(group) else 0
    pairs_per_group = torch.zeros(n_groups, device=rewards.device).index_add_(0, group, torch.ones_like(margin))
    nll = -torch.nn.functional.logsigmoid(margin)
    per_group = torch.zeros(n_groups, device=rewards.device).index_add_(0, group, nll)
    loss = (per_group / pairs_per_group).mean()  # -1/C(K,2) sum_pairs log sigmoid, then mean over prompts
    return loss, (margin > 0).float().mean()


def rm_texts(rows: list[dict], eos_token: str) -> list[str]:
    """``prompt + response (+ EOS if the policy emitted it)`` for every completion, in row order.

    A response cut off at the length limit gets no EOS, so the RM can learn what labelers think of it.
    """
    return [p + r + (eos_token if e else "") for p, r, e in zip(*completions(rows))]


def new_reward_model(policy: str, device: str = "cpu"):
    """The SFT model with its unembedding replaced by a scalar head."""
    path = resolve(policy)
    model = load_classifier(path, num_labels=1)
    tokenizer = prepare_tokenizer(load_tokenizer(policy), model)
    model.config.reward_append_eos = True
    return model.to(device), tokenizer


@torch.no_grad()
def raw_scores(model, tokenizer, texts: list[str], batch_size: int = 256) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = [classifier_logits(model, tokenizer, texts[i:i + batch_size])[:, 0] for i in range(0, len(texts), batch_size)]
    model.train(was_training)
    return torch.cat(out).cpu().numpy().astype(np.float64)


def normalization(raw: np.ndarray) -> tuple[float, float]:
    """``(gain, bias)`` under which the raw scores have mean 0 and std 1."""
    gain = 1.0 / max(float(raw.std()), 1e-6)
    return gain, -gain * float(raw.mean())


@torch.no_grad()
def likelihood_features(model: LikelihoodRewardModel, prompts: list[str], responses: list[str], eos: list[bool],
                        batch_size: int = 128, desc: str = "features") -> torch.Tensor:
    """The frozen LM's (summed log-prob, length) of every response, batched: (N, 2)."""
    return torch.cat([model.features(prompts[i:i + batch_size], responses[i:i + batch_size], eos[i:i + batch_size])
                      for i in tqdm(range(0, len(prompts), batch_size), desc=desc, dynamic_ncols=True)])


def same_length_pairs(pairs: tuple[torch.Tensor, ...], lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The ``ranking_pairs`` whose two responses have the same ``lengths`` (tokens): a labeler's preference
    between them holds no length preference."""
    winners, losers, group = pairs
    keep = lengths[winners] == lengths[losers]
    return winners[keep], losers[keep], group[keep]


def fit_weights(model: LikelihoodRewardModel, f_train: torch.Tensor, train: list[dict], config: RMConfig
                ) -> tuple[float, float]:
    """Fit the weight and the length weight to the training rankings, full batch, on precomputed features (the
    loss is convex in them). Returns the last step's ``(loss, accuracy)``."""
    rankings = ranking_pairs([row["ranking"] for row in train])  # once, for every step
    optimizer = torch.optim.Adam([model.weight, model.length_weight], lr=config.fit_lr)
    for _ in range(config.fit_steps):
        loss, accuracy = ranking_loss(model.score_features(f_train, fitting=True), rankings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item(), accuracy.item()


def train_likelihood_lm(model: LikelihoodRewardModel, train: list[dict], config: RMConfig) -> dict:
    """Train the RM's LM by the ranking loss of ``r + w_len * len`` at the fitted weights, held fixed
    (``--lm_epochs``, ``--lm_lr``; ``--lm_pairs same_length``: only pairs of equal length). The trainer's loop:
    a progress bar, logs and a resumable checkpoint under ``OUT/lm``."""
    lm_config = replace(config, out=str(Path(config.out) / "lm"), epochs=config.lm_epochs, lr=config.lm_lr)
    weight, length_weight = model.weight.item(), model.length_weight.item()

    def batch_loss(lm, batch):
        if lm is not model.lm:
            raise RuntimeError("the likelihood RM's LM trains in one process, as itself")
        lm.eval()  # no dropout: the LM trains on the features that its weights were fitted to and that it scores by
        f = model.features(*completions(batch), grad=True)
        scores = weight * f[:, 0] + length_weight * f[:, 1]
        pairs = ranking_pairs([row["ranking"] for row in batch])
        if config.lm_pairs == "same_length":
            winners, losers, _ = same_length_pairs(pairs, f[:, 1])
            if not len(winners):  # no pair of equal length in this batch (rare: K >= 4 responses to each of
                # batch_size prompts): a zero gradient, but AdamW still steps (its momentum from earlier batches
                # and its decay move the weights) and so does the schedule; the logs weigh its accuracy by 0 pairs
                return scores.sum() * 0.0, {"accuracy": (0.0, 0)}
            margin = scores[winners] - scores[losers]
            loss = -torch.nn.functional.logsigmoid(margin).mean()  # a mean over the kept pairs
            return loss, {"accuracy": ((margin > 0).float().mean().item(), len(winners))}
        loss, accuracy = ranking_loss(scores, pairs)
        return loss, {"accuracy": (accuracy.item(), len(pairs[0]))}

    # beside the trainer's settings, OUT/lm's checkpoint resumes, and its finished run is reused, only for the same RM
    rm = {"policy": str(config.policy), "lm_pairs": config.lm_pairs, "weight": weight, "length_weight": length_weight,
          **{k: getattr(config, k) for k in ("lr_min_ratio", "warmup_ratio", "weight_decay", "grad_clip")}}
    model.lm.requires_grad_(True)
    try:  # reuse: a crash in the refit after it does not train the LM again
        return train_loop(model.lm, model.tokenizer, train, lm_config, batch_loss, desc="rm lm", fingerprint=rm,
                          reuse=True)
    finally:
        model.lm.requires_grad_(False).eval()


def fit_likelihood_rm(config: RMConfig, train: list[dict], test: list[dict]) -> dict:
    """Fit the likelihood RM's two weights with the ranking loss, full batch: with the LM frozen, its features
    are computed once and the loss is convex in the weights. With ``--lm_epochs``, the LM is then trained at those
    weights (``train_likelihood_lm``) and the weights fitted again."""
    if config.lm_epochs:  # a resumed LM run: the kernels it started with (its run records them in OUT/lm)
        from rlhf_env.accel import kernels

        kernels.restore(Path(config.out) / "lm")
    lm, tokenizer = load_policy(config.policy, config.device)
    model = LikelihoodRewardModel(lm, tokenizer).to(config.device)
    f_train = likelihood_features(model, *completions(train), desc="rm features (train)")
    loss, accuracy = fit_weights(model, f_train, train, config)
    if config.lm_epochs:
        train_likelihood_lm(model, train, config)
        f_train = likelihood_features(model, *completions(train), desc="rm features (train)")
        loss, accuracy = fit_weights(model, f_train, train, config)
    f_test = likelihood_features(model, *completions(test), desc="rm features (test)")
    test_rankings = [row["ranking"] for row in test]
    with torch.no_grad():
        test_loss, test_accuracy = ranking_loss(model.score_features(f_test, fitting=True), test_rankings)
        reward_accuracy = ranking_loss(model.score_features(f_test), test_rankings)[1]
        model.gain, model.bias = normalization(model.score_features(f_test).double().numpy())
    save_policy(model, tokenizer, Path(config.out) / "final")
    state = {"lm_epochs": config.lm_epochs, "lm_lr": config.lm_lr, "lm_pairs": config.lm_pairs, "seed": config.seed,
             "train_loss": loss, "train_accuracy": accuracy, "test_loss": test_loss.item(),
             "test_accuracy": test_accuracy.item(), "test_accuracy_without_length": reward_accuracy.item(),
             "weight": model.weight.item(), "length_weight": model.length_weight.item(),
             "normalization": {"reward_gain": model.gain, "reward_bias": model.bias}}
    Path(config.out).mkdir(parents=True, exist_ok=True)
    (Path(config.out) / "fit.json").write_text(json.dumps(state, indent=1))
    return state


def train_reward_model(config: RMConfig) -> dict:
    if config.kind == "likelihood" and distributed.world_size() > 1:
        raise ValueError("the likelihood RM's fit is two weights on features of one forward pass: run it as one "
                         "process, without a launcher")
    torch.manual_seed(config.seed)  # the scalar head's initial weights
    prepare(config)  # under a launcher: the rank's device; a resumed run's kernels; before anything loads
    train = load_split(config.data, "comparisons", "train").to_list()
    test = load_split(config.data, "comparisons", "test").to_list()
    if config.kind == "likelihood":
        return fit_likelihood_rm(config, train, test)
    model, tokenizer = new_reward_model(config.policy, config.device)

    def scores(m, rows):  # one forward per completion
        return classifier_logits(m, tokenizer, rm_texts(rows, tokenizer.eos_token))[:, 0]

    def test_scores(m):
        return raw_scores(m, tokenizer, rm_texts(test, tokenizer.eos_token))

    def batch_loss(m, batch):
        rankings = [row["ranking"] for row in batch]
        loss, accuracy = ranking_loss(scores(m, batch), rankings)
        pairs = sum(len(r) * (len(r) - 1) // 2 for r in rankings)
        return loss, {"accuracy": (accuracy.item(), pairs)}  # the loss is a mean over prompts, this over pairs

    def evaluate(m):
        loss, accuracy = ranking_loss(torch.from_numpy(test_scores(m)).float(), [row["ranking"] for row in test])
        return {"test_loss": loss.item(), "test_accuracy": accuracy.item()}

    state = train_loop(model, tokenizer, train, config, batch_loss, evaluate, desc="reward model")
    # The SFT samples of the test comparisons are the reference for normalisation: mean 0, std 1.
    gain, bias = normalization(test_scores(model))
    model.config.reward_gain, model.config.reward_bias = gain, bias
    state["normalization"] = {"reward_gain": gain, "reward_bias": bias}
    if distributed.rank() == 0:  # under a launcher: rank 0 writes
        save_policy(model, tokenizer, Path(config.out) / "final")
    distributed.barrier()  # no rank returns before OUT/final holds the normalised model
    return state
