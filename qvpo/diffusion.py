"""DDPM machinery shared by QVPO and DIPO, SDAC and DPMD (and, for the schedule and q_sample, QSM and DACER).

Source of every default: the QVPO authors' code, wadx2019/qvpo@40a1974
(agent/diffusion.py, agent/model.py, agent/helpers.py; the helpers are DIPO's,
BellmanTimeHut/DIPO, which took them from diffusion-QL). docs/algorithms.md summarises.

Layout and speed. The sampler is the hot path of the whole project: QVPO draws
256 states x 64 candidates x 20 steps per update. The noise net's first Linear acts
on concat[a_t, t_emb, s], so it splits into W_a a_t + (W_t t_emb(t)) + (W_s s + b):
the state part is computed once per state, the time part once per step value
(T rows, time-embedding MLP included), and per step only the tiny [N, A] x [A, H]
action product is left, plus a broadcast add. That is exactly the authors' network,
only evaluated in a different order (equal within float rounding, tested). The hidden layers
of that factored network run in qvpo.fastpath (chunks on worker threads, native Mish kernels).
`fastpath.on_fast_path(device)` picks it on a CPU; on CUDA the agents run the plain networks
(`factored=False` below; QVPO with compile=true excepted), the reference the tests hold the fast path to.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qvpo.agent import OffPolicyAgent
from qvpo.errors import UserError
from qvpo.fastpath import ChunkedMishMLP, chunk_threads, mish, mish_mlp_linears, on_fast_path
from qvpo.nets import TwinQ, init_authors_normal
from qvpo.settings import OffPolicySettings, require_positive, widths


# --------------------------------------------------------------------------- schedule


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) cosine schedule, as in the authors' helpers.py.

    abar(i) = cos^2(((i/T) + s) / (1 + s) * pi/2) / abar(0), i = 0..T;
    beta_i = 1 - abar(i)/abar(i-1), clipped to [0, max_beta] (the last beta would be
    ~1 since abar(T) ~ 0). Computed in float64 like the authors' numpy, returned float32.
    """
    x = np.linspace(0.0, T, T + 1) / T  # = authors' linspace(0, T+1, T+1)/(T+1), i.e. i/T
    abar = np.cos((x + s) / (1.0 + s) * np.pi * 0.5) ** 2
    abar = abar / abar[0]
    betas = 1.0 - abar[1:] / abar[:-1]
    return torch.tensor(np.clip(betas, 0.0, max_beta), dtype=torch.float32)


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.999,
                         scale: float = 1.0) -> torch.Tensor:
    """SDAC's and DPMD's linear schedule (mahaitongdae/diffusion_policy_online_rl@a50cf41,
    relax/utils/diffusion.py): beta_i = scale * linspace(beta_start, beta_end, T)_i, i = 0..T-1
    (their GaussianDiffusion multiplies by beta_schedule_scale, 0.8 in scripts/train_mujoco.py).
    Computed in float64 like their numpy, returned float32."""
    return torch.tensor(scale * np.linspace(beta_start, beta_end, T, dtype=np.float64), dtype=torch.float32)


def discrete_vp_beta_schedule(T: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """DACER's variance-preserving schedule (happy-yan/DACER-Diffusion-with-Online-RL@848c1f2,
    relax/utils/diffusion.py BetaScheduleCoefficients.vp_beta_schedule): for t = 1..T,
    alpha_t = exp(-beta_min / T - (beta_max - beta_min) (2t - 1) / (2 T^2)), beta_t = 1 - alpha_t,
    i.e. the continuous VP SDE's beta(s) = beta_min + s (beta_max - beta_min) integrated over step t.
    Computed in float64 like their numpy, returned float32."""
    t = np.arange(1, T + 1, dtype=np.float64)
    alphas = np.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * t - 1) / T**2)
    return torch.tensor(1.0 - alphas, dtype=torch.float32)


