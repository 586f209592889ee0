"""SB3's PPO on InstructBandit-v0: an action is a whole response, sampled by the LM (agents/sb3.py)."""
from stable_baselines3 import PPO

from agents.sb3 import LMSequencePolicy, kl_regularised_return, make_sb3_bandit


def main(policy="sft", steps=512, num_envs=32, lr=1e-5, episodes=4, **env_kwargs):
    venv = make_sb3_bandit(num_envs, reference=policy, **env_kwargs)  # MultiDiscrete actions: the token ids
    model = PPO(LMSequencePolicy, venv, n_steps=1, batch_size=32, n_epochs=2, learning_rate=lr, seed=0,
                normalize_advantage=False,  # so that ent_coef = kl_coef stays the -beta log pi half of the KL
                ent_coef=venv.get_attr("kl_coef")[0], policy_kwargs={"lm": policy})
    before = kl_regularised_return(model.policy, venv, episodes)["reward"]  # score - kl_coef * KL, sampled
    model.learn(steps)
    after = kl_regularised_return(model.policy, venv, episodes)["reward"]
    print(f"mean reward (score - kl_coef * KL): before {before:.3f}, after {after:.3f}")
    return before, after


if __name__ == "__main__":
    main()
