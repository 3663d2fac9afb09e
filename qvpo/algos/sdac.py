"""SDAC: soft diffusion actor-critic (Ma et al. 2025, "Efficient Online Reinforcement Learning for Diffusion
Policy"), in torch.

Source: the authors' JAX code, mahaitongdae/diffusion_policy_online_rl@a50cf41: relax/algorithm/sdac.py (the
update), relax/network/diffv2.py (acting and the networks' construction), relax/network/blocks.py (the noise net
and critics), relax/utils/diffusion.py (schedule, sampler, losses) and scripts/train_mujoco.py (the settings and
the loop). docs/algorithms.md summarises. DPMD (qvpo.algos.dpmd) shares everything here but the actor loss.

The sampler: DDPM ancestral sampling with T = 20 steps of a linear schedule, beta = 0.8 * linspace(1e-4, 0.999, T),
starting from x_T ~ 0.5 N(0, I) (not N(0, I)), the predicted x_0 clipped to [-1, 1] at every step. Acting: the best
of 32 samples by min(Q1, Q2), plus exp(log_alpha) * 0.1 * N(0, I) (not clipped) when exploring; evaluation is the
best of 32 without that noise. Both act with the target (EMA) actor, as the authors' get_action does.

One update, read top to bottom in `train_step`:
1. critic: a' = act(s') with the current actor, the current critics choosing the best sample, exploration noise
   on; y = 0.2 r + gamma (1 - terminated) min(Q1', Q2')(s', a'); loss = the sum of the two MSEs;
2. actor (every 2nd update), reverse-sampling weighted score matching: a_0 = act(s) as in 1;
   t ~ U{0..T-1}; a_t = sqrt(abar_t) a_0 + sqrt(1 - abar_t) eps; K = 64 draws eps_k give the candidates
   x0_k = clip((a_t - sqrt(1 - abar_t) eps_k) / sqrt(abar_t), -1, 1) of the clean action a_t came from;
   w_k = softmax_k(5 min(Q1, Q2)(s, x0_k) / alpha) (the critics before this update's step);
   loss = mean over states, k and action dims of w_k (eps_theta(a_t, t, s) - eps_k)^2;
   the actor's lr decays linearly from 3e-4 to 3e-5 over its actor steps 25,000..75,000;
3. alpha (every 250th update): loss -log_alpha (-H + H_target), H the entropy of the exploration Gaussian
   N(0, (0.1 alpha)^2 I), H_target = -0.9 act_dim;
4. targets (every 2nd update): Polyak averaging of the critics and the actor, tau 0.005.
Updates start after 30,000 uniform-random steps and come once every 5 env steps (the authors: 5 envs, one update
per vector step). Truncation bootstraps (their replay's done is `terminated`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from qvpo.agent import Mode, OffPolicyAgent
from qvpo.diffusion import (DiffusionSchedule, NoisePredictor, ScaledSinusoidalEmb, best_candidate, ddpm_sample,
                            init_haiku, linear_beta_schedule, min_q_scores, q_sample, temperature_loss)
from qvpo.fastpath import on_fast_path
from qvpo.errors import UserError
from qvpo.nets import TwinQ, soft_update, twin_q_step
from qvpo.settings import OffPolicySettings, require_positive, widths

SOURCE = "mahaitongdae/diffusion_policy_online_rl@a50cf41"


@dataclass
class DiffusionACSettings(OffPolicySettings):
    """Settings SDAC and DPMD share; defaults are the authors' (mahaitongdae/diffusion_policy_online_rl@a50cf41,
    scripts/train_mujoco.py and the files it builds on) unless said."""

    warmup_steps: int = 30000
    """Uniform-random steps before learning (authors' train_mujoco.py --start_step 3e4, transitions of 5 envs)."""
    update_every: int = 5
    """Env steps per update (authors' train_mujoco.py --num_vec_envs 5 with one update per vector step of all 5
    envs, OffPolicyTrainer sample_per_iteration = update_per_iteration = 1: 0.2 updates per transition)."""
    diffusion_steps: int = 20
    """T, denoising steps (authors' train_mujoco.py --diffusion_steps)."""
    beta_start: float = 1e-4
    """First beta of the linear schedule before scaling (authors' relax/utils/diffusion.py linear_beta_schedule)."""
    beta_end: float = 0.999
    """Last beta of the linear schedule before scaling (authors' relax/utils/diffusion.py linear_beta_schedule)."""
    beta_scale: float = 0.8
    """Factor on every beta (authors' train_mujoco.py --beta_schedule_scale 0.8; create_diffv2_net default 0.3)."""
    init_scale: float = 0.5
    """x_T ~ init_scale N(0, I) (authors' relax/utils/diffusion.py p_sample)."""
    hidden: int = 256
    """Noise-net width, 3 hidden Mish layers (authors' train_mujoco.py --diffusion_hidden_dim, --hidden_num 3)."""
    t_dim: int = 16
    """Width of the time embedding (authors' relax/network/blocks.py DACERPolicyNet time_dim)."""
    time_hidden: int = 32
    """Hidden width of the time embedding's MLP (authors' blocks.py DACERPolicyNet: Linear(2 time_dim))."""
    critic_hidden: list[int] = widths(256, 256, 256)
    """Twin critics, Mish (authors' train_mujoco.py --hidden_dim 256 --hidden_num 3, mish)."""
    n_particles: int = 32
    """Samples per state when acting and for a'; the best by min Q acts (authors' train_mujoco.py --num_particles)."""
    noise_scale: float = 0.1
    """Exploration noise std in units of alpha (authors' train_mujoco.py --noise_scale; diffv2.py get_action)."""
    act_with_target_actor: bool = True
    """Act and evaluate with the target actor, as the authors' get_action does (get_policy_params_to_save)."""
    actor_lr: float = 3e-4
    """Initial actor learning rate (authors' train_mujoco.py --lr)."""
    actor_lr_end: float = 3e-5
    """Actor learning rate at the end of its linear decay (authors' train_mujoco.py --lr_schedule_end)."""
    actor_lr_decay_begin: int = 25000
    """Actor steps before the decay begins (authors' sdac.py/dpmd.py linear_schedule transition_begin 2.5e4)."""
    actor_lr_decay_steps: int = 50000
    """Actor steps the decay lasts, 0 for none (authors' sdac.py/dpmd.py linear_schedule transition_steps 5e4)."""
    critic_lr: float = 3e-4
    """Critic learning rate (authors' train_mujoco.py --lr, optax.adam)."""
    alpha_lr: float = 7e-3
    """Learning rate of log alpha (authors' train_mujoco.py --alpha_lr)."""
    alpha_init: float = 5.0
    """Initial alpha (authors' diffv2.py create_diffv2_net: log_alpha = log 5)."""
    alpha_every: int = 250
    """Updates between alpha steps (authors' train_mujoco.py --delay_alpha_update)."""
    target_entropy_scale: float = 0.9
    """H_target = -act_dim * this (authors' diffv2.py create_diffv2_net target_entropy_scale)."""
    policy_every: int = 2
    """Updates between actor and target steps (authors' sdac.py/dpmd.py delay_update)."""
    tau: float = 0.005
    """Soft update of the target critics and actor (authors' sdac.py/dpmd.py tau)."""
    reward_scale: float = 0.2
    """Factor on rewards in the TD target (authors' sdac.py/dpmd.py reward_scale)."""

    def validate(self) -> None:
        require_positive(self, "update_every", "diffusion_steps", "hidden", "time_hidden", "n_particles",
                         "alpha_every", "policy_every", "alpha_init")
        if self.t_dim < 2 or self.t_dim % 2:
            raise UserError(f"setting 't_dim' must be an even number >= 2, got {self.t_dim}")
        if self.actor_lr_decay_begin < 0 or self.actor_lr_decay_steps < 0:
            raise UserError("settings 'actor_lr_decay_begin' and 'actor_lr_decay_steps' must be >= 0")
        if not 0 < self.beta_scale * self.beta_end < 1 or not 0 < self.beta_scale * self.beta_start < 1:
            raise UserError("the scaled betas beta_scale * beta_start and beta_scale * beta_end must lie in (0, 1)")


@dataclass
class SDACSettings(DiffusionACSettings):
    """SDAC's settings; defaults are the authors' (relax/algorithm/sdac.py@a50cf41) unless said."""

    reverse_mc: int = 64
    """K, candidate clean actions x0_k per noisy action in the actor loss (authors' sdac.py reverse_mc_num)."""
    q_weight_scale: float = 5.0
    """Factor on min Q / alpha in the softmax weights (authors' sdac.py: "5 is the initial alpha value")."""

    def validate(self) -> None:
        super().validate()
        require_positive(self, "reverse_mc")


# --------------------------------------------------------------------------- network


class SDACNoiseNet(NoisePredictor):
    """eps_theta(a_t, t, s) of the authors' DACERPolicyNet: the shared NoisePredictor (concat[a_t, t_emb, s] ->
    3 x (Linear(hidden), Mish) -> Linear(act_dim), so its factored sampler applies) with their time embedding,
    ScaledSinusoidalEmb(t_dim) -> Linear(time_hidden) -> Mish -> Linear(t_dim), and haiku's init. Their input order
    is concat[s, a_t, t_emb]: a permutation of the first layer's columns, the same function and init."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, t_dim: int = 16, time_hidden: int = 32):
        super().__init__(obs_dim, act_dim, hidden, t_dim)
        self.time_mlp = nn.Sequential(ScaledSinusoidalEmb(t_dim), nn.Linear(t_dim, time_hidden), nn.Mish(),
                                      nn.Linear(time_hidden, t_dim))
        init_haiku(self)


# --------------------------------------------------------------------------- sampler and acting


def exploration_std(log_alpha: torch.Tensor, noise_scale: float) -> torch.Tensor:
    """Std of the Gaussian added to an action when exploring: exp(log_alpha) * noise_scale (authors' get_action)."""
    return log_alpha.detach().exp() * noise_scale


def gaussian_entropy(act_dim: int, std: torch.Tensor) -> torch.Tensor:
    """Entropy of N(0, std^2 I) in act_dim dimensions: act_dim / 2 * log(2 pi e std^2)."""
    return 0.5 * act_dim * torch.log(2 * math.pi * math.e * std ** 2)


def alpha_loss(log_alpha: torch.Tensor, act_dim: int, noise_scale: float, target_entropy: float) -> torch.Tensor:
    """The authors' log_alpha_loss_fn: -log_alpha (-H + H_target), H = the entropy of the exploration Gaussian,
    its std exp(log_alpha) noise_scale, without gradient: d loss / d log_alpha = H - H_target."""
    return temperature_loss(log_alpha, gaussian_entropy(act_dim, exploration_std(log_alpha, noise_scale)),
                            target_entropy)


def linear_decay_lr(base_lr: float, end_lr: float, count: int, begin: int, steps: int) -> float:
    """optax.linear_schedule(base_lr, end_lr, steps, begin) at optimiser step `count` (0-based): base_lr until
    `begin`, then linear to end_lr over `steps` steps, end_lr after; steps 0 keeps base_lr."""
    if steps == 0:
        return base_lr
    frac = min(max(count - begin, 0), steps) / steps
    return base_lr + (end_lr - base_lr) * frac


# --------------------------------------------------------------------------- SDAC's actor loss


def reverse_sampling_x0(schedule: DiffusionSchedule, a_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                        clip: float = 1.0) -> torch.Tensor:
    """Candidate clean actions of a_t [B, A] (step t [B]) for noises eps [B, K, A]: the authors' get_recon,
    x0_k = sqrt(1/abar_t) a_t - sqrt(1/abar_t - 1) eps_k = (a_t - sqrt(1 - abar_t) eps_k) / sqrt(abar_t),
    clipped to [-clip, clip]: [B, K, A]."""
    c_recip = schedule.sqrt_recip_alphas_cumprod[t][:, None, None]
    c_recipm1 = schedule.sqrt_recipm1_alphas_cumprod[t][:, None, None]
    return (c_recip * a_t[:, None, :] - c_recipm1 * eps).clamp(-clip, clip)


def reverse_sampling_weights(scores: torch.Tensor, alpha: torch.Tensor, scale: float) -> torch.Tensor:
    """w = softmax over k of scale * scores / alpha, scores [B, K] (authors' q_weights)."""
    return torch.softmax(scores * scale / alpha, dim=1)


def reverse_sampling_loss(predicted: torch.Tensor, eps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The authors' reverse_samping_weighted_p_loss: the mean over states b, draws k and action dims of
    w_bk (eps_theta_b - eps_bk)^2, predicted [B, A] (eps_theta(a_t, t, s), the same for every k), eps [B, K, A],
    weights [B, K]. Equal to (1 / (K A)) mean_b sum_k w_bk ||eps_theta_b - eps_bk||^2."""
    return (weights[:, :, None] * (predicted[:, None, :] - eps) ** 2).mean()


# --------------------------------------------------------------------------- agents


class DiffusionACAgent(OffPolicyAgent):
    """What SDAC and DPMD share: the noise net on the linear schedule and its target, twin Mish critics and their
    targets, log alpha, their Adam optimisers (optax.adam: eps 1e-8, torch's default), acting, the TD target, the
    alpha step, the target updates, and the update ratio. Subclasses write `train_step`."""

    def __init__(self, obs_dim, act_dim, settings: DiffusionACSettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        c = settings
        self.actor = SDACNoiseNet(obs_dim, act_dim, c.hidden, c.t_dim, c.time_hidden).to(device)
        self.actor_target = copy.deepcopy(self.actor)
        betas = linear_beta_schedule(c.diffusion_steps, c.beta_start, c.beta_end, c.beta_scale)
        self.schedule = DiffusionSchedule(betas).to(device)
        self.critic = TwinQ(obs_dim, act_dim, c.critic_hidden, activation="mish").to(device)
        init_haiku(self.critic)
        self.critic_target = copy.deepcopy(self.critic)
        self.log_alpha = torch.tensor(math.log(c.alpha_init), device=device, requires_grad=True)
        self.target_entropy = -act_dim * c.target_entropy_scale
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=c.alpha_lr)
        self.factored = on_fast_path(device)  # the networks factored and chunked (a CPU), else plain (CUDA)

    def update(self, step: int) -> dict[str, float]:
        """Learns once every `update_every` env steps after warm-up (the first at warmup_steps + update_every)."""
        if step <= self.cfg.warmup_steps or (step - self.cfg.warmup_steps) % self.cfg.update_every:
            return {}
        return super().update(step)

    def sample(self, actor: NoisePredictor, states: torch.Tensor, k: int) -> torch.Tensor:
        """The authors' p_sample: DDPM ancestral sampling from x_T ~ init_scale N(0, I), K = k actions per state."""
        return ddpm_sample(actor, self.schedule, states, k, factored=self.factored, init_scale=self.cfg.init_scale)

    @torch.no_grad()
    def best_action(self, actor: NoisePredictor, states: torch.Tensor, noise: bool) -> torch.Tensor:
        """The authors' get_action: the best of n_particles samples by the current critics' min Q, plus
        exploration noise (not clipped) when `noise`; their evaluation sets alpha = 0, i.e. no noise."""
        action, _ = best_candidate(self.critic, states, self.sample(actor, states, self.cfg.n_particles),
                                   self.factored)
        if noise:
            action = action + exploration_std(self.log_alpha, self.cfg.noise_scale) * torch.randn_like(action)
        return action

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        actor = self.actor_target if self.cfg.act_with_target_actor else self.actor
        if mode == Mode.POLICY:
            return self.sample(actor, obs, 1)[:, 0]
        return self.best_action(actor, obs, noise=mode == Mode.EXPLORE)

    @property
    def update_index(self) -> int:
        """The authors' 0-based update counter `step` (n_updates counts this update already)."""
        return self.n_updates - 1

    def policy_due(self) -> bool:
        return self.update_index % self.cfg.policy_every == 0

    @torch.no_grad()
    def td_target(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(a', y): a' = act(s') with the current actor and critics and exploration noise;
        y = reward_scale r + gamma (1 - terminated) min(Q1', Q2')(s', a')."""
        next_action = self.best_action(self.actor, b["next_obs"], noise=True)
        q_next = self.critic_target.min_q(b["next_obs"], next_action)
        return next_action, self.cfg.reward_scale * b["reward"] + self.cfg.gamma * (1 - b["terminated"]) * q_next

    def actor_step(self, loss: torch.Tensor) -> None:
        """One Adam step of the actor at its decayed lr (its own step count: update_index // policy_every)."""
        c = self.cfg
        lr = linear_decay_lr(c.actor_lr, c.actor_lr_end, self.update_index // c.policy_every, c.actor_lr_decay_begin,
                             c.actor_lr_decay_steps)
        for group in self.actor_optimizer.param_groups:
            group["lr"] = lr
        self.actor_optimizer.zero_grad()
        loss.backward()
        self.actor_optimizer.step()

    def alpha_and_targets(self) -> None:
        """The alpha step every alpha_every updates and the target updates every policy_every (both from update 0)."""
        c = self.cfg
        if self.update_index % c.alpha_every == 0:
            loss = alpha_loss(self.log_alpha, self.act_dim, c.noise_scale, self.target_entropy)
            self.alpha_optimizer.zero_grad()
            loss.backward()
            self.alpha_optimizer.step()
        if self.policy_due():
            soft_update(self.critic_target, self.critic, c.tau)
            soft_update(self.actor_target, self.actor, c.tau)


class SDAC(DiffusionACAgent):
    Settings = SDACSettings
    metrics = ("q_loss", "actor_loss", "alpha", "q_mean", "weight_max")

    def train_step(self, b: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        c = self.cfg
        states = b["obs"]
        metrics = {"alpha": self.log_alpha.detach().exp()}

        # 1. TD target, a' from the current actor (the critic steps below, after the actor's weights are scored)
        next_action, y = self.td_target(b)
        metrics["q_mean"] = y.mean()

        # 2a. actor's targets, scored by the critics before their step (the authors compute all gradients first)
        if self.policy_due():
            with torch.no_grad():
                a0 = self.best_action(self.actor, states, noise=True)
                t = torch.randint(0, self.schedule.T, (states.shape[0],), device=states.device)
                a_t = q_sample(self.schedule, a0, t, torch.randn_like(a0))
                eps = torch.randn(states.shape[0], c.reverse_mc, self.act_dim, device=states.device)
                x0 = reverse_sampling_x0(self.schedule, a_t, t, eps)
                scores = min_q_scores(self.critic, states, x0, self.factored)
                weights = reverse_sampling_weights(scores, self.log_alpha.exp(), c.q_weight_scale)

        # 1b. critic step
        metrics["q_loss"] = twin_q_step(self.critic, self.critic_optimizer, states, b["action"], y)

        # 2b. actor step on the reverse-sampling weighted loss
        if self.policy_due():
            predicted = self.actor.predict_noise(a_t, t, states, self.factored, T=self.schedule.T)
            actor_loss = reverse_sampling_loss(predicted, eps, weights)
            self.actor_step(actor_loss)
            metrics["actor_loss"] = actor_loss.detach()
            metrics["weight_max"] = weights.max(dim=1).values.mean()

        # 3, 4. alpha and targets
        self.alpha_and_targets()
        return metrics
