"""DACER: diffusion actor-critic with entropy regulator (Wang et al., NeurIPS 2024).

Faithful to the authors' JAX code, happy-yan/DACER-Diffusion-with-Online-RL@848c1f2
(relax/algorithm/dacer.py, relax/network/dacer.py, relax/network/blocks.py,
relax/utils/diffusion.py, scripts/train_mujoco.py; the DACER files last changed in a2ba646);
docs/algorithms.md summarises. The policy is the reverse chain of a VP diffusion model, trained
like a deterministic actor by back-propagating -Q through all T denoising steps; its entropy,
which has no closed form, is estimated from a Gaussian mixture fitted to samples and steers a
temperature alpha that scales Gaussian noise added to the chain's output.

The authors' update (`stateless_update`) is a pure function of the state before it: every loss
below is evaluated with the networks and alpha as they were when the update began, and all
steps are applied at its end. `update` is the authors' 0-based update count `step` (n_updates - 1).
One update, read top to bottom in `train_step`:
1. rewards are scaled by `reward_scale`;
2. critic targets: a' = the current policy's noisy action at s' (no target actor); each target
   critic gives a mean m_i', a std s_i' and a sample m_i' + s_i' clip(z_i, -3, 3);
   y = r + gamma (1 - terminated) min(m_1', m_2') and y_s = r + gamma (1 - terminated) x the
   sample of the critic with the lower mean;
3. critics (DSAC-T's loss, per critic, each with its own running mean std b): b is set to
   mean(std) on the first update, then b <- tau mean(std) + (1 - tau) b (the batch's std
   before the step, no gradient); y_s is bounded to m +- 3b; loss =
   -(b^2 + eps) mean(m (y - m)~ / (s~^2 + eps) + s ((m~ - y_s bounded)^2 - s~^2) / (s~^3 + eps)),
   ~ marking stopped gradients, eps = 0.1;
4. entropy, every `alpha_every` updates from step 0: `entropy_samples` noisy actions for each
   state of the batch, a `gmm_components`-component full-covariance mixture fitted per state
   (scikit-learn, random_state 42), H = mean over states of the mixture's entropy bound
   -sum_k w_k log w_k + sum_k w_k H(N(mu_k, Sigma_k)); between refits the last H is kept;
5. actor, every `actor_every` updates from step 0: loss = -mean(min(m_1, m_2)(s, a)), a the
   current policy's noisy action (exploration noise included), the gradient through the whole
   chain and the final clip, the critics as they were before step 3;
6. alpha, on the refit updates only: loss = -log_alpha (-H + H_target), H_target = -0.9 |A|,
   one step of its own Adam (lr 3e-2), so log_alpha moves about 0.03 per refit;
7. target critics: Polyak averaging with tau on the actor's updates only.
Acting: the chain's output + exp(log_alpha) lambda N(0, I), clipped to [-1, 1] (lambda 0.15 on
Humanoid and HalfCheetah, 0.1 elsewhere: DACER_ENV_SETTINGS). Evaluation: the chain's output
alone (the authors' deterministic action sets log_alpha = -inf; the chain keeps its noise).

Where this departs from the authors' code (docs/algorithms.md): 1 env and 1 update per env step
(they run 20 envs and 1 update per 20 transitions); torch RNG streams; their evaluation seeds the
chain from the observation's bytes, here from the global torch RNG.
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
from qvpo.diffusion import (DiffusionSchedule, ScaledSinusoidalEmb, discrete_vp_beta_schedule, init_haiku,
                             temperature_loss)
from qvpo.errors import UserError
from qvpo.nets import gradient_step, mlp, soft_update
from qvpo.settings import OffPolicySettings, require_positive, widths

DACER_ENV_SETTINGS: dict[str, dict[str, object]] = {
    "Humanoid": {"noise_scale": 0.15, "warmup_steps": 200_000},
    "HalfCheetah": {"noise_scale": 0.15, "warmup_steps": 200_000},
}
"""Per-environment settings. The authors' code holds the values for Humanoid-v3 and HalfCheetah-v3
(README "Tips" 1) and marks those for every other MuJoCo env with "# other envs" comments:
relax/network/dacer.py (noise 0.1) and scripts/train_mujoco.py (start_step 3e4), DACER_OTHER_ENVS."""
DACER_OTHER_ENVS: dict[str, object] = {"noise_scale": 0.1, "warmup_steps": 30_000}
"""The "# other envs" values of the authors' code, for every env not in DACER_ENV_SETTINGS."""


