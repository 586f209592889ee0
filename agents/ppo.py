"""Stage 3: PPO against the reward model, token by token, through ``InstructBandit-v0``.

As in InstructGPT (Ouyang et al. 2022, section 3.5) with the N+ recipe (Huang et al. 2024):

- the agent acts through the env's native vector env: it sends responses with their log-probs and
  builds **per-token rewards** from the env's ``info``: ``-kl_coef * (log pi - log pi_ref)`` at every
  token and the score on the EOS token itself; summed, they are exactly the env's reward;
- advantages, by default (``advantage="rloo"``): the env shows each prompt to ``group_size`` = 2 sub-envs,
  and a response's advantage, at every one of its tokens, is its env reward minus the mean of its
  siblings' (a leave-one-out baseline per prompt, as in RLOO; no critic), divided by the batch's std of
  those per-response leads. With ``advantage="gae"``, the InstructGPT/N+ way: GAE with gamma = 1,
  lambda = 0.95 over the per-token rewards, a value head on the policy trunk (zero-initialised) or a
  separate critic initialised from the RM, a clipped value loss, and masked whitening over the tokens;
- a clipped policy loss;
- fixed or adaptive KL coefficient, early stop on approx-KL, log-ratio clamp, dropout off,
  AdamW (eps 1e-5) with linear decay to 0 and gradient clipping;
- PPO-ptx: ``ptx_coef`` times the pretraining log-likelihood on the web-text corpus;
- beyond InstructGPT, and on by default wherever the reward allows it: the token target
  (``agents/token_target.py``), a per-token KL over the whole vocabulary towards the likelihood RM's per-token
  KL-regularised optimum.

The maths is in ``agents/rl_math.py``.

    rlhf ppo --out runs/ppo --seed 0
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

import rlhf_env  # noqa: F401  (registers the envs)
from agents.configs import TOKEN_TARGET_COEF, PPOConfig
from agents.policy import Critic, NonFiniteLoss, ValueHead, check_native_bf16, entropy, response_forward
from agents.rl_math import (
    KLController,
    gae,
    leave_one_out_advantages,
    masked_mean,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten,
)
from agents.token_target import TokenTarget, refusal, token_kl
from rlhf_env import accel
from rlhf_env.evaluation import HeldOutJudge
from rlhf_env.models import (
    BUNDLED_REWARDS,
    float32_attention,
    load_classifier,
    load_policy,
    resolve,
    save_policy,
)
from rlhf_env.packing import response_hidden
from rlhf_env.rewards import NormalizedReward, load_reward
from rlhf_env.sampling import positions, sample_from_ids, trim_padding
from rlhf_env.training import distributed
from rlhf_env.training.checkpoint import find_checkpoint
from rlhf_env.training.parallel import Training
from rlhf_env.training.run import Run, prepare

NORMALIZE_EPISODES = 512  # samples of the initial policy that set the reward's scale (normalize_reward)


class PPOAgent:
    def __init__(self, config: PPOConfig):
        self.config = c = config
        self.world = distributed.world_size()  # ranks: each samples batch_size / world of the global batch
        if c.batch_size % (self.world * c.group_size):
            raise ValueError(f"batch_size ({c.batch_size}) is the global batch: it must split into {self.world} "
                             f"ranks' equal shares of whole prompt groups (group_size {c.group_size})")
        prepare(c)  # with a launcher: the process group and the rank's own GPU; and a resumed run's kernels
        self.rank = distributed.rank()
        self.training = Training()  # the launcher's: plain data parallelism, FSDP or DeepSpeed ZeRO
        name = type(self).__name__.removesuffix("Agent").lower()  # ppo, grpo, ...
        self.run = Run(c.out, run_fingerprint(c), c.iterations, name, finished="result.json",  # refuses a finished one
                       main=self.rank == 0)
        self.iteration = 0  # iterations done
        torch.manual_seed(c.seed)
        self.policy, self.tokenizer = load_policy(c.policy, c.device)
        self.actor = self.policy  # what the sampler, the judge and the saves read (a plain copy if sharded, below)
        self.policy.train()
        for module in self.policy.modules():  # dropout off everywhere during RL (N+)
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if c.advantage == "rloo":
            self.value = None  # the siblings are the baseline
        elif c.value_model == "head":
            self.value = ValueHead(self.policy.config.hidden_size).to(c.device)
        else:  # "rm"
            path = resolve(c.reward, BUNDLED_REWARDS)
            rm = load_classifier(path)
            if AutoTokenizer.from_pretrained(path).get_vocab() != self.tokenizer.get_vocab():
                raise ValueError("value_model='rm' reads the policy's token ids, so the RM must share the policy's "
                                 "tokenizer; use value_model='head' with this reward")
            self.value = Critic(rm).to(c.device)
        self.env = gym.make_vec("InstructBandit-v0", num_envs=c.batch_size // self.world, group_size=c.group_size,
                                prompts=c.prompts, reference=c.reference or c.policy,
                                reward=self._reward(), kl_coef=c.kl_coef, max_prompt_tokens=c.max_prompt_tokens,
                                max_new_tokens=c.max_new_tokens, temperature=c.temperature, device=c.device,
                                missing_eos_penalty=c.missing_eos_penalty, data=c.data)
        self.env.unwrapped.scorer.check_policy(self.tokenizer, self.policy, c.policy)
        if c.normalize_reward and find_checkpoint(self.run.checkpoint) is None:  # else: the checkpoint's
            self._normalize_reward()
        if c.bf16:
            check_native_bf16(c.device)
            for model in (self.policy, self.value.model) if isinstance(self.value, Critic) else (self.policy,):
                if not float32_attention(model):
                    warnings.warn(f"{type(model).__name__} cannot switch its attention implementation, so under "
                                  "bf16 its attention runs in bfloat16 (slower to train on a CPU)", stacklevel=2)
        # With accelerate's FSDP or DeepSpeed config, the policy and value model train sharded over the ranks, and
        # the sampler, the judge and the saved policy read a plain copy refreshed after every update
        # (rlhf_env.training.parallel)
        if self.training.lockstep:
            self.actor = accel.copy_of(self.policy).requires_grad_(False)  # the lean sampler's too, if it applies
        self.kl = KLController(c.kl_coef, c.target_kl or None, c.kl_horizon)
        self.optimizer = self.training.setup(
            [self.policy] if self.value is None else [self.policy, self.value],
            lambda params: torch.optim.AdamW(params, lr=c.lr, eps=c.adam_eps, weight_decay=c.weight_decay,
                                             fused=True),  # one kernel per step
            c.max_grad_norm, c.device, name)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, 0, c.iterations)
        self.seed = c.seed if self.world == 1 else distributed.seed_stream(c.seed, self.rank)  # prompts, samples
        self.generator = torch.Generator(device=c.device).manual_seed(self.seed)
        self.ptx = self._ptx_blocks() if c.ptx_coef > 0 else None
        self.token_target = self._token_target()  # None when off (resume: built again)
        self.judge = HeldOutJudge(self.env.unwrapped.scorer.model, self.tokenizer, c.data, c.eval_seed, c.temperature,
                                  c.max_new_tokens)

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> dict:
        """The run: resume if OUT/checkpoint exists, iterate, evaluate and save on schedule, then the final
        held-out evaluation, ``OUT/final`` and ``OUT/result.json``."""
        c, run = self.config, self.run
        started = time.perf_counter()
        run.check_not_finished()  # this agent may have finished it
        obs = self.resume()
        run.start(self.iteration)
        try:
            while self.iteration < c.iterations:
                metrics, obs = self.iterate(obs)
                run.log(self.iteration, metrics)
                run.bar.update(1)
                run.bar.set_postfix(score=f"{metrics['score']:.2f}", kl=f"{metrics['kl']:.2f}")
                if c.eval_every and self.iteration % c.eval_every == 0 and self.iteration < c.iterations:
                    held_out = self.evaluate()
                    run.log(self.iteration, held_out, kind="eval")
                    if run.main:
                        run.bar.write(f"iteration {self.iteration}: held-out win rate vs the reference "
                                      f"{held_out['win_rate_vs_reference']:.3f}, gold {held_out['gold']:.3f}, "
                                      f"KL {held_out['kl']:.2f}")
                interrupted = distributed.any_rank(run.interrupted)  # every rank saves and stops at the same step
                if interrupted or (c.save_every and self.iteration % c.save_every == 0
                                   and self.iteration < c.iterations):
                    self.save()
                if interrupted:
                    distributed.barrier()  # rank 0's checkpoint is written before any rank exits
                    run.stop(self.iteration)
            if c.save_every:
                self.save()  # the last iteration too: a later run with more --iterations extends this one
            final = self.evaluate(c.final_eval_episodes)
            run.log(self.iteration, final, kind="eval")
            if run.main:
                save_policy(self.actor, self.tokenizer, Path(c.out) / "final")
        finally:  # also on a crash or Ctrl-C: the bar ends and the logs are flushed
            run.close()
        final["minutes"] = (time.perf_counter() - started) / 60  # this process's share, if it resumed
        run.finish(final)
        distributed.barrier()  # no rank returns before rank 0 has written the final policy and result
        return final

    def iterate(self, obs) -> tuple[dict[str, float], dict]:
        """One PPO iteration from the env's observations: rollout (sample, env step, advantages), update, KL
        controller. Returns its metrics, with the seconds each phase took (``time_*``), and the next
        observations."""
        started = time.perf_counter()
        batch = self.rollout(obs)
        obs = batch.pop("next_obs")
        updating = time.perf_counter()
        stats = self.update(batch)
        self.kl.update(distributed.gather(batch["kl"]).mean().item(), self.config.batch_size)
        self.iteration += 1
        times = {**batch.pop("times"), "time_update": time.perf_counter() - updating,
                 "time_iteration": time.perf_counter() - started}
        return {**stats, **rollout_metrics(batch, self.value is not None), "kl_coef": self.kl.coef,
                "token_target_coef": self.token_target_coef,
                "lr": self.scheduler.get_last_lr()[0], **times}, obs

    def _token_target(self) -> TokenTarget | None:
        """The token target if the config asks for it; by default (None) wherever the reward allows it, said on
        stderr. Sets its weight, ``self.token_target_coef``."""
        c, scorer = self.config, self.env.unwrapped.scorer
        if c.token_target_coef is not None:
            self.token_target_coef = c.token_target_coef
        else:
            problem = "kl_coef is 0" if c.kl_coef == 0 else refusal(scorer.reward, self.tokenizer)
            self.token_target_coef = 0.0 if problem else TOKEN_TARGET_COEF
            if self.rank == 0:
                print(f"{self.run.desc}: token target " + (f"off ({problem})" if problem else
                                                           f"on, weight {self.token_target_coef:g}"),
                      file=sys.stderr, flush=True)
        if self.token_target_coef == 0:
            return None
        # it refuses a reward without token log-probs, and reads the forwards that the env's step ran
        return TokenTarget(scorer.model, scorer.reward, self.tokenizer, kept_by=(scorer,))

    def _reward(self):
        """The env's reward: the config's spec, with a classifier's label and transform if they are set."""
        c = self.config
        if (c.reward_label, c.reward_transform) == (0, "logit"):
            return c.reward  # the env loads it
        return load_reward(c.reward, device=c.device, data=c.data, label=c.reward_label, transform=c.reward_transform)

    def _normalize_reward(self) -> None:
        """Replace the env's reward by one under which the initial policy's samples score N(0, 1)."""
        c, env = self.config, self.env.unwrapped
        scorer = env.scorer
        rows = np.random.default_rng(c.seed).permutation(len(scorer.prompts))[:NORMALIZE_EPISODES]
        generator = torch.Generator(device=c.device).manual_seed(c.seed)
        texts, eos = [], []
        self.actor.eval()
        for batch in np.array_split(rows, -(-len(rows) // c.batch_size)):  # batches of at most batch_size
            samples = sample_from_ids(self.actor, self.tokenizer, torch.from_numpy(scorer.prompt_ids[batch]),
                                      torch.from_numpy(scorer.prompt_mask[batch]), c.max_new_tokens, c.temperature,
                                      generator)
            texts += samples.texts
            eos += samples.eos.tolist()
        self.actor.train()
        env.reward = NormalizedReward.fit(env.reward, [scorer.prompts[i] for i in rows], texts, eos)
        if self.rank == 0:
            print(f"{self.run.desc}: reward normalised to N(0, 1) on the initial policy's samples of {len(rows)} "
                  f"prompts (their mean {env.reward.mean:.3g}, std {env.reward.std:.3g})", file=sys.stderr, flush=True)

    # -- rollout ---------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, obs) -> dict:
        """This rank's episodes: responses sampled to the env's prompts ``obs``, stepped through the env. Returns
        the prompts and responses (ids and masks), the sampler's log-probs, the env's rewards and ``final_info``
        (as tensors of one row per episode), its next observations and the seconds each phase took."""
        c, dev = self.config, self.config.device
        started = time.perf_counter()
        prompt_ids = torch.from_numpy(obs["input_ids"]).to(dev)
        prompt_mask = torch.from_numpy(obs["attention_mask"]).to(dev)
        self.actor.eval()
        samples = sample_from_ids(self.actor, self.tokenizer, prompt_ids, prompt_mask, c.max_new_tokens,
                                  c.temperature, self.generator)
        self.actor.train()
        if not torch.isfinite(samples.logprobs).all():
            raise NonFiniteLoss(f"the policy's log-probs are not finite at iteration {self.iteration + 1}; "
                                f"{Path(c.out) / 'checkpoint'} keeps the last good checkpoint")
        stepping = time.perf_counter()
        self.env.unwrapped.kl_coef = self.kl.coef  # the env computes the reward with the current beta
        next_obs, env_rewards, _, _, info = self.env.step(samples.action(c.max_new_tokens))
        final = info["final_info"]
        R = samples.response_ids.shape[1]
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": samples.response_ids,
                "response_mask": samples.response_mask, "logprobs": samples.logprobs,
                "env_rewards": torch.from_numpy(env_rewards), "log_ratio": torch.from_numpy(final["log_ratio"][:, :R]),
                **{k: torch.from_numpy(final[k]) for k in ("score", "eos", "rm_score")}, "next_obs": next_obs,
                "times": {"time_sample": stepping - started, "time_env": time.perf_counter() - stepping}}

    @torch.no_grad()
    def rollout(self, obs) -> dict[str, torch.Tensor]:
        """This rank's episodes (``collect``) with their old log-probs, values and advantages."""
        c, dev = self.config, self.config.device
        episodes = self.collect(obs)
        forward_started = time.perf_counter()
        prompt_ids, prompt_mask = episodes["prompt_ids"], episodes["prompt_mask"]
        mask = episodes["response_mask"].float()
        log_ratio = episodes["log_ratio"].to(dev).float()
        score = episodes["score"].to(dev).float()
        rewards = per_token_rewards(score, log_ratio, mask, self.kl.coef)  # score on the EOS token itself
        ids = torch.cat([prompt_ids, episodes["response_ids"]], 1)
        full_mask = torch.cat([prompt_mask, episodes["response_mask"]], 1)
        R = mask.shape[1]
        short_ids, short_mask, r = trim_padding(ids, full_mask, mask)  # the batch without its all-padding columns
        if c.bf16:  # the ratio's old log-probs from the update's own bfloat16 forward: the ratio starts at 1
            logprobs, values = self._rollout_forward(ids, full_mask, mask)
            old_logprobs = logprobs * mask
        else:  # the sampler's log-probs (float32, the same as the update's forward to rounding)
            old_logprobs = episodes["logprobs"].float()
            values = torch.zeros_like(mask)
            if self.value is not None:
                values = self.forward(short_ids, short_mask, r, need_policy=False)[2]
                values = torch.nn.functional.pad(values, (0, R - r))
        values = values * mask
        extra = {}
        if self.token_target is not None:  # log q (B, r, V): the update reads it at its minibatches' :r columns
            extra["token_target"] = self.token_target(short_ids, short_mask, r, self.kl.coef, c.temperature,
                                                      c.minibatch_size)
        times = {**episodes["times"], "time_rollout_forward": time.perf_counter() - forward_started}  # values
        env_rewards = episodes["env_rewards"].to(dev).float()
        advantages, returns = self.advantages(env_rewards, rewards, values, mask)
        return {**extra, "ids": ids, "mask": full_mask, "response_mask": mask, "old_logprobs": old_logprobs,
                "old_values": values, "advantages": advantages, "returns": returns,
                "env_rewards": env_rewards, "score": score,
                "kl": (log_ratio * mask).sum(1), "length": mask.sum(1), "eos": episodes["eos"],
                "rm_score": episodes["rm_score"].float(), "next_obs": episodes["next_obs"],
                "token_rewards": rewards, "times": times}

    def advantages(self, env_rewards, token_rewards, values, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, returns), each (B, R), from the env's rewards (B,), the per-token rewards and values
        (B, R) and the response mask of this rank's episodes; a statistic over the batch is the global batch's.
        Another algorithm overrides this (``agents/grpo.py``)."""
        c = self.config
        if c.advantage == "rloo":  # the env's reward, whole-sequence, against the same prompt's other responses
            lead = leave_one_out_advantages(env_rewards, c.group_size)
            # scaled per response, not per token, and not re-centred: a shift by the token-weighted mean
            # would push every token of every response the same way (towards higher entropy or lower)
            return (lead / (distributed.gather(lead).std() + 1e-8))[:, None] * mask, values
        advantages, returns = gae(token_rewards, values, mask, c.gamma, c.gae_lambda)
        return whiten(advantages, mask, all_sum=distributed.all_sum), returns

    def _rollout_forward(self, ids, mask, response_mask):
        """Log-probs and values (B, R) of a whole batch, ``minibatch_size`` rows at a time (each cut like an
        update's minibatch), so that the (rows, R, V) log-softmax never exceeds an update's."""
        logprobs, values = torch.zeros_like(response_mask), torch.zeros_like(response_mask)
        for rows in torch.arange(len(ids), device=ids.device).split(self.config.minibatch_size):
            short_ids, short_mask, r = trim_padding(ids[rows], mask[rows], response_mask[rows])
            lp, _, v = self.forward(short_ids, short_mask, r)
            logprobs[rows, :r] = lp
            if v is not None:
                values[rows, :r] = v
        return logprobs, values

    def forward(self, ids, mask, R: int, need_policy: bool = True):
        """(log-probs (B, R), log-softmax (B, R, V), values (B, R)) of the response tokens; values are None
        without a value model. The value head shares the policy's forward; a separate critic runs its own (and
        alone when ``need_policy`` is False)."""
        head = isinstance(self.value, ValueHead)
        # else every rank must run the same forwards, whatever its prompts, and a sharded trunk's parameters are
        # gathered by the whole model's forward only: no sharing of prompts, no packing
        share = not self.training.lockstep
        with self._autocast():
            if self.value is None:
                logprobs, logp_all, _ = response_forward(self.policy, ids, mask, R, self.config.temperature,
                                                         share_prompts=share, pack=share)
                return logprobs, logp_all, None
            if not need_policy and not head:  # the critic alone
                return None, None, self.value(ids, mask, R, pack=share)
            if not need_policy:  # the trunk's hidden states, no LM head
                if not self.training.partitioned:
                    return None, None, self.value(response_hidden(self.policy, ids, mask, R, share)[:, :-1])
                # a sharded trunk's parameters are gathered by the whole model's forward only: one head position
                out = self.policy(input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=1,
                                  output_hidden_states=True)
                return None, None, self.value(out.hidden_states[-1][:, -R - 1:-1])
            logprobs, logp_all, hidden = response_forward(self.policy, ids, mask, R, self.config.temperature, head,
                                                          share, share)
            return logprobs, logp_all, self.value(hidden) if head else self.value(ids, mask, R, pack=share)

    def _autocast(self):
        """bfloat16 matmuls when ``bf16`` (a no-op otherwise)."""
        return torch.autocast(torch.device(self.config.device).type, dtype=torch.bfloat16, enabled=self.config.bf16)

    # -- update ----------------------------------------------------------------------------------
    def update(self, batch: dict) -> dict[str, float]:
        """``ppo_epochs`` passes over the global batch in minibatches of ``minibatch_size`` episodes. Every rank
        draws the same order of the global batch and takes, of each global minibatch, the episodes it holds: its
        loss is its tokens' share of the minibatch's mean, and the gradients are summed over the ranks."""
        c = self.config
        B = batch["response_mask"].shape[0]  # this rank's episodes: rows first .. first + B - 1 of the global batch
        first = self.rank * B
        stats: list[dict[str, float]] = []
        rng = np.random.default_rng([c.seed, self.iteration])
        stop = False
        for _ in range(c.ppo_epochs):
            order = rng.permutation(B * self.world)  # reshuffled minibatches every epoch
            for start in range(0, B * self.world, c.minibatch_size):
                chunk = order[start:start + c.minibatch_size]
                mine = chunk[(chunk >= first) & (chunk < first + B)] - first
                idx = torch.from_numpy(mine if len(mine) else np.zeros(1, dtype=np.int64))
                mb_ids, mb_mask, r = trim_padding(batch["ids"][idx], batch["mask"][idx], batch["response_mask"][idx])
                mb = {k: batch[k][idx, :r] for k in ("response_mask", "old_logprobs", "advantages", "returns",
                                                      "old_values")}
                if not len(mine):  # none of this minibatch is here: a row of weight 0 joins the ranks' all-reduce
                    mb["response_mask"] = mb["response_mask"] * 0
                mb_resp = mb["response_mask"]
                weight = distributed.share(mb_resp.sum()).item()  # this rank's tokens over the global minibatch's
                logprobs, logp_all, values = self.forward(mb_ids, mb_mask, r)
                pg_loss, pg_stats = policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mb_resp, c.clip_coef)
                loss = pg_loss
                if "token_target" in batch:
                    target_loss = masked_mean(token_kl(logp_all, batch["token_target"][idx, :r]), mb_resp)
                    loss = loss + self.token_target_coef * target_loss
                    pg_stats["token_target_kl"] = target_loss.item()
                if values is not None:
                    vf_loss = value_loss(values, mb["old_values"], mb["returns"], mb_resp, c.vf_clip)
                    loss = loss + c.vf_coef * vf_loss
                    pg_stats["vf_loss"] = vf_loss.item()
                if self.ptx is not None:
                    ptx_loss = self.ptx_loss()
                    loss = loss + c.ptx_coef * ptx_loss
                    pg_stats["ptx_loss"] = ptx_loss.item()
                self.training.zero_grad()
                self.training.backward(loss, weight)
                grad_norm = self.training.step(functools.partial(self._check_finite, loss))
                ent = masked_mean(entropy(logp_all.detach()), mb_resp).item()
                step = distributed.weighted_sum({**pg_stats, "pg_loss": pg_loss.item(), "entropy": ent}, weight)
                stats.append({**step, "grad_norm": float(grad_norm)})
                if c.early_stop_kl and step["approx_kl"] > c.early_stop_kl:  # the same on every rank
                    stop = True
                    break
            if stop:
                break
        self.scheduler.step()
        self.training.refresh(self.policy, self.actor)  # the next rollout samples the updated policy
        out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        out["first_minibatch_approx_kl"] = stats[0]["approx_kl"]
        out["early_stopped"] = float(stop)
        return out

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Stop the run on a non-finite loss or gradient norm: before the step hits the weights (under DeepSpeed,
        whose step clips, before they are saved)."""
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) or gradient norm ({float(grad_norm)}) at iteration "
                                f"{self.iteration + 1}; nothing of that step was saved: "
                                f"{Path(self.config.out) / 'checkpoint'} keeps the last good checkpoint. Rerun into a "
                                "new --out with a lower lr or max_grad_norm, or check the reward for extreme values.")

    def _ptx_blocks(self) -> list[list[int]]:
        from rlhf_env.stages.pretrain import pack
        from rlhf_env.world.build import load_split

        texts = list(load_split(self.config.data, "pretrain", "train")["text"])
        return [ids for ids, _ in pack(texts, self.tokenizer, block=self.config.max_prompt_tokens)]

    def ptx_loss(self) -> torch.Tensor:
        """Pretraining next-token loss on a random batch of web-text blocks (PPO-ptx)."""
        rng = np.random.default_rng([self.config.seed, self.iteration, 7])
        rows = [self.ptx[i] for i in rng.integers(len(self.ptx), size=self.config.ptx_batch_size)]
        ids = torch.tensor(rows, device=self.config.device)
        with self._autocast():
            logits = self.policy(input_ids=ids).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 ids[:, 1:].reshape(-1))

    def evaluate(self, episodes: int | None = None) -> dict[str, float]:
        """Held-out customers' prompts against the reference (``rlhf_env.evaluation.HeldOutJudge``). With several
        ranks, rank 0 judges and the others get its result: the same numbers as one process (and as
        ``rlhf eval``) for the same policy."""
        result = None
        if self.rank == 0:
            self.actor.eval()
            try:
                result = self.judge(self.actor, episodes or self.config.eval_episodes, self.env.unwrapped.reward)
            finally:
                self.actor.train()
        return distributed.broadcast_json(result)

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self) -> None:
        """A crash-safe checkpoint of everything the run needs to continue exactly (``rlhf_env.training.run``),
        written by rank 0 with every rank's env and sampler states (``env``, ``sampler_rng``: rank 0's;
        ``rank_envs``, ``sampler_rng.RANK``: the others')."""
        env = self.env.unwrapped
        envs = distributed.gather_json(env.get_state())
        samplers = [rng.clone() for rng in distributed.gather(self.generator.get_state()[None])]  # one per rank
        state = {"iteration": self.iteration, "kl_coef": self.kl.coef, "env": envs[0], "world_size": self.world}
        if self.world > 1:
            state["rank_envs"] = envs[1:]
        if isinstance(env.reward, NormalizedReward):
            state["reward_normalization"] = {"mean": env.reward.mean, "std": env.reward.std}
        value = self.training.full_state_dict(self.value) if self.value is not None else {}
        self.run.save(self.actor, self.tokenizer, self.training.saved_optimizer(), self.scheduler, state,
                      {**{f"value.{k}": v for k, v in value.items()}, "sampler_rng": samplers[0],
                       **{f"sampler_rng.{rank}": rng for rank, rng in enumerate(samplers[1:], 1)}})

    def resume(self):
        """Restore OUT/checkpoint if there is one; returns the env's observations to continue from. On as many
        ranks as wrote it, each rank continues its own env and sampler exactly; on another number of ranks, the
        weights, optimizer, schedule and KL coefficient carry over and each rank draws its prompts and samples
        from a fresh seed stream (of the seed, its rank and the iteration): the run continues, not identically."""
        older = {"bf16": False, "normalize_reward": False, "advantage": "gae", "group_size": 1, "reward_label": 0,
                 "reward_transform": "logit", "algorithm": "PPOConfig",
                 "token_target_coef": 0.0}  # runs from before these settings
        state, tensors = self.training.restore(self.run, self.actor, self.policy, self.scheduler, older)
        if state is None:
            return self.env.reset(seed=self.seed)[0]
        self.iteration, self.kl.coef = state["iteration"], state["kl_coef"]
        samplers = {k: tensors.pop(k) for k in list(tensors) if k.startswith("sampler_rng")}
        if self.value is not None:
            self.training.load_full_state_dict(self.value, {k[len("value."):]: v for k, v in tensors.items()})
        env = self.env.unwrapped
        if "reward_normalization" in state:  # exactly the statistics the run started with
            raw = env.reward.reward if isinstance(env.reward, NormalizedReward) else env.reward
            env.reward = NormalizedReward(raw, **state["reward_normalization"])
            if self.token_target is not None:  # its c reads the normalisation
                self.token_target = TokenTarget(env.scorer.model, env.reward, self.tokenizer, kept_by=(env.scorer,))
        if state.get("world_size", 1) != self.world:
            if self.rank == 0:
                warnings.warn(f"{self.run.checkpoint} was saved by {state.get('world_size', 1)} ranks, resumed on "
                              f"{self.world}: the run continues with fresh prompt and sampling streams per rank, so it "
                              "will not match a run that was never interrupted", RuntimeWarning, stacklevel=2)
            seed = distributed.seed_stream(self.config.seed, self.rank, self.iteration)
            self.generator.manual_seed(seed)
            return env.reset(seed=seed)[0]
        if self.rank == 0:
            self.generator.set_state(samplers["sampler_rng"])
            return env.set_state(state["env"])[0]
        self.generator.set_state(samplers[f"sampler_rng.{self.rank}"])
        return env.set_state(state["rank_envs"][self.rank - 1])[0]


