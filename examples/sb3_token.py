"""SB3's PPO on InstructToken-v0: an action is one token, from the LM's own head (agents/sb3.py)."""
from stable_baselines3 import PPO

from agents.sb3 import LMActorCriticPolicy, kl_regularised_return, make_sb3_token_env


def main(policy="sft", steps=2048, num_envs=8, lr=1e-5, episodes=4, **env_kwargs):
    venv = make_sb3_token_env(num_envs, reference=policy, **env_kwargs)  # Discrete(V) actions: one token
    model = PPO(LMActorCriticPolicy, venv, n_steps=64, batch_size=128, n_epochs=2, learning_rate=lr, gamma=1.0,
                seed=0, normalize_advantage=False,  # so that ent_coef = kl_coef stays the -beta log pi half
                ent_coef=venv.get_attr("kl_coef")[0], policy_kwargs={"lm": policy})
    before = kl_regularised_return(model.policy, venv, episodes)["reward"]  # score - kl_coef * KL, sampled
    model.learn(steps)
    after = kl_regularised_return(model.policy, venv, episodes)["reward"]
    print(f"mean reward (score - kl_coef * KL): before {before:.3f}, after {after:.3f}")
    return before, after


if __name__ == "__main__":
    main()
