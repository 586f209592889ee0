"""InstructGPT-style RLHF as a Gymnasium environment, with an embedded offline world.

Importing this package is cheap: it loads no model and does not import torch. Models, datasets and
the world are loaded on demand (``rlhf_env.models``, ``rlhf_env.world``).
"""

__version__ = "0.1.0"
