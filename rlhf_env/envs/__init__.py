"""Gymnasium environments: ``InstructBandit-v0`` (one response per episode) and its vector env."""
