"""A user's own algorithm on the bench, in 30 lines: REINFORCE with a batch-mean baseline.

    rlhf bench --algo examples.reinforce:Reinforce --episodes 2560

The bench gives it the env factory, the starting policy and its tokenizer, and judges ``self.policy`` after
``learn`` exactly as it judges PPO (``agents/bench.py``)."""

import torch

from rlhf_env.sampling import response_logprobs, sample_from_ids


class Reinforce:
    def __init__(self, make_env, policy, tokenizer, seed, num_envs=64, lr=3e-5):
        self.env, self.policy, self.tokenizer = make_env(num_envs), policy, tokenizer
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
        self.generator, self.seed = torch.Generator().manual_seed(seed), seed
        self.length = self.env.single_action_space["response_ids"].shape[0]  # the env's max_new_tokens

    def learn(self, episodes: int) -> None:
        obs, _ = self.env.reset(seed=self.seed)
        for _ in range(episodes // self.env.num_envs):
            prompt_ids, prompt_mask = (torch.from_numpy(obs[k]) for k in ("input_ids", "attention_mask"))
            with torch.no_grad():
                samples = sample_from_ids(self.policy, self.tokenizer, prompt_ids, prompt_mask, self.length,
                                          generator=self.generator)
            obs, reward, *_ = self.env.step(samples.action(self.length))  # score - beta * KL, one episode per env
            ids = torch.cat([prompt_ids, samples.response_ids], 1)
            mask = torch.cat([prompt_mask, samples.response_mask], 1)
            logprobs = response_logprobs(self.policy, ids, mask, samples.response_ids.shape[1])[0]
            advantage = torch.from_numpy(reward).float() - float(reward.mean())
            loss = -(advantage * (logprobs * samples.response_mask).sum(1)).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
