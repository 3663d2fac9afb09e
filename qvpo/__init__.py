"""qvpo: a reproduction pipeline for diffusion-policy online RL (QVPO, NeurIPS 2024) and its baselines."""

__version__ = "0.1.0"
