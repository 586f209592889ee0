"""Training stages and RL agents for the rlhf_env package."""