@dataclass
class DACERSettings(OffPolicySettings):
    """DACER's settings; defaults are the authors' code at 848c1f2 (their Humanoid-v3 values; per env:
    DACER_ENV_SETTINGS)."""

    warmup_steps: int = 200_000
    """Uniform-random transitions before learning (authors' scripts/train_mujoco.py start_step; other envs 3e4)."""
    buffer_size: int = 1_000_000
    """Replay capacity (authors' scripts/train_mujoco.py TreeBuffer size)."""
    batch_size: int = 256
    """Minibatch size (authors' relax/trainer/off_policy.py OffPolicyTrainer batch_size)."""
    gamma: float = 0.99
    """Discount factor (authors' relax/algorithm/dacer.py gamma)."""
    diffusion_steps: int = 20
    """T, denoising steps of the VP schedule (authors' scripts/train_mujoco.py diffusion_steps)."""
    beta_min: float = 0.1
    """Lower end of the VP schedule (authors' relax/utils/diffusion.py vp_beta_schedule b_min)."""
    beta_max: float = 10.0
    """Upper end of the VP schedule (authors' relax/utils/diffusion.py vp_beta_schedule b_max)."""
    hidden: list[int] = widths(256, 256, 256)
    """Noise-net hidden widths, Mish (authors' scripts/train_mujoco.py diffusion_hidden_dim x hidden_num)."""
    time_dim: int = 16
    """Width of the scaled sinusoidal time embedding; its MLP is time_dim -> 2 time_dim -> time_dim
    (authors' relax/network/blocks.py DACERPolicyNet time_dim)."""
    critic_hidden: list[int] = widths(256, 256, 256)
    """Distributional twin critics' hidden widths, Mish (authors' scripts/train_mujoco.py hidden_dim x hidden_num)."""
    actor_lr: float = 1e-4
    """Policy learning rate, Adam (authors' scripts/train_mujoco.py lr, one optax.adam for all networks)."""
    critic_lr: float = 1e-4
    """Critic learning rate, Adam (authors' scripts/train_mujoco.py lr)."""
    alpha_lr: float = 3e-2
    """Temperature learning rate, Adam (authors' relax/algorithm/dacer.py alpha_lr)."""
    tau: float = 0.005
    """Target-critic smoothing, also the rate of the running mean std (authors' relax/algorithm/dacer.py tau)."""
    actor_every: int = 2
    """Updates between actor and target-critic updates (authors' relax/algorithm/dacer.py delay_update)."""
    alpha_every: int = 10_000
    """Updates between entropy estimates and temperature steps (authors' relax/algorithm/dacer.py
    delay_alpha_update)."""
    entropy_samples: int = 200
    """Noisy actions per state the mixture is fitted to (authors' relax/algorithm/dacer.py num_samples)."""
    gmm_components: int = 3
    """Components of the full-covariance Gaussian mixture (authors' relax/algorithm/dacer.py estimate_entropy)."""
    reward_scale: float = 0.2
    """Rewards are multiplied by this in the update (authors' relax/algorithm/dacer.py reward_scale)."""
    noise_scale: float = 0.15
    """lambda: acting adds exp(log_alpha) lambda N(0, I) (authors' relax/network/dacer.py get_action; other
    envs 0.1)."""
    log_alpha_init: float = math.log(3.0)
    """Initial log alpha (authors' relax/network/dacer.py create_dacer_net: log 3, "or math.log(5)")."""
    target_entropy_scale: float = 0.9
    """H_target = -this * |A| (authors' relax/network/dacer.py create_dacer_net target_entropy)."""
    q_sample_clip: float = 3.0
    """The critic sample's standard normal draw is clipped to +- this (authors' relax/network/dacer.py q_evaluate)."""
    td_bound: float = 3.0
    """The sampled target is bounded to the critic's mean +- this x the running mean std (authors' q_loss_fn)."""
    critic_epsilon: float = 0.1
    """epsilon of the DSAC-T critic loss (authors' relax/algorithm/dacer.py q_loss_fn)."""

    def validate(self) -> None:
        require_positive(self, "diffusion_steps", "actor_every", "alpha_every", "gmm_components", "batch_size")
        if self.time_dim < 2 or self.time_dim % 2:
            raise UserError(f"setting 'time_dim' must be an even number >= 2, got {self.time_dim}")
        if self.entropy_samples < self.gmm_components:
            raise UserError(f"setting 'entropy_samples' must be >= gmm_components ({self.gmm_components}) "
                            f"to fit the mixture, got {self.entropy_samples}")
        if not 0.0 <= self.noise_scale:
            raise UserError(f"setting 'noise_scale' must be >= 0, got {self.noise_scale}")


