"""SAC with automatic temperature, as CleanRL's sac_continuous_action.py defines it.

Source of every default: vwxyzjn/cleanrl, cleanrl/sac_continuous_action.py (Args).
Actions live in [-1, 1], so the tanh squashing needs no scale or bias.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from qvpo.agent import Mode, OffPolicyAgent
from qvpo.nets import TwinQ, mlp, soft_update, twin_q_step
from qvpo.settings import OffPolicySettings, widths


@dataclass
class SACSettings(OffPolicySettings):
    """SAC's settings."""

    warmup_steps: int = 5000
    """Uniform-random steps before learning (CleanRL learning_starts 5e3)."""
    hidden: list[int] = widths(256, 256)
    """Actor and critic hidden widths, ReLU (CleanRL)."""
    actor_lr: float = 3e-4
    """Actor learning rate (CleanRL policy_lr; the old name policy_lr still loads)."""
    critic_lr: float = 1e-3
    """Critic and temperature learning rate (CleanRL q_lr; the old name q_lr still loads)."""
    tau: float = 0.005
    """Target smoothing coefficient (CleanRL tau)."""
    policy_frequency: int = 2
    """Every this many updates the actor takes this many steps, keeping counts equal (CleanRL, TD3-style delay)."""
    target_network_frequency: int = 1
    """Updates between target-critic updates (CleanRL)."""
    autotune: bool = True
    """Learn the temperature towards the target entropy -|A| (CleanRL)."""
    alpha: float = 0.2
    """Temperature when autotune is off (CleanRL)."""
    log_std_min: float = -5.0
    """Lower bound of the actor's log-std (CleanRL LOG_STD_MIN)."""
    log_std_max: float = 2.0
    """Upper bound of the actor's log-std (CleanRL LOG_STD_MAX)."""


class TanhGaussianActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], log_std_min: float, log_std_max: float):
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden], "relu", out_activation="relu")
        self.mean = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Linear(hidden[-1], act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        log_std = torch.tanh(self.log_std(h))  # squashed into [min, max] (CleanRL, from SpinningUp/Denis Yarats)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return self.mean(h), log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, log_prob [B,1], deterministic action)."""
        mean, log_std = self(obs)
        normal = torch.distributions.Normal(mean, log_std.exp(), validate_args=False)  # NaNs reach the loop's check
        x = normal.rsample()
        y = torch.tanh(x)
        log_prob = normal.log_prob(x) - torch.log(1 - y.pow(2) + 1e-6)  # tanh change of variables
        return y, log_prob.sum(1, keepdim=True), torch.tanh(mean)


def temperature_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """J(alpha) = E[-alpha * (log pi + target entropy)]."""
    return (-log_alpha.exp() * (log_pi + target_entropy)).mean()


def soft_target(reward, terminated, gamma, q1_next, q2_next, next_log_pi, alpha) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * (min(Q1', Q2') - alpha * log pi(a'|s'))."""
    return reward + (1 - terminated) * gamma * (torch.min(q1_next, q2_next) - alpha * next_log_pi)


class SAC(OffPolicyAgent):
    Settings = SACSettings
    metrics = ("q_loss", "actor_loss", "alpha", "alpha_loss")

    def __init__(self, obs_dim, act_dim, settings: SACSettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        c = settings
        self.actor = TanhGaussianActor(obs_dim, act_dim, c.hidden, c.log_std_min, c.log_std_max).to(device)
        self.critic = TwinQ(obs_dim, act_dim, c.hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic)
        self.q_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, fused=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, fused=True)
        self.target_entropy = -float(act_dim)
        self.log_alpha = torch.zeros(1, device=device, requires_grad=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=c.critic_lr, fused=True)

    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp() if self.cfg.autotune else torch.tensor(self.cfg.alpha)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        action, _, mean = self.actor.sample(obs)
        return mean if mode == Mode.EVALUATE else action

    def train_step(self, b: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.cfg
        alpha = self.alpha()
        with torch.no_grad():
            next_action, next_log_pi, _ = self.actor.sample(b["next_obs"])
            q1_next, q2_next = self.critic_target(b["next_obs"], next_action)
            y = soft_target(b["reward"], b["terminated"], c.gamma, q1_next, q2_next, next_log_pi, alpha)
        metrics = {"q_loss": twin_q_step(self.critic, self.q_optimizer, b["obs"], b["action"], y)}

        if self.n_updates % c.policy_frequency == 0:
            for _ in range(c.policy_frequency):  # compensate for the delay (CleanRL)
                pi, log_pi, _ = self.actor.sample(b["obs"])
                self.critic.requires_grad_(False)  # its gradients here would be zeroed unused: not computed
                actor_loss = (alpha * log_pi - self.critic.min_q(b["obs"], pi)).mean()
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.critic.requires_grad_(True)
                self.actor_optimizer.step()
                metrics["actor_loss"] = actor_loss.detach()
                if c.autotune:
                    with torch.no_grad():
                        _, log_pi, _ = self.actor.sample(b["obs"])
                    alpha_loss = temperature_loss(self.log_alpha, log_pi, self.target_entropy)
                    self.alpha_optimizer.zero_grad()
                    alpha_loss.backward()
                    self.alpha_optimizer.step()
                    alpha = self.alpha()
                    metrics["alpha_loss"] = alpha_loss.detach()
            metrics["alpha"] = alpha
        if self.n_updates % c.target_network_frequency == 0:
            soft_update(self.critic_target, self.critic, c.tau)
        return metrics
