"""DDPM machinery shared by QVPO and DIPO (and, for the schedule and q_sample, QSM).

Source of every default: the QVPO authors' code, wadx2019/qvpo@40a1974
(agent/diffusion.py, agent/model.py, agent/helpers.py; the helpers are DIPO's,
BellmanTimeHut/DIPO, which took them from diffusion-QL). ALGORITHMS.md summarises.

Layout and speed. The sampler is the hot path of the whole project: QVPO draws
256 states x 64 candidates x 20 steps per update. The noise net's first Linear acts
on concat[a_t, t_emb, s], so it splits into W_a a_t + (W_t t_emb(t)) + (W_s s + b):
the state part is computed once per state, the time part once per step value
(T rows, time-embedding MLP included), and per step only the tiny [N, A] x [A, H]
action product is left, plus a broadcast add. That is exactly the authors' network,
only evaluated in a different order (equal within float rounding, tested).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qvpo.nets import init_authors_normal


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
        """Same value as forward() via the factored first layer (tests; differentiable).
        T bounds the time table (default max(t)+1, which costs one host sync)."""
        w_a, _, _, _ = self.first_layer_split()
        table = self.time_features(int(t.max()) + 1 if T is None else T)
        h = torch.addmm(self.state_features(s) + table[t], a_t, w_a.t())
        for lin in self.hidden_layers():
            h = lin(F.mish(h))
        return h


# --------------------------------------------------------------------------- sampler


def mish_(h: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """In-place Mish for the float32 sampler, using `tmp` (same shape) as scratch.

    mish(x) = x tanh(log(1 + e^x)) = x - 2x / ((1 + e^x)^2 + 1)   (tanh(log u) = (u^2-1)/(u^2+1)).
    Why: ATen's CPU mish measured ~17 ms per 16384x256 floats on one core (an exp pass:
    ~1 ms) and took ~half the sampler's time; these 5 cheap passes run in cache (the
    sampler chunks rows) and halve the sampler's time. e^x = inf for x > 88 still gives x.
    Absolute error vs F.mish < 2e-6 (cancellation for very negative x, where mish ~ 0).
    """
    torch.exp(h, out=tmp).add_(1.0).square_().add_(1.0)
    return h.addcdiv_(h, tmp, value=-2.0)


class _FactoredEps:
    """eps_theta for all N = K*B rows of one sampling call, via the factored first layer.

    Rows are candidate-major (row k*B + b is candidate k of state b). The per-state part
    W_s s + b1 and the per-step part W_t t_emb(t) are computed once per call; per step,
    their [B, H] sum is broadcast over candidates through addmm's bias, so the states
    are never copied K times. The MLP runs in chunks of `chunk_rows` rows so that the
    hidden activations (chunk x 256 floats) stay in cache across the elementwise
    passes; buffers are preallocated (a fresh 16 MB tensor per op costs page faults).
    """

    def __init__(self, model: NoisePredictor, s: torch.Tensor, K: int, T: int,
                 chunk_rows: int, dtype: torch.dtype):
        B, A, dev = s.shape[0], model.act_dim, s.device
        w_a, _, _, _ = model.first_layer_split()
        self.w_aT = w_a.t().to(dtype)                                         # [A, H]
        self.lins = [(lin.weight.t().to(dtype), lin.bias.to(dtype)) for lin in model.hidden_layers()]
        s_feat = model.state_features(s).to(dtype)                            # [B, H]
        self.t_feat = model.time_features(T).to(dtype)                        # [T, H]
        H = s_feat.shape[1]
        R = max(1, chunk_rows)
        if B >= R:   # chunks within one candidate: bias rows = a slice of the B state rows
            self.s_feat = s_feat
            self.chunks = [(k * B + j, j, min(R, B - j)) for k in range(K) for j in range(0, B, R)]
        else:        # a chunk holds g whole candidates: tile the B state rows g times (g*B rows, small)
            g = min(K, R // B)
            self.s_feat = s_feat.repeat(g, 1)
            self.chunks = [(k * B, 0, min(g, K - k) * B) for k in range(0, K, g)]
        rows = max(n for _, _, n in self.chunks)
        self.base = torch.empty(self.s_feat.shape, device=dev, dtype=dtype)
        self.h_a, self.h_b, self.tmp = (torch.empty(rows, H, device=dev, dtype=dtype) for _ in range(3))
        self.eps = torch.empty(K * B, A, device=dev, dtype=dtype)
        self.x_net = None if dtype == torch.float32 else torch.empty(K * B, A, device=dev, dtype=dtype)
        if dtype == torch.float32:
            self.act = mish_
        else:  # the rewrite cancels badly in bf16 and ATen's bf16 mish is slow: Mish in float32
            f32 = [torch.empty(rows, H, device=dev) for _ in range(2)]

            def act(h: torch.Tensor, _tmp: torch.Tensor) -> torch.Tensor:
                n = h.shape[0]
                return h.copy_(mish_(f32[0][:n].copy_(h), f32[1][:n]))
            self.act = act

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        if self.x_net is not None:
            x = self.x_net.copy_(x)
        torch.add(self.s_feat, self.t_feat[t], out=self.base)               # (W_s s + b1) + W_t t_emb(t)
        (w2, b2), (w3, b3), (w4, b4) = self.lins
        act, tmp = self.act, self.tmp
        for r0, b0, n in self.chunks:
            h_a, h_b = self.h_a[:n], self.h_b[:n]
            torch.addmm(self.base[b0:b0 + n], x[r0:r0 + n], self.w_aT, out=h_a)  # + W_a a_t
            act(h_a, tmp[:n])
            torch.addmm(b2, h_a, w2, out=h_b)
            act(h_b, tmp[:n])
            torch.addmm(b3, h_b, w3, out=h_a)
            act(h_a, tmp[:n])
            torch.addmm(b4, h_a, w4, out=self.eps[r0:r0 + n])
        return self.eps


def _update(x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, coeffs: tuple, clip: float,
            z: torch.Tensor | None) -> None:
    """One ancestral step in place on x (authors' p_sample): predicted a_0 from eps,
    clamped; posterior mean coef1 a_0 + coef2 a_t; plus sigma z when z is given."""
    c_recip, c_recipm1, coef1, coef2, sigma = coeffs
    torch.mul(x, c_recip, out=x0).add_(eps, alpha=-c_recipm1).clamp_(-clip, clip)
    x.mul_(coef2).add_(x0, alpha=coef1)
    if z is not None:
        x.add_(z, alpha=sigma)


def ddpm_step(schedule: DiffusionSchedule, a_t: torch.Tensor, eps: torch.Tensor, t: int,
              z: torch.Tensor | None = None, noise_ratio: float = 1.0, clip: float = 1.0) -> torch.Tensor:
    """One ancestral step a_t -> a_{t-1} for step index t, out of place (the sampler's
    arithmetic, for tests and one-off use). z is ignored at t = 0: no noise at the last step."""
    x = a_t.clone()
    _update(x, eps, torch.empty_like(x), schedule.step_coefficients(noise_ratio)[t], clip,
            z if t > 0 else None)
    return x


@torch.no_grad()
def ddpm_sample(model: NoisePredictor, schedule: DiffusionSchedule, s: torch.Tensor,
                n_candidates: int = 1, clip: float = 1.0, generator: torch.Generator | None = None,
                noise_ratio: float = 1.0, factored: bool = True,
                dtype: torch.dtype | None = None, chunk_rows: int | None = None) -> torch.Tensor:
    """DDPM ancestral sampling of K = n_candidates actions per state: s [B, S] -> [B, K, A].

    a_T ~ N(0, I); for t = T-1..0: eps = model(a_t, t, s); a_0 = clamp(sqrt(1/abar) a_t
    - sqrt(1/abar - 1) eps); a_{t-1} = coef1 a_0 + coef2 a_t + [t > 0] noise_ratio sigma_t z;
    final clamp to [-clip, clip]. noise_ratio=0 is DIPO's noise-free evaluation.

    Random draws follow the authors' sample_n exactly: rows candidate-major (their
    state.repeat(K, 1)), one randn for a_T and one per step including t = 0 (drawn,
    then unused), so the same seed gives the same noise as their code.
    factored=False evaluates the plain network on materialised [K*B] rows (reference).
    dtype (e.g. torch.bfloat16) runs the network in that dtype; a_t stays float32.
    chunk_rows: rows per MLP chunk on the factored path (default 2048 on CPU, all on GPU).
    """
    B, A, K = s.shape[0], model.act_dim, n_candidates
    N = B * K
    dev = s.device
    coeffs = schedule.step_coefficients(noise_ratio)       # the one host sync of the call
    x = torch.randn(N, A, device=dev, generator=generator)
    x0, z = torch.empty_like(x), torch.empty_like(x)

    if factored:
        if chunk_rows is None:
            chunk_rows = 2048 if dev.type == "cpu" else N    # chunking only pays for CPU caches
        eps_fn = _FactoredEps(model, s, K, schedule.T, chunk_rows, dtype or torch.float32)
    else:
        s_rep = s.repeat(K, 1)                             # authors' candidate-major rows
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
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Weighted noise-prediction loss (authors' p_losses with WeightedL2):
    mean over rows and action dims of w_i (eps - eps_theta(a_t, t, s))^2,
    t ~ U{0..T-1}, eps ~ N(0, I) unless given. weights [N] or None (all ones)."""
    N = actions.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (N,), device=actions.device, generator=generator)
    if eps is None:
        eps = torch.randn(actions.shape, device=actions.device, generator=generator)
    sq = (eps - model(q_sample(schedule, actions, t, eps), t, states)) ** 2
    if weights is not None:
        sq = sq * weights.reshape(N, 1)
    return sq.mean()
