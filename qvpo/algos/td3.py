"""TD3, as CleanRL's td3_continuous_action.py defines it.

Source of every default: vwxyzjn/cleanrl, cleanrl/td3_continuous_action.py (Args).
Actions live in [-1, 1], so CleanRL's action_scale is 1 and noise is in those units.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from qvpo.agent import Mode, OffPolicyAgent
from qvpo.nets import TwinQ, mlp, soft_update, twin_q_step
from qvpo.settings import OffPolicySettings, widths


@dataclass
class TD3Settings(OffPolicySettings):
    """TD3's settings."""

    warmup_steps: int = 25000
    """Uniform-random steps before learning (CleanRL learning_starts 25e3)."""
    hidden: list[int] = widths(256, 256)
    """Actor and critic hidden widths, ReLU (CleanRL)."""
    learning_rate: float = 3e-4
    """Actor and critic learning rate (CleanRL)."""
    tau: float = 0.005
    """Target smoothing coefficient (CleanRL)."""
    exploration_noise: float = 0.1
    """Std of the Gaussian exploration noise (CleanRL)."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise (CleanRL)."""
    noise_clip: float = 0.5
    """Clip of the target policy smoothing noise (CleanRL)."""
    policy_frequency: int = 2
    """Updates between actor and target updates (CleanRL)."""


def smoothed_target_action(target_action: torch.Tensor, noise: torch.Tensor, policy_noise: float,
                           noise_clip: float) -> torch.Tensor:
    """Target policy smoothing: clamp(mu'(s') + clip(policy_noise * noise, +-noise_clip), -1, 1)."""
    return (target_action + (noise * policy_noise).clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


class TD3(OffPolicyAgent):
    Settings = TD3Settings
    metrics = ("q_loss", "actor_loss")

    def __init__(self, obs_dim, act_dim, settings: TD3Settings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        c = settings
        self.actor = mlp([obs_dim, *c.hidden, act_dim], "relu", out_activation="tanh").to(device)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic = TwinQ(obs_dim, act_dim, c.hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic)
        self.q_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.learning_rate, fused=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.learning_rate, fused=True)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        action = self.actor(obs)
        if mode == Mode.EVALUATE:
            return action
        return (action + torch.randn_like(action) * self.cfg.exploration_noise).clamp(-1.0, 1.0)

    def train_step(self, b: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.cfg
        with torch.no_grad():
            next_action = smoothed_target_action(self.actor_target(b["next_obs"]), torch.randn_like(b["action"]),
                                                 c.policy_noise, c.noise_clip)
            y = b["reward"] + (1 - b["terminated"]) * c.gamma * self.critic_target.min_q(b["next_obs"], next_action)
        metrics = {"q_loss": twin_q_step(self.critic, self.q_optimizer, b["obs"], b["action"], y)}

        if self.n_updates % c.policy_frequency == 0:  # delayed policy and target updates
            self.critic.requires_grad_(False)  # its gradients here would be zeroed unused: not computed
            actor_loss = -self.critic.q1(torch.cat([b["obs"], self.actor(b["obs"])], -1)).mean()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.critic.requires_grad_(True)
            self.actor_optimizer.step()
            soft_update(self.actor_target, self.actor, c.tau)
            soft_update(self.critic_target, self.critic, c.tau)
            metrics["actor_loss"] = actor_loss.detach()
        return metrics
