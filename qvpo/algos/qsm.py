"""QSM: Q-score matching (Psenka et al., ICML 2024), in torch.

Source: the authors' JAX code, Alescontrela/score_matching_rl: the settings of
examples/states/configs/score_matching_config.py@e05fdab (T = 5, M_q = 50, 512-512 nets),
the networks and sampler of jaxrl5/networks/diffusion.py and mlp.py, the learner
jaxrl5/agents/score_matching/score_matching_learner.py and the loop
examples/states/train_score_matching_online.py. The learner we could read is the 2023
one (@04a3920), older than the M_q config; the learner of that config could not be read.
Where the 2023 learner differs from the M_q form docs/algorithms.md describes, the M_q form is
the default: its actor loss is -mean(eps_theta . sum_i grad_a Q_i) (the M_q config's comment
states the squared form used here); the TD target's noise and an EMA sampling actor are
settings with the 2023 values said at their fields.

One update, read top to bottom in `train_step` (the authors' order: actor, then critic):
1. actor: a replay action a, t ~ U{0..T-1}, a_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps;
   g = mean over the two critics of grad_a Q_i(s, a_t), no gradient through it;
   loss = mean || -M_q g - eps_theta(a_t, t, s) ||^2 (the score of the policy is matched
   to M_q grad_a Q, and eps = -sigma * score);
2. critic: y = r + gamma (1 - terminated) min(Q1', Q2')(s', a'), a' a sample plus
   N(0, 0.1^2) noise, clipped; loss = the mean of the two MSEs.
The sampler is not DDPM's posterior one (qvpo.diffusion.ddpm_sample): x_{t-1} =
(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z, and it clips x_t
itself (not a predicted x_0) to [-1, 1] at every step. Acting adds N(0, 0.1^2) to a
sample; evaluation is a sample without that noise. Truncation bootstraps, as in their loop.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qvpo.agent import Mode, OffPolicyAgent
from qvpo.diffusion import DiffusionSchedule, q_sample
from qvpo.errors import UserError
from qvpo.nets import TwinQ, mlp, soft_update
from qvpo.settings import OffPolicySettings, require_positive, widths


@dataclass
class QSMSettings(OffPolicySettings):
    """QSM's settings; defaults are the authors' (score_matching_config.py@e05fdab and the learner) unless said."""

    warmup_steps: int = 10000
    """Uniform-random steps before learning (authors' train_score_matching_online.py start_training)."""
    diffusion_steps: int = 5
    """T, denoising steps of the VP schedule (authors' config T)."""
    beta_min: float = 0.1
    """Lower end of the VP schedule (authors' diffusion.py vp_beta_schedule b_min)."""
    beta_max: float = 10.0
    """Upper end of the VP schedule (authors' diffusion.py vp_beta_schedule b_max)."""
    hidden: list[int] = widths(512, 512)
    """Noise-net hidden widths, Mish (authors' config actor_hidden_dims)."""
    time_dim: int = 64
    """Learnable Fourier features of the step index (authors' learner time_dim)."""
    fourier_std: float = 0.2
    """Std of the Fourier features' initial frequencies (authors' FourierFeatures kernel init)."""
    time_hidden: list[int] = widths(128, 128)
    """The MLP on the Fourier features, Mish, no final activation (authors' learner cond_model_cls)."""
    critic_hidden: list[int] = widths(512, 512)
    """Twin critics, ReLU (authors' config critic_hidden_dims; jaxrl5 MLP default activation)."""
    m_q: float = 50.0
    """M_q, the scale of the Q-score the noise net matches (authors' config M_q; 120 suggested for harder tasks)."""
    actor_lr: float = 3e-4
    """Initial noise-net learning rate (authors' config actor_lr)."""
    actor_lr_decay_steps: int = 2_000_000
    """Updates over which the actor's lr decays to 0 along a cosine, 0 for none (authors' learner decay_steps)."""
    critic_lr: float = 3e-4
    """Critic learning rate (authors' config critic_lr)."""
    tau: float = 0.005
    """Soft update of the target critics, every update (authors' config tau)."""
    exploration_noise: float = 0.1
    """Std of the Gaussian added to a sample when acting, then clipped (authors' learner sample_actions)."""
    target_noise: float = 0.1
    """Std of the Gaussian added to a' in the TD target, then clipped (docs/algorithms.md; the 2023 learner: 0)."""
    sampler_temperature: float = 1.0
    """Scale of the sampler's noise (authors' learner ddpm_temperature; one intermediate config: 0.2)."""
    clip_sampler: bool = True
    """Clip x_t to [-1, 1] at every sampling step (authors' learner clip_sampler)."""
    sampling_actor_tau: float = 1.0
    """EMA rate of the actor copy that samples (acting, TD target); 1 samples from the current actor
    (docs/algorithms.md); the 2023 learner samples from an EMA copy with actor_tau 0.001."""

    def validate(self) -> None:
        require_positive(self, "diffusion_steps")
        if self.time_dim < 2 or self.time_dim % 2:
            raise UserError(f"setting 'time_dim' must be an even number >= 2, got {self.time_dim}")
        if self.actor_lr_decay_steps < 0:
            raise UserError(f"setting 'actor_lr_decay_steps' must be >= 0, got {self.actor_lr_decay_steps}")
        if not 0 < self.sampling_actor_tau <= 1:
            raise UserError(f"setting 'sampling_actor_tau' must be in (0, 1], got {self.sampling_actor_tau}")


# --------------------------------------------------------------------------- diffusion


def vp_beta_schedule(T: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """The authors' discretised VP schedule: for t = 1..T,
    alpha_t = exp(-beta_min / T - (beta_max - beta_min) (2t - 1) / (2 T^2)), beta_t = 1 - alpha_t.
    Computed in float64, returned float32 (their jnp default)."""
    t = np.arange(1, T + 1)
    alphas = np.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * t - 1) / T**2)
    return torch.tensor(1.0 - alphas, dtype=torch.float32)


