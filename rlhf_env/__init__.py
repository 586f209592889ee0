"""InstructGPT-style RLHF as a Gymnasium environment, with an embedded offline world.

Importing this package is cheap: it loads no model and does not import torch. Models, datasets and
the world are loaded on demand (``rlhf_env.models``, ``rlhf_env.world``).
"""

__version__ = "0.1.0"

from gymnasium import register as _register

# Gymnasium 1.x has no plugin entry points: importing rlhf_env registers the envs (Farama convention).
# Entry points are strings, so nothing heavy is imported until an env is made.
_register(
    id="InstructBandit-v0",
    entry_point="rlhf_env.envs.bandit:InstructBanditEnv",
    vector_entry_point="rlhf_env.envs.bandit:InstructBanditVectorEnv",
)
_register(id="InstructToken-v0", entry_point="rlhf_env.envs.token:InstructTokenEnv")
