"""Your own reward model, three ways: a Python function of a batch, any Hugging Face sequence classifier (a
directory or hub id), or an ensemble of rewards. Each goes wherever a reward does: the envs, the agents and
`rlhf bench` take it as `reward=`."""

import gymnasium as gym

import rlhf_env
from rlhf_env.models import MODELS_DIR
from rlhf_env.rewards import EnsembleReward, load_reward


def politeness(prompts, responses):  # a batch in, one score per response out
    return [1.0 if "thank" in r or "please" in r else 0.0 for r in responses]


classifier = load_reward(MODELS_DIR / "rm-scalar", label=0)  # here the bundled scalar RM, an HF classifier dir
reward = EnsembleReward([load_reward(politeness), classifier], mode="mean")
scores = reward(["Q: hi !\nA:", "Q: hi !\nA:"], [" hello , thank you .", " go away ."])
print(scores)  # the polite answer scores higher

gym.register_envs(rlhf_env)
env = gym.make("InstructBandit-v0", reward=reward, kl_coef=0.05)  # or PPOConfig(reward=reward), rlhf bench