class DiffusionSchedule(nn.Module):
    """The standard DDPM quantities (Ho et al. 2020; authors' Diffusion.__init__).

    Buffers, so `.to(device)` moves them and they land in a state_dict. Derived in
    float64 from the float32 betas and stored float32 (the authors derive in float32;
    the difference is below 1e-7 and only in the last bits).
    """

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        b = betas.detach().to(torch.float64).cpu()
        alphas = 1.0 - b
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = b * (1.0 - abar_prev) / (1.0 - abar)
        quantities = {
            "betas": b,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
            "posterior_variance": post_var,
            # posterior variance is 0 at t=0: clip before the log (authors: min 1e-20)
            "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": b * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        }
        for name, value in quantities.items():
            self.register_buffer(name, value.to(torch.float32))

    @classmethod
    def cosine(cls, T: int, s: float = 0.008, max_beta: float = 0.999) -> "DiffusionSchedule":
        return cls(cosine_beta_schedule(T, s, max_beta))

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    def step_coefficients(self, noise_ratio: float = 1.0) -> list[tuple[float, float, float, float, float]]:
        """Per step t (index t): (sqrt(1/abar), sqrt(1/abar - 1), coef1, coef2, sigma * noise_ratio).

        Python floats read once (one host sync per sampling call, none per step);
        sigma = exp(0.5 * clipped log posterior variance), as in the authors' p_sample.
        """
        cols = torch.stack([
            self.sqrt_recip_alphas_cumprod,
            self.sqrt_recipm1_alphas_cumprod,
            self.posterior_mean_coef1,
            self.posterior_mean_coef2,
            (0.5 * self.posterior_log_variance_clipped).exp() * noise_ratio,
        ], dim=1)
        return [tuple(row) for row in cols.tolist()]