# --------------------------------------------------------------------------- networks


class DACERPolicyNet(nn.Module):
    """eps_theta(a_t, t, s) of the authors' DACERPolicyNet: te = Linear(time_dim) o Mish o Linear(2 time_dim) of
    the scaled sinusoidal embedding; MLP(concat[s, a_t, te]) -> |A|, Mish, nothing after the last layer."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], time_dim: int):
        super().__init__()
        self.act_dim = act_dim
        self.time_emb = ScaledSinusoidalEmb(time_dim)
        self.time_mlp = mlp([time_dim, 2 * time_dim, time_dim], "mish")
        self.net = mlp([obs_dim + act_dim + time_dim, *hidden, act_dim], "mish")
        init_haiku(self)

    def forward(self, a_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s, a_t, self.time_mlp(self.time_emb(t))], dim=-1))


class DistributionalTwinQ(nn.Module):
    """Two of the authors' DistributionalQNet2: MLP(concat[s, a]) -> (mean, softplus(std)), Mish. Like
    qvpo.nets.TwinQ but each head returns a Gaussian's mean and std, both [B, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int]):
        super().__init__()
        self.q1 = mlp([obs_dim + act_dim, *hidden, 2], "mish")
        self.q2 = mlp([obs_dim + act_dim, *hidden, 2], "mish")
        init_haiku(self)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = torch.cat([obs, act], dim=-1)
        return [(out[:, :1], F.softplus(out[:, 1:])) for out in (self.q1(x), self.q2(x))]

    def min_q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        (m1, _), (m2, _) = self(obs, act)
        return torch.min(m1, m2)


# --------------------------------------------------------------------------- policy


