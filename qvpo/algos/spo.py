"""SPO, Simple Policy Optimization (Xie et al.): PPO whose clipping acts on the KL divergence.

Source: repository MyRepositories-hub/Simple-Policy-Optimization. The default objective is
the 2024 one (MuJoCo/spo.py), the version contemporary with the QVPO paper (NeurIPS 2024),
which is what QVPO could have been compared with; the 2025 (ICML) ratio penalty of
mujoco/trainer.py is selectable. Both keep every other setting of the 2024 script: its
defaults equal CleanRL's (OnPolicySettings) except those overridden below. To reproduce the
2025 script fully also set actor_hidden=[256,256,128,128,64,64], adam_eps=1e-8, adv_eps=1e-8.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from qvpo.algos.ppo import OnPolicyAgent, OnPolicySettings
from qvpo.settings import require_positive


@dataclass
class SPOSettings(OnPolicySettings):
    """SPO's settings (MuJoCo/spo.py get_args unless said)."""

    num_envs: int = 8
    """Parallel envs (SPO num_envs 8)."""
    num_steps: int = 256
    """Steps per env per rollout (SPO num_steps 256)."""
    num_minibatches: int = 4
    """Minibatches per epoch (SPO num_mini_batches 4)."""
    adv_eps: float = 1e-12
    """Added to the advantages' std when normalising (SPO 2024: 1e-12)."""
    objective: Literal["kl_clip_2024", "ratio_penalty_2025"] = "kl_clip_2024"
    """kl_clip_2024 (MuJoCo/spo.py, contemporary with QVPO) or ratio_penalty_2025 (ICML 2025, mujoco/trainer.py)."""
    kl_max: float = 0.02
    """KL clip of the 2024 objective (SPO kld_max 0.02); the value clip stays clip_coef 0.2 (hard-coded there)."""
    kl_eps: float = 1e-12
    """Guards the 2024 objective's division clip(d)/d (SPO: d_clip / (d + 1e-12))."""

    def validate(self) -> None:
        super().validate()
        require_positive(self, "kl_max")


def kl_clip_factor(adv: torch.Tensor, kl: torch.Tensor, kl_max: float, eps: float) -> torch.Tensor:
    """f = (clip(d, 0, d_max) / d + sign(A) - 1) sign(A).

    A > 0: 1 while d <= d_max, then d_max / d; A < 0: 1, then 2 - d_max / d; A = 0: 0.
    d is not detached: beyond d_max the gradient also pulls the KL back.
    """
    sign = torch.sign(adv)
    return (kl.clamp(0.0, kl_max) / (kl + eps) + sign - 1.0) * sign


def kl_clip_loss(adv: torch.Tensor, ratio: torch.Tensor, kl: torch.Tensor, kl_max: float,
                 eps: float) -> torch.Tensor:
    """SPO 2024: -mean(A r f) with f the KL-clip factor."""
    return -(adv * ratio * kl_clip_factor(adv, kl, kl_max, eps)).mean()


def ratio_penalty_loss(adv: torch.Tensor, ratio: torch.Tensor, eps: float) -> torch.Tensor:
    """SPO 2025: -mean(A r - |A| (r - 1)^2 / (2 eps))."""
    return -(adv * ratio - adv.abs() * (ratio - 1.0) ** 2 / (2.0 * eps)).mean()


class SPO(OnPolicyAgent):
    Settings = SPOSettings

    def policy_loss(self, adv, ratio, kl, first):
        c = self.cfg
        if c.objective == "ratio_penalty_2025":  # its eps is the 2025 script's epsilon, also its value clip
            return ratio_penalty_loss(adv, ratio, c.clip_coef), ((ratio - 1.0).abs() > c.clip_coef).float().mean()
        clipfrac = (kl > c.kl_max).float().mean()
        if first:  # the phase's first minibatch: d = 0, where f would zero the positive advantages' gradient
            return -(adv * ratio).mean(), clipfrac
        return kl_clip_loss(adv, ratio, kl, c.kl_max, c.kl_eps), clipfrac