def q_sample(schedule: DiffusionSchedule, a0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward noising a_t = sqrt(abar_t) a_0 + sqrt(1 - abar_t) eps, t per row ([N] long)."""
    return (schedule.sqrt_alphas_cumprod[t].unsqueeze(-1) * a0
            + schedule.sqrt_one_minus_alphas_cumprod[t].unsqueeze(-1) * eps)


# --------------------------------------------------------------------------- network


class SinusoidalPosEmb(nn.Module):
    """Transformer-style embedding of the step index (authors' helpers.py):
    [sin(t f_j), cos(t f_j)], f_j = exp(-j log(10000) / (dim/2 - 1)), j < dim/2."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000.0) / (half - 1)))
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


@dataclass
class NoisePredictorSettings(OffPolicySettings):
    """Settings QVPO and DIPO share: the same noise net and Mish critics (QVPO's authors' code is built on
    DIPO's); each algorithm sets its own T and actor lr. Defaults: both authors' main.py and model.py."""

    warmup_steps: int = 10000
    """Uniform-random steps before learning (both authors' main.py start_steps)."""
    diffusion_steps: int = 20
    """T, denoising steps with the cosine schedule (authors' main.py n_timesteps; each algorithm sets its own)."""
    hidden: int = 256
    """Noise-net width (authors' model.py Model)."""
    t_dim: int = 32
    """Width of the sinusoidal time embedding (authors' model.py Model)."""
    critic_hidden: list[int] = widths(256, 256, 256)
    """Twin critics: 3 x (Linear, Mish) (authors' model.py Critic)."""
    actor_lr: float = 3e-4
    """Diffusion-policy learning rate (authors' main.py diffusion_lr; each algorithm sets its own)."""
    critic_lr: float = 3e-4
    """Critic learning rate (authors' main.py critic_lr)."""
    adam_eps: float = 1e-5
    """Adam epsilon of every optimiser (authors' agent code)."""
    grad_clip: float = 2.0
    """Gradient-norm clip of actor and critic, 0 for none (authors' main.py; DIPO: per env in its README;
    a reading of QVPO's paper: none)."""
    tau: float = 0.005
    """Soft update of the target actor and critic (authors' main.py tau)."""
    truncation_as_terminal: bool = False
    """True reproduces the authors' code, which ends the return at time-limit truncation (a known bias)."""
    truncated_init: bool = False
    """True initialises with the truncated normal the authors meant; False is what their code does."""

    def validate(self) -> None:
        require_positive(self, "diffusion_steps", "hidden")
        if self.t_dim < 4 or self.t_dim % 2:
            raise UserError(f"setting 't_dim' must be an even number >= 4, got {self.t_dim}")


class NoisePredictor(nn.Module):
    """eps_theta(a_t, t, s) of the authors' agent/model.py `Model`.

    time_mlp: SinusoidalPosEmb(t_dim) -> Linear(t_dim, hidden) -> Mish -> Linear(hidden, t_dim)
    layer:    concat[a_t, t_emb, s] -> 3 x (Linear(hidden), Mish) -> Linear(act_dim)
    The submodule names match the authors', so their state_dict keys (minus the
    `model.` prefix) load as they are. Hopper (11, 3): 161,059 parameters.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, t_dim: int = 32,
                 truncated_init: bool = False):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.t_dim = obs_dim, act_dim, hidden, t_dim
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(t_dim), nn.Linear(t_dim, hidden), nn.Mish(), nn.Linear(hidden, t_dim))
        self.layer = nn.Sequential(
            nn.Linear(act_dim + t_dim + obs_dim, hidden), nn.Mish(),
            nn.Linear(hidden, hidden), nn.Mish(),
            nn.Linear(hidden, hidden), nn.Mish(),
            nn.Linear(hidden, act_dim))
        # authors' init_weights: plain normal in effect (truncation bug), see qvpo.nets
        init_authors_normal(self, truncated=truncated_init)

    # -- the plain form, exactly as the authors' network computes it
    def forward(self, a_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.cat([a_t, self.time_mlp(t), s], dim=-1))

    # -- the factored first layer: W1 concat[a, e, s] + b1 = W_a a + W_t e + (W_s s + b1)
    def first_layer_split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_a [H,A], W_t [H,t_dim], W_s [H,S], b1 [H]): column blocks of the first Linear (views)."""
        w, A, E = self.layer[0].weight, self.act_dim, self.t_dim
        return w[:, :A], w[:, A:A + E], w[:, A + E:], self.layer[0].bias

    def time_features(self, T: int) -> torch.Tensor:
        """W_t t_emb(t) for t = 0..T-1: [T, H]. The time MLP runs on T rows, not on every row."""
        _, w_t, _, _ = self.first_layer_split()
        steps = torch.arange(T, device=w_t.device)
        return self.time_mlp(steps) @ w_t.t()

    def state_features(self, s: torch.Tensor) -> torch.Tensor:
        """W_s s + b1: [B, H], once per state, not per candidate and step."""
        _, _, w_s, b1 = self.first_layer_split()
        return torch.addmm(b1, s, w_s.t())

    def hidden_layers(self) -> list[nn.Linear]:
        """The Linear layers after the first one (Mish between them, none after the last)."""
        return [self.layer[2], self.layer[4], self.layer[6]]

    def forward_factored(self, a_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                         T: int | None = None) -> torch.Tensor:
        """Same value as forward() via the factored first layer and the fast `mish` (differentiable;
        the diffusion loss's path). T bounds the time table (default max(t)+1, which costs one host sync)."""
        w_a, _, _, _ = self.first_layer_split()
        table = self.time_features(int(t.max()) + 1 if T is None else T)
        h = torch.addmm(self.state_features(s) + table[t], a_t, w_a.t())
        for lin in self.hidden_layers():
            h = lin(mish(h))
        return h

    def predict_noise(self, a_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, factored: bool,
                      T: int | None = None) -> torch.Tensor:
        """eps_theta(a_t, t, s) with gradients: forward_factored (the fast path), or the plain forward."""
        return self.forward_factored(a_t, t, s, T) if factored else self(a_t, t, s)


class NoisePredictorAgent(OffPolicyAgent):
    """The networks QVPO and DIPO share: a noise-predicting actor on the cosine schedule, twin Mish critics
    (the authors' init), a target copy of each and their Adam optimisers (authors' agent code)."""

    def __init__(self, obs_dim, act_dim, settings: NoisePredictorSettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        c = settings
        self.actor = NoisePredictor(obs_dim, act_dim, c.hidden, c.t_dim, c.truncated_init).to(device)
        self.actor_target = copy.deepcopy(self.actor)
        self.schedule = DiffusionSchedule.cosine(c.diffusion_steps).to(device)
        self.critic = TwinQ(obs_dim, act_dim, c.critic_hidden, activation="mish").to(device)
        init_authors_normal(self.critic, truncated=c.truncated_init)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, eps=c.adam_eps)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, eps=c.adam_eps)
        self.factored = on_fast_path(device)  # the networks factored and chunked (a CPU), else plain (CUDA)

    def bootstrap_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """1 where the TD target stops: termination, and truncation too with `truncation_as_terminal`."""
        if self.cfg.truncation_as_terminal:
            return torch.maximum(batch["terminated"], batch["truncated"])
        return batch["terminated"]


# --------------------------------------------------------------------------- sampler


def _update(x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, coeffs: tuple, clip: float,
            z: torch.Tensor | None) -> None:
    """One ancestral step in place on x (authors' p_sample): predicted a_0 from eps,
    clamped; posterior mean coef1 a_0 + coef2 a_t; plus sigma z when z is given."""
    c_recip, c_recipm1, coef1, coef2, sigma = coeffs
    torch.mul(x, c_recip, out=x0).add_(eps, alpha=-c_recipm1).clamp_(-clip, clip)
    x.mul_(coef2).add_(x0, alpha=coef1)
    if z is not None:
        x.add_(z, alpha=sigma)


@torch.no_grad()
def ddpm_sample(model: NoisePredictor, schedule: DiffusionSchedule, s: torch.Tensor,
                n_candidates: int = 1, clip: float = 1.0, generator: torch.Generator | None = None,
                noise_ratio: float = 1.0, factored: bool = True,
                dtype: torch.dtype | None = None, chunk_rows: int | None = None, network=None,
                init_scale: float = 1.0) -> torch.Tensor:
    """DDPM ancestral sampling of K = n_candidates actions per state: s [B, S] -> [B, K, A].

    a_T ~ init_scale N(0, I) (SDAC's and DPMD's authors: 0.5); for t = T-1..0: eps = model(a_t, t, s); a_0 = clamp(sqrt(1/abar) a_t
    - sqrt(1/abar - 1) eps); a_{t-1} = coef1 a_0 + coef2 a_t + [t > 0] noise_ratio sigma_t z;
    final clamp to [-clip, clip]. noise_ratio=0 is DIPO's noise-free evaluation.

    Random draws follow the authors' sample_n exactly: rows candidate-major (their
    state.repeat(K, 1)), one randn for a_T and one per step including t = 0 (drawn,
    then unused), so the same seed gives the same noise as their code.
    factored=False evaluates the plain network on materialised [K*B] rows (reference).
    dtype (e.g. torch.bfloat16): factored, the dtype of the hidden 256x256 products (ChunkedMishMLP);
    plain, autocast to it. a_t stays float32.
    chunk_rows: rows per MLP chunk on the factored path (ChunkedMishMLP's default if None).
    network: evaluates a chunk on the factored path instead of the eager in-place code, e.g.
    torch.compile(chunk_network) (the `compile` setting).
    """
    B, A, K = s.shape[0], model.act_dim, n_candidates
    N = B * K
    dev = s.device
    coeffs = schedule.step_coefficients(noise_ratio)       # the one host sync of the call
    x = torch.randn(N, A, device=dev, generator=generator).mul_(init_scale)
    x0, z = torch.empty_like(x), torch.empty_like(x)

    with chunk_threads(dev if factored and network is None else None, N, chunk_rows) as workers:
        if factored:
            w_a, _, _, _ = model.first_layer_split()
            net = ChunkedMishMLP(w_a, model.hidden_layers(), B, K, chunk_rows, dtype or torch.float32, network,
                                 workers)
            s_feat = model.state_features(s)               # W_s s + b1 [B, H], once per state
            t_feat = model.time_features(schedule.T)       # W_t t_emb(t) [T, H], once per step value
            base = torch.empty_like(s_feat)

            def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
                return net(x, torch.add(s_feat, t_feat[t], out=base))
        else:
            s_rep = s.repeat(K, 1)                         # authors' candidate-major rows
            t_rows = torch.empty(N, dtype=torch.long, device=dev)

            def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
                t_rows.fill_(t)
                low = dtype not in (None, torch.float32)
                ctx = torch.autocast(dev.type, dtype=dtype) if low else contextlib.nullcontext()
                with ctx:
                    return model(x, t_rows, s_rep).float()

        for t in reversed(range(schedule.T)):
            eps = eps_fn(x, t)
            torch.randn(N, A, device=dev, generator=generator, out=z)  # drawn at t = 0 too, as the authors
            _update(x, eps, x0, coeffs[t], clip, z if t > 0 else None)
    x.clamp_(-clip, clip)
    return x.view(K, B, A).transpose(0, 1).contiguous()


# --------------------------------------------------------------------------- loss


def weighted_eps_loss(model: NoisePredictor, schedule: DiffusionSchedule, actions: torch.Tensor,
                      states: torch.Tensor, weights: torch.Tensor | None = None,
                      t: torch.Tensor | None = None, eps: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, factored: bool = True) -> torch.Tensor:
    """Weighted noise-prediction loss (authors' p_losses with WeightedL2):
    mean over rows and action dims of w_i (eps - eps_theta(a_t, t, s))^2,
    t ~ U{0..T-1}, eps ~ N(0, I) unless given. weights [N] or None (all ones).
    factored: a NoisePredictor runs through forward_factored (equal within rounding, faster);
    with factored=False, or any other callable, eps_theta is model(a_t, t, s) (NoisePredictor.predict_noise)."""
    N = actions.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (N,), device=actions.device, generator=generator)
    if eps is None:
        eps = torch.randn(actions.shape, device=actions.device, generator=generator)
    a_t = q_sample(schedule, actions, t, eps)
    if isinstance(model, NoisePredictor):
        predicted = model.predict_noise(a_t, t, states, factored, T=schedule.T)
    else:
        predicted = model(a_t, t, states)
    sq = (eps - predicted) ** 2
    if weights is not None:
        sq = sq * weights.reshape(N, 1)
    return sq.mean()