def denoise_chain(policy: DACERPolicyNet, schedule: DiffusionSchedule, s: torch.Tensor,
                  x: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' GaussianDiffusion.p_sample, differentiable: x_T ~ N(0, I) [B, A], then per step
    t = T-1..0: a_0 = clip(sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps_theta(x_t, t, s), -1, 1),
    x_{t-1} = coef1_t a_0 + coef2_t x_t + [t > 0] sigma_t z_t. Noise as theirs: x_T, then all T draws
    z [T, B, A] (z for t = 0 drawn, unused); x and noise may be given (tests)."""
    B, A = s.shape[0], policy.act_dim
    if x is None:
        x = torch.randn(B, A, device=s.device)
    if noise is None:
        noise = torch.randn(schedule.T, B, A, device=s.device)
    coeffs = schedule.step_coefficients()
    t_rows = torch.empty(B, dtype=torch.long, device=s.device)
    for i, t in enumerate(reversed(range(schedule.T))):  # noise row i goes with step t = T-1-i, as their scan
        c_recip, c_recipm1, coef1, coef2, sigma = coeffs[t]
        eps = policy(x, t_rows.fill_(t), s)
        x0 = (x * c_recip - eps * c_recipm1).clamp(-1.0, 1.0)
        x = coef1 * x0 + coef2 * x
        if t > 0:
            x = x + sigma * noise[i]
    return x


def noisy_action(chain_output: torch.Tensor, log_alpha: torch.Tensor, noise_scale: float,
                 z: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' get_action: the chain's output + exp(log_alpha) lambda z, z ~ N(0, I), clipped to [-1, 1]."""
    if z is None:
        z = torch.randn_like(chain_output)
    return (chain_output + z * log_alpha.exp() * noise_scale).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------- losses


def td_targets(reward: torch.Tensor, terminated: torch.Tensor, gamma: float,
               next_heads: list[tuple[torch.Tensor, torch.Tensor]], z: torch.Tensor,
               z_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, y_s): y = r + gamma (1 - d) min(m_1', m_2'); y_s the same with the sample m_i' + s_i' clip(z_i) of the
    critic whose mean is lower (the second when they tie). z [2, B, 1], one draw per target critic."""
    (m1, s1), (m2, s2) = next_heads
    z = z.clamp(-z_clip, z_clip)
    sample = torch.where(m1 < m2, m1 + s1 * z[0], m2 + s2 * z[1])
    keep = gamma * (1 - terminated)
    return reward + keep * torch.min(m1, m2), reward + keep * sample


def running_mean_std(previous: torch.Tensor, batch_std: torch.Tensor, tau: float) -> torch.Tensor:
    """The batch's mean std on the first update (previous = -1, the authors' sentinel), else
    tau mean(std) + (1 - tau) previous. No gradient."""
    new = batch_std.detach().mean()
    return torch.where(previous == -1.0, new, tau * new + (1 - tau) * previous)


def dsac_critic_loss(mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor, y_sample: torch.Tensor,
                     mean_std: torch.Tensor, bound: float, epsilon: float) -> torch.Tensor:
    """DSAC-T's loss for one Gaussian critic (authors' q_loss_fn), b = mean_std:
    y_s bounded = m + clip(y_s - m, -bound b, bound b);
    loss = -(b^2 + eps) mean(m (y - m)~ / (s~^2 + eps) + s ((m~ - y_s bounded)^2 - s~^2) / (s~^3 + eps))."""
    b = mean_std.detach()
    m_, s_ = mean.detach(), std.detach().clamp_min(0.0)
    bounded = m_ + (y_sample - m_).clamp(-bound * b, bound * b)
    return -(b**2 + epsilon) * torch.mean(mean * (y - m_) / (s_**2 + epsilon)
                                          + std * ((m_ - bounded) ** 2 - s_**2) / (s_**3 + epsilon))


def gmm_entropy(actions: np.ndarray, components: int, seed: int = 42) -> float:
    """The authors' estimate_entropy on actions [B, N, A]: per state a full-covariance Gaussian mixture
    (sklearn.mixture.GaussianMixture, random_state 42), entropy bound -sum w log w + sum w (d/2 (1 + log 2 pi)
    + log det Sigma / 2); the mean over the B states. NaN when an action is not finite (a diverged policy: the
    loop stops on the NaN metric instead of sklearn raising)."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    if not np.isfinite(actions).all():
        return float("nan")
    total = 0.0
    with threadpool_limits(torch.get_num_threads()):  # k-means' OpenMP threads within the run's budget
        for x in actions:
            gmm = GaussianMixture(n_components=components, covariance_type="full", random_state=seed).fit(x)
            d = gmm.covariances_.shape[-1]
            gauss = 0.5 * d * (1 + np.log(2 * np.pi)) + 0.5 * np.linalg.slogdet(gmm.covariances_)[1]
            w = gmm.weights_
            total += float(-np.sum(w * np.log(w)) + np.sum(w * gauss))
    return total / len(actions)


# --------------------------------------------------------------------------- agent