def vp_step(schedule: DiffusionSchedule, x: torch.Tensor, eps: torch.Tensor, t: int, z: torch.Tensor,
            temperature: float, clip: bool) -> torch.Tensor:
    """One step of the authors' ddpm_sampler: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
    + [t > 0] temperature sqrt(beta_t) z, then clipped to [-1, 1] when `clip`."""
    beta, abar = schedule.betas[t], schedule.alphas_cumprod[t]
    x = (x - beta / (1.0 - abar).sqrt() * eps) / (1.0 - beta).sqrt()
    if t > 0:
        x = x + temperature * beta.sqrt() * z
    return x.clamp(-1.0, 1.0) if clip else x


@torch.no_grad()
def vp_sample(model: "QSMNoiseNet", schedule: DiffusionSchedule, s: torch.Tensor, temperature: float = 1.0,
              clip: bool = True) -> torch.Tensor:
    """One action per state [B, S] -> [B, A]: x_T ~ N(0, I), T steps of `vp_step`, a final clip.
    A noise draw per step, the last (t = 0) unused, as in the authors' sampler."""
    B = s.shape[0]
    x = torch.randn(B, model.act_dim, device=s.device)
    t_rows = torch.empty(B, dtype=torch.long, device=s.device)
    for t in reversed(range(schedule.T)):
        eps = model(x, t_rows.fill_(t), s)
        x = vp_step(schedule, x, eps, t, torch.randn_like(x), temperature, clip)
    return x.clamp(-1.0, 1.0)


def init_xavier(module: nn.Module) -> None:
    """jaxrl5's Dense init (mlp.py default_init): xavier-uniform weights, zero bias (flax's default)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class FourierFeatures(nn.Module):
    """Learnable Fourier features of the raw step index t (authors' FourierFeatures, learnable=True):
    f = 2 pi t w, w [dim/2] ~ N(0, std^2); output [cos f, sin f]."""

    def __init__(self, dim: int, std: float):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(dim // 2, 1) * std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t.to(self.kernel.dtype)[:, None] @ self.kernel.t()
        return torch.cat([f.cos(), f.sin()], dim=-1)


class QSMNoiseNet(nn.Module):
    """eps_theta(a_t, t, s) of the authors' DDPM module: cond = MLP(FourierFeatures(t)), then
    MLP(concat[a_t, s, cond]) -> act_dim, Mish throughout, no activation after either MLP's last layer."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], time_dim: int, time_hidden: list[int],
                 fourier_std: float):
        super().__init__()
        self.act_dim = act_dim
        self.time = FourierFeatures(time_dim, fourier_std)
        self.cond = mlp([time_dim, *time_hidden], "mish")
        self.net = mlp([act_dim + obs_dim + time_hidden[-1], *hidden, act_dim], "mish")
        init_xavier(self)

    def forward(self, a_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a_t, s, self.cond(self.time(t))], dim=-1))