def rollout_metrics(batch: dict, values: bool = True) -> dict[str, float]:
    """What N+ says to watch: score, KL, score - beta*KL, length, EOS fraction, and the value model's
    explained variance if there is one (``values``); over the global batch (every rank's episodes)."""
    g = distributed.gather
    out = {"score": g(batch["score"]).mean().item(), "rm_score": g(batch["rm_score"]).mean().item(),
           "kl": g(batch["kl"]).mean().item(), "reward": g(batch["env_rewards"]).mean().item(),
           "length": g(batch["length"]).mean().item(), "eos_frac": g(batch["eos"].float()).mean().item()}
    if values:
        real = batch["response_mask"].bool()
        predicted, returns = g(batch["old_values"][real]), g(batch["returns"][real])
        out["explained_variance"] = (1 - (returns - predicted).var() / returns.var().clamp(min=1e-8)).item()
    return out


def run_fingerprint(c: PPOConfig) -> dict:
    keep = ("policy", "reference", "reward", "reward_label", "reward_transform", "seed", "batch_size",
            "minibatch_size", "ppo_epochs", "lr", "value_model", "ptx_coef", "bf16", "normalize_reward", "advantage",
            "group_size", "token_target_coef")
    plain = (str, int, float, bool, type(None))
    return {"algorithm": type(c).__name__,  # a GRPO run does not resume a PPO one
            **{k: v if isinstance(v, plain) else getattr(v, "__name__", repr(v))  # e.g. a reward callable
               for k, v in asdict(c).items() if k in keep}}


def ppo(config: PPOConfig) -> dict:
    return PPOAgent(config).train()