class DACER(OffPolicyAgent):
    Settings = DACERSettings
    metrics = ("q_loss", "actor_loss", "alpha", "entropy", "q_mean", "q_std")

    @staticmethod
    def env_settings(env_id: str) -> dict[str, object]:
        """The authors' settings for an env id such as "Hopper-v5": their table, else their "other envs" values."""
        return dict(DACER_ENV_SETTINGS.get(env_id.split("-v")[0], DACER_OTHER_ENVS))

    def __init__(self, obs_dim, act_dim, settings: DACERSettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        c = settings
        self.actor = DACERPolicyNet(obs_dim, act_dim, c.hidden, c.time_dim).to(device)
        self.schedule = DiffusionSchedule(discrete_vp_beta_schedule(c.diffusion_steps, c.beta_min,
                                                                    c.beta_max)).to(device)
        self.critic = DistributionalTwinQ(obs_dim, act_dim, c.critic_hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic)
        self.log_alpha = torch.tensor([c.log_alpha_init], device=device, requires_grad=True)
        # optax.adam: eps 1e-8, torch's default; one Adam over both critics = theirs per critic (elementwise)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=c.alpha_lr)
        self.target_entropy = -c.target_entropy_scale * act_dim
        self.mean_q_std = torch.full((2,), -1.0, device=device)  # per critic, -1 until the first update
        self.entropy = 0.0

    def sample(self, obs: torch.Tensor, noise: bool) -> torch.Tensor:
        """One action per state: the chain, plus the exploration noise when `noise`, clipped to [-1, 1]."""
        a = denoise_chain(self.actor, self.schedule, obs)
        return noisy_action(a, self.log_alpha.detach(), self.cfg.noise_scale) if noise else a.clamp(-1.0, 1.0)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        # "policy" (figure 2) draws from the noisy policy whose entropy the mixture estimates
        return self.sample(obs, mode != Mode.EVALUATE)

    @torch.no_grad()
    def estimate_entropy(self, states: torch.Tensor) -> float:
        """H from `entropy_samples` noisy actions per state (the authors' vmap over keys: [B, N, A])."""
        n = self.cfg.entropy_samples
        actions = self.sample(states.repeat(n, 1), noise=True).view(n, states.shape[0], -1).transpose(0, 1)
        return gmm_entropy(actions.float().cpu().numpy(), self.cfg.gmm_components)

    def train_step(self, b: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.cfg
        update = self.n_updates - 1  # the authors' `step` counts updates from 0
        reward = b["reward"] * c.reward_scale

        # 1-2. targets from the current policy's noisy a' and the target critics
        with torch.no_grad():
            next_action = self.sample(b["next_obs"], noise=True)
            next_heads = self.critic_target(b["next_obs"], next_action)
            z = torch.randn(2, *reward.shape, device=reward.device)
            y, y_sample = td_targets(reward, b["terminated"], c.gamma, next_heads, z, c.q_sample_clip)

        # 3. critics: gradients now, the step after the actor's loss (which sees the critics before it)
        heads = self.critic(b["obs"], b["action"])
        self.mean_q_std = torch.stack([running_mean_std(self.mean_q_std[i], std, c.tau)
                                       for i, (_, std) in enumerate(heads)])
        q_loss = sum(dsac_critic_loss(m, s, y, y_sample, self.mean_q_std[i], c.td_bound, c.critic_epsilon)
                     for i, (m, s) in enumerate(heads))
        self.critic_optimizer.zero_grad()
        q_loss.backward()

        # 4. entropy of the policy before this update, every alpha_every updates
        refit = update % c.alpha_every == 0
        if refit:
            self.entropy = self.estimate_entropy(b["obs"])

        # 5. actor through the whole chain, every actor_every updates
        metrics = {}
        if update % c.actor_every == 0:
            self.critic.requires_grad_(False)  # its gradients are the critic loss's, kept for its step
            actor_loss = -self.critic.min_q(b["obs"], self.sample(b["obs"], noise=True)).mean()
            self.critic.requires_grad_(True)
            gradient_step(self.actor_optimizer, actor_loss, self.actor.parameters())
            metrics["actor_loss"] = actor_loss.detach()
        self.critic_optimizer.step()

        # 6. temperature on the refit updates
        if refit:
            gradient_step(self.alpha_optimizer, temperature_loss(self.log_alpha, self.entropy, self.target_entropy),
                          [self.log_alpha])

        # 7. target critics with the actor
        if update % c.actor_every == 0:
            soft_update(self.critic_target, self.critic, c.tau)
        (m1, s1), (m2, s2) = heads
        metrics.update(q_loss=q_loss.detach(), alpha=self.log_alpha.detach().exp()[0], entropy=self.entropy,
                       q_mean=m1.detach().mean(), q_std=s1.detach().mean())
        return metrics

    def counters(self) -> dict[str, object]:
        return {"n_updates": self.n_updates, "mean_q_std": self.mean_q_std, "entropy": self.entropy}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mean_q_std = self.mean_q_std.to(self.device)  # checkpoints load on the CPU
