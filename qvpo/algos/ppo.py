"""PPO with the clipped surrogate objective, as CleanRL's ppo_continuous_action.py defines it.

Source of every default: vwxyzjn/cleanrl, cleanrl/ppo_continuous_action.py (Args). The
rollout, GAE, normalisers, clipped value loss and the learning phase are shared with SPO
in qvpo.onpolicy; PPO is its settings and `policy_loss`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qvpo.onpolicy import OnPolicyAgent, OnPolicySettings


@dataclass
class PPOSettings(OnPolicySettings):
    """PPO's settings: OnPolicySettings' defaults are CleanRL's (1 env x 2048 steps, 32 minibatches, ...)."""


def clipped_surrogate(adv: torch.Tensor, ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """L = mean(max(-A r, -A clip(r, 1 - clip, 1 + clip))), the negated clipped surrogate."""
    return torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()


class PPO(OnPolicyAgent):
    Settings = PPOSettings

    def policy_loss(self, adv, ratio, kl, first):
        clip = self.cfg.clip_coef
        return clipped_surrogate(adv, ratio, clip), ((ratio - 1.0).abs() > clip).float().mean()
