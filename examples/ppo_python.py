"""The PPO agent from Python, with a reward of your own (here brevity), for two short iterations."""

import tempfile

from agents.ppo import PPOAgent, PPOConfig

config = PPOConfig(iterations=2, batch_size=16, minibatch_size=8, eval_every=0, final_eval_episodes=40,
                   reward=lambda prompts, responses: [-len(r.split()) / 10 for r in responses],  # brevity
                   out=tempfile.mkdtemp(prefix="ppo-"), save_every=0)  # a new directory: rerunnable
result = PPOAgent(config).train()  # writes OUT/{train,eval}.csv, tb/, final/, result.json
print({k: round(v, 3) for k, v in result.items()})
