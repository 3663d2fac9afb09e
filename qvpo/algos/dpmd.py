"""DPMD: diffusion policy mirror descent (Ma et al. 2025, "Efficient Online Reinforcement Learning for Diffusion
Policy"), in torch.

Source: the authors' JAX code, mahaitongdae/diffusion_policy_online_rl@a50cf41: relax/algorithm/dpmd.py (the
update); the networks, sampler, acting, alpha rule and settings are SDAC's (relax/network/diffv2.py,
relax/utils/diffusion.py, scripts/train_mujoco.py) and live once in qvpo.algos.sdac. docs/algorithms.md summarises.

One update, read top to bottom in `train_step`:
1. critic: a' = act(s') (the current actor, best of 32 by the current critics, exploration noise on);
   y = 0.2 r + gamma (1 - terminated) min(Q1', Q2')(s', a'); one Adam step on the sum of the two MSEs;
2. weights: q = min(Q1, Q2)(s', a') with the critics just stepped; w = exp(clip(q - mu / sigma, -3, 3) / alpha),
   mu and sigma running statistics of q (below). The authors' code computes q - (mu / sigma), not the
   standardised (q - mu) / sigma its variable name norm_q suggests; `q_normalisation` selects either;
3. the critics' second Adam step with the same gradients: the authors' code applies the critic update twice
   (once right after the gradients, once with the other parameters); `repeat_critic_step` keeps that;
4. actor (every 2nd update): the weighted denoising loss on the sampled (s', a'), mean over rows and action dims
   of w (eps - eps_theta(sqrt(abar_t) a' + sqrt(1 - abar_t) eps, t, s'))^2, t ~ U{0..T-1};
5. alpha (every 250th update) and targets (every 2nd) as SDAC;
6. mu <- mu + 0.001 (mean_batch q - mu), sigma <- sigma + 0.001 (std_batch q - sigma), from mu = 0, sigma = 1,
   every update.
Updates start after 30,000 uniform-random steps and come once every 5 env steps, as SDAC's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from qvpo.algos.sdac import DiffusionACAgent, DiffusionACSettings
from qvpo.diffusion import weighted_eps_loss
from qvpo.errors import UserError
from qvpo.nets import twin_q_step
from qvpo.settings import require_positive


@dataclass
class DPMDSettings(DiffusionACSettings):
    """DPMD's settings; defaults are the authors' (relax/algorithm/dpmd.py@a50cf41) unless said; the shared ones
    are SDAC's (qvpo.algos.sdac.DiffusionACSettings)."""

    q_normalisation: Literal["official", "standardised"] = "official"
    """official: q - mu / sigma, as the authors' dpmd.py computes it (operator precedence); standardised:
    (q - mu) / sigma, what its name norm_q means."""
    weight_clip: float = 3.0
    """The normalised q is clipped to [-this, this] before dividing by alpha (authors' dpmd.py)."""
    running_rate: float = 0.001
    """EMA rate of the running mean and std of q (authors' dpmd.py)."""
    repeat_critic_step: bool = True
    """Apply each critic gradient twice, as the authors' dpmd.py does (two optax updates of the same grads);
    False: one step, as their SDAC."""

    def validate(self) -> None:
        super().validate()
        require_positive(self, "weight_clip")
        if not 0 < self.running_rate <= 1:
            raise UserError(f"setting 'running_rate' must be in (0, 1], got {self.running_rate}")


def dpmd_weights(q: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, alpha: torch.Tensor, clip: float,
                 normalisation: str) -> torch.Tensor:
    """w = exp(clip(n, -clip, clip) / alpha): n = q - mean / std (official) or (q - mean) / std (standardised)."""
    normalised = q - mean / std if normalisation == "official" else (q - mean) / std
    return torch.exp(normalised.clamp(-clip, clip) / alpha)


def running_update(value: torch.Tensor, observed: torch.Tensor, rate: float) -> torch.Tensor:
    """value + rate (observed - value): the authors' EMA of q's batch mean and std."""
    return value + rate * (observed - value)


class DPMD(DiffusionACAgent):
    Settings = DPMDSettings
    metrics = ("q_loss", "actor_loss", "alpha", "q_mean", "weight_mean", "running_q_mean", "running_q_std")

    def __init__(self, obs_dim, act_dim, settings: DPMDSettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        self.running_mean = torch.tensor(0.0, device=device)
        self.running_std = torch.tensor(1.0, device=device)

    def counters(self) -> dict[str, object]:
        return {**super().counters(), "running_mean": self.running_mean, "running_std": self.running_std}

    def train_step(self, b: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.cfg
        next_obs = b["next_obs"]
        metrics = {"alpha": self.log_alpha.detach().exp()}

        # 1. critic's first step
        next_action, y = self.td_target(b)
        metrics["q_loss"] = twin_q_step(self.critic, self.critic_optimizer, b["obs"], b["action"], y)

        # 2. weights from the stepped critics and the running statistics before this update
        with torch.no_grad():
            q = self.critic.min_q(next_obs, next_action).squeeze(-1)
            weights = dpmd_weights(q, self.running_mean, self.running_std, self.log_alpha.exp(), c.weight_clip,
                                   c.q_normalisation)

        # 3. the critics' second step with the same gradients
        if c.repeat_critic_step:
            self.critic_optimizer.step()

        # 4. actor: weighted denoising loss on (s', a')
        if self.policy_due():
            actor_loss = weighted_eps_loss(self.actor, self.schedule, next_action, next_obs, weights,
                                           factored=self.factored)
            self.actor_step(actor_loss)
            metrics["actor_loss"] = actor_loss.detach()

        # 5. alpha and targets
        self.alpha_and_targets()

        # 6. running statistics of q (population std, as jnp.std)
        self.running_mean = running_update(self.running_mean, q.mean(), c.running_rate)
        self.running_std = running_update(self.running_std, q.std(correction=0), c.running_rate)
        metrics.update(q_mean=q.mean(), weight_mean=weights.mean(), running_q_mean=self.running_mean,
                       running_q_std=self.running_std)
        return metrics
