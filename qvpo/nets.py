"""Networks every algorithm shares: MLPs, twin critics, initialisers, target updates."""
from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "mish": nn.Mish}


def mlp(sizes: list[int], activation: str = "relu", out_activation: str | None = None) -> nn.Sequential:
    """Linear layers of the given widths with `activation` between them."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
        elif out_activation is not None:
            layers.append(ACTIVATIONS[out_activation]())
    return nn.Sequential(*layers)


def init_authors_normal(module: nn.Module, truncated: bool = False) -> None:
    """QVPO/DIPO authors' init: std 1/(2*sqrt(fan_in)), bias 0 on every Linear.

    Their helper means a truncated normal, but a bug leaves the weights plain normal
    (wadx2019/qvpo@40a1974, docs/algorithms.md); `truncated=False` is the faithful choice.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            std = 1.0 / (2.0 * math.sqrt(layer.in_features))
            with torch.no_grad():
                if truncated:
                    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
                else:
                    layer.weight.normal_(0.0, std)
                layer.bias.zero_()


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs; `forward` returns both as [B, 1] each."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        self.q1 = mlp([obs_dim + act_dim, *hidden, 1], activation)
        self.q2 = mlp([obs_dim + act_dim, *hidden, 1], activation)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], dim=-1)
        return self.q1(x), self.q2(x)

    def min_q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        q1, q2 = self(obs, act)
        return torch.min(q1, q2)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- tau * source + (1 - tau) * target."""
    for tp, sp in zip(target.parameters(), source.parameters()):
        tp.lerp_(sp, tau)


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters, grad_clip: float = 0.0) -> None:
    """zero_grad, backward, clip the gradient norm of `parameters` when grad_clip > 0, step."""
    optimizer.zero_grad()
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


def twin_q_step(critic: TwinQ, optimizer: torch.optim.Optimizer, obs: torch.Tensor, action: torch.Tensor,
                target: torch.Tensor, grad_clip: float = 0.0) -> torch.Tensor:
    """One optimiser step on MSE(Q1, y) + MSE(Q2, y); clips the gradient norm when grad_clip > 0."""
    q1, q2 = critic(obs, action)
    loss = torch.nn.functional.mse_loss(q1, target) + torch.nn.functional.mse_loss(q2, target)
    gradient_step(optimizer, loss, critic.parameters(), grad_clip)
    return loss.detach()