# --------------------------------------------------------------------------- losses


def q_score_target(critic: TwinQ, s: torch.Tensor, a_t: torch.Tensor, m_q: float) -> torch.Tensor:
    """The noise net's regression target -M_q g, g = mean over the two critics of grad_a Q_i(s, a) at a_t.
    Detached: no gradient flows into the critic or through g."""
    a = a_t.detach().requires_grad_(True)
    q1, q2 = critic(s, a)
    (g,) = torch.autograd.grad(((q1 + q2) / 2).sum(), a)
    return -m_q * g


def cosine_decay_lr(base_lr: float, count: int, decay_steps: int) -> float:
    """optax.cosine_decay_schedule(base_lr, decay_steps) at update `count` (0-based): base_lr
    (1 + cos(pi min(count, decay) / decay)) / 2; decay_steps 0 keeps base_lr."""
    if decay_steps == 0:
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(count, decay_steps) / decay_steps))


class QSM(OffPolicyAgent):
    Settings = QSMSettings
    metrics = ("q_loss", "actor_loss", "q_mean", "actor_lr")

    def __init__(self, obs_dim, act_dim, settings: QSMSettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        c = settings
        self.actor = QSMNoiseNet(obs_dim, act_dim, c.hidden, c.time_dim, c.time_hidden, c.fourier_std).to(device)
        self.sampling_actor = copy.deepcopy(self.actor)
        self.schedule = DiffusionSchedule(vp_beta_schedule(c.diffusion_steps, c.beta_min, c.beta_max)).to(device)
        self.critic = TwinQ(obs_dim, act_dim, c.critic_hidden, activation="relu").to(device)
        init_xavier(self.critic)
        self.critic_target = copy.deepcopy(self.critic)
        # optax.adam: eps 1e-8, torch's default
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)

    def sample(self, states: torch.Tensor, noise: float) -> torch.Tensor:
        """A sample of the sampling actor plus N(0, noise^2), clipped to [-1, 1]."""
        a = vp_sample(self.sampling_actor, self.schedule, states, self.cfg.sampler_temperature, self.cfg.clip_sampler)
        return (a + noise * torch.randn_like(a)).clamp(-1.0, 1.0) if noise > 0 else a

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        return self.sample(obs, self.cfg.exploration_noise if mode == Mode.EXPLORE else 0.0)

    def train_step(self, b: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.cfg
        states = b["obs"]

        # 1. actor: match eps_theta(a_t, t, s) to -M_q * mean_i grad_a Q_i(s, a_t)
        t = torch.randint(0, self.schedule.T, (states.shape[0],), device=states.device)
        a_t = q_sample(self.schedule, b["action"], t, torch.randn_like(b["action"]))
        target = q_score_target(self.critic, states, a_t, c.m_q)
        actor_loss = F.mse_loss(self.actor(a_t, t, states), target)
        lr = cosine_decay_lr(c.actor_lr, self.n_updates - 1, c.actor_lr_decay_steps)
        for group in self.actor_optimizer.param_groups:
            group["lr"] = lr
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        soft_update(self.sampling_actor, self.actor, c.sampling_actor_tau)

        # 2. critic: a' = a sample of the (just updated) actor plus clipped noise
        with torch.no_grad():
            next_action = self.sample(b["next_obs"], c.target_noise)
            y = b["reward"] + c.gamma * (1 - b["terminated"]) * self.critic_target.min_q(b["next_obs"], next_action)
        q1, q2 = self.critic(states, b["action"])
        q_loss = (F.mse_loss(q1, y) + F.mse_loss(q2, y)) / 2  # the authors' mean over the ensemble
        self.critic_optimizer.zero_grad()
        q_loss.backward()
        self.critic_optimizer.step()
        soft_update(self.critic_target, self.critic, c.tau)
        return {"q_loss": q_loss.detach(), "actor_loss": actor_loss.detach(), "q_mean": q1.detach().mean(),
                "actor_lr": lr}