# --------------------------------------------------------------------------- candidate scoring


@torch.no_grad()
def twin_min_q(critic: TwinQ, states: torch.Tensor, candidates: torch.Tensor,
               chunk_rows: int | None = None) -> torch.Tensor:
    """min(Q1, Q2)(s_b, a_bk) of candidates [B, K, A] at states [B, S]: scores [B, K].

    Each Mish critic's first layer acts on concat[s, a], so it splits into (W_s s + b1), once per state, plus
    W_a a per candidate; the rest runs through ChunkedMishMLP. Equal to critic.min_q on the B*K materialised
    rows within float rounding (tested).
    """
    B, K, A = candidates.shape
    S = states.shape[1]
    x = candidates.transpose(0, 1).reshape(K * B, A)       # candidate-major rows

    def q_values(q: nn.Sequential, workers: int) -> torch.Tensor:
        first, *rest = mish_mlp_linears(q)
        base = torch.addmm(first.bias, states, first.weight[:, :S].t())
        return ChunkedMishMLP(first.weight[:, S:], rest, B, K, chunk_rows, workers=workers)(x, base)[:, 0]

    with chunk_threads(states.device, K * B, chunk_rows) as workers:
        q = torch.minimum(q_values(critic.q1, workers), q_values(critic.q2, workers))
    return q.view(K, B).t().contiguous()


@torch.no_grad()
def min_q_scores(critic, states: torch.Tensor, candidates: torch.Tensor, factored: bool) -> torch.Tensor:
    """min(Q1, Q2) of candidates [B, K, A] at states [B, S]: scores [B, K]. A TwinQ on the fast path is scored
    factored (twin_min_q); otherwise, or any other critic, critic.min_q scores the B*K materialised rows (the
    authors' order)."""
    if factored and isinstance(critic, TwinQ):
        return twin_min_q(critic, states, candidates)
    B, K, A = candidates.shape
    s = states.unsqueeze(1).expand(B, K, states.shape[1]).reshape(B * K, -1)
    return critic.min_q(s, candidates.reshape(B * K, A)).view(B, K)


def best_candidate(critic: TwinQ, states: torch.Tensor, candidates: torch.Tensor,
                   factored: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate [B, A] with the largest min(Q1, Q2), and all scores [B, K], from candidates [B, K, A]
    (scored by diffusion.min_q_scores: factored on the fast path, else on the B*K materialised rows)."""
    scores = min_q_scores(critic, states, candidates, factored)
    best = scores.argmax(dim=1)
    return candidates[torch.arange(states.shape[0], device=states.device), best], scores


class ScaledSinusoidalEmb(nn.Module):
    """The scaled_sinusoidal_encoding of DACER's, SDAC's and DPMD's code (relax/network/blocks.py):
    [sin(t f_j), cos(t f_j)] / sqrt(dim), f_j = 10000^(-j / (dim/2)), j < dim/2, of the raw step index t.
    Not SinusoidalPosEmb (f_j = 10000^(-j / (dim/2 - 1)), unscaled)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = 10000.0 ** (-torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1) / math.sqrt(self.dim)


def init_haiku(module: nn.Module) -> None:
    """haiku's Linear default, the init of the JAX codes (DACER, SDAC, DPMD): weights from N(0, 1/fan_in)
    truncated at 2 std, bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            std = 1.0 / math.sqrt(layer.in_features)
            with torch.no_grad():
                nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
                layer.bias.zero_()


def temperature_loss(log_alpha: torch.Tensor, entropy, target_entropy: float) -> torch.Tensor:
    """-log_alpha (-H + H_target), DACER's and SDAC's alpha loss: its gradient H - H_target lowers alpha while
    the entropy H (no gradient) is above its target."""
    return -(log_alpha * (-entropy + target_entropy)).mean()
