"""DDPM machinery shared by QVPO and DIPO (and, for the schedule and q_sample, QSM).

Source of every default: the QVPO authors' code, wadx2019/qvpo@40a1974
(agent/diffusion.py, agent/model.py, agent/helpers.py; the helpers are DIPO's,
BellmanTimeHut/DIPO, which took them from diffusion-QL). docs/algorithms.md summarises.

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
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from qvpo import native
from qvpo.agent import OffPolicyAgent
from qvpo.errors import UserError
from qvpo.nets import TwinQ, init_authors_normal
from qvpo.settings import OffPolicySettings, require_positive


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
    critic_hidden: list[int] = (256, 256, 256)
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

    def __post_init__(self):
        self.critic_hidden = list(self.critic_hidden)

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

    def bootstrap_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """1 where the TD target stops: termination, and truncation too with `truncation_as_terminal`."""
        if self.cfg.truncation_as_terminal:
            return torch.maximum(batch["terminated"], batch["truncated"])
        return batch["terminated"]


# --------------------------------------------------------------------------- sampler


def mish_(h: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """In-place Mish in torch operations, using `tmp` (same shape) as scratch; tmp ends as 1 + e^x + e^2x / 2.
    The sampler's Mish on a GPU, under torch.compile, and on CPUs where qvpo.native's kernels do not build.

    mish(x) = x tanh(log(1 + e^x)) = x - x / (1 + e^x + e^2x / 2)   (tanh(log u) = (u^2-1)/(u^2+1), u = 1 + e^x).
    Why: ATen's CPU mish measured ~4x slower than these 4 passes (exp, addcmul, add, addcdiv),
    which run in cache because the sampler chunks rows. e^x = inf for x > 88 still gives x.
    Absolute error vs F.mish < 2e-6 (cancellation for very negative x, where mish ~ 0).
    """
    torch.exp(h, out=tmp).addcmul_(tmp, tmp, value=0.5).add_(1.0)
    return h.addcdiv_(h, tmp, value=-1.0)


class _Mish(torch.autograd.Function):
    """Mish with a cheaper forward and backward than ATen's CPU mish and mish_backward (which took about half
    the diffusion loss's time): on float32 CPU tensors the native kernels (qvpo.native), else mish_'s passes with
    the derivative mish'(x) = 1 - r + x sigmoid(x) r (2 - r), r = 1 / (1 + e^x + e^2x / 2)
    (= tanh(softplus(x)) + x sigmoid(x) sech^2(softplus(x)))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        kernels = native.kernels() if x.device.type == "cpu" and x.dtype == torch.float32 else None
        ctx.kernels = kernels
        if kernels is not None:
            x = x.contiguous()
            ctx.save_for_backward(x)
            return kernels.mish(x, torch.empty_like(x))
        w = torch.empty_like(x)
        y = mish_(x.clone(), w)
        ctx.save_for_backward(x, w)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.kernels is not None:
            (x,) = ctx.saved_tensors
            return ctx.kernels.mish_backward(x, grad.contiguous())
        x, w = ctx.saved_tensors
        r = w.reciprocal()
        slope = torch.sigmoid(x).mul_(x).mul_(r).mul_(torch.rsub(r, 2.0)).add_(1.0).sub_(r)
        return slope.mul_(grad)


def mish(x: torch.Tensor) -> torch.Tensor:
    """Differentiable Mish, equal to F.mish within 2e-6 (value) and its gradient within 1e-5 (tested)."""
    return _Mish.apply(x)


CPU_CHUNK_ROWS = 512
"""Rows per chunk of the chunked MLP on the CPU, each chunk on one core: its three [512, 256] float32 buffers
(1.5 MB) stay in the core's L2 (measured best of 256-2048)."""

_WORKER_POOLS: dict[int, ThreadPoolExecutor] = {}


def _worker_pool(n: int) -> ThreadPoolExecutor:
    if n not in _WORKER_POOLS:
        _WORKER_POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="qvpo-chunks")
    return _WORKER_POOLS[n]


@contextlib.contextmanager
def chunk_threads(device: torch.device | None, rows: int = 0, chunk_rows: int | None = None) -> Iterator[int]:
    """For a ChunkedMishMLP on the CPU over `rows` rows in more than one chunk, with more than one torch thread:
    torch set to one thread for the block, yielding the count it had (the number of chunk workers). Otherwise
    (a GPU, device None, one chunk, one thread) it yields 1 and changes nothing: one chunk runs on the calling
    thread with all of torch's threads.

    Why a whole sampling call and not just each batch of chunks: after every parallel op OpenMP's idle team
    threads spin for a while, and one spinning between two batches of chunks kept a worker off its core
    (a 256 x 4 sampling call ran 2x slower)."""
    threads = torch.get_num_threads()
    one_chunk = rows <= (CPU_CHUNK_ROWS if chunk_rows is None else chunk_rows)
    if device is None or device.type != "cpu" or threads == 1 or one_chunk:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def chunk_network(x: torch.Tensor, base: torch.Tensor, w_xT: torch.Tensor,
                  hidden: list[tuple[torch.Tensor, torch.Tensor]], w_last: torch.Tensor,
                  b_last: torch.Tensor) -> torch.Tensor:
    """One chunk of a factored Linear-Mish MLP, out of place: h = mish(base + x W_x^T), then mish(h W^T + b) per
    hidden (W^T, b) in the dtype of W (cast back to float32), then the outputs transposed, W_last h^T + b_last
    [out, rows]. ChunkedMishMLP's torch arithmetic without its buffers: what `compile=True` hands to torch.compile
    (which fuses mish_'s passes itself)."""
    h = torch.addmm(base, x, w_xT)
    h = mish_(h, torch.empty_like(h))
    for w, b in hidden:
        h = torch.addmm(b, h.to(w.dtype), w).float()
        h = mish_(h, torch.empty_like(h))
    return torch.addmm(b_last[:, None], w_last, h.t())


class ChunkedMishMLP:
    """No-grad evaluation of a Linear-Mish MLP on N = K*B candidate-major rows whose first layer is factored.

    Row k*B + b (candidate k of state b) has the first pre-activation base[b] + x[k*B + b] W_x^T, where base [B, H]
    holds what depends on the state (and step) only, computed once per state instead of per candidate: addmm
    broadcasts it over candidates through its bias argument, so states are never copied K times. The layers run
    in chunks of `chunk_rows` rows so that the hidden activations stay in cache across Mish's elementwise passes;
    buffers are preallocated (a fresh 16 MB tensor per op costs page faults). The narrow last layer is computed
    transposed, W_last h^T into an [out, N] buffer (3x faster than h W_last^T on the CPU for 3 outputs).
    On the CPU the elementwise work runs in qvpo.native's kernels: each Mish in one pass, the thin first layer
    fused with its Mish, the last Mish with the output layer (torch's mish_ passes where no compiler is found).
    With `workers` > 1 on the CPU (inside chunk_threads, which yields the count), that many worker threads each
    run every workers-th chunk on one core (torch at one thread; kernels release the GIL): no thread barrier per
    op, of which a call has thousands, and which stall whenever the OS deschedules one thread of a busy machine;
    each chunk's result is the same for any number of workers.
    dtype (e.g. bfloat16) is that of the wide hidden-to-hidden products only; the thin first and last layers and
    Mish stay float32 (Mish's rewrite cancels badly in bf16, and ATen's bf16 elementwise ops are slower).
    chunk_rows defaults to CPU_CHUNK_ROWS on the CPU, all rows on a GPU. `network` (e.g.
    torch.compile(chunk_network)) replaces the eager in-place evaluation of a chunk.
    """

    def __init__(self, w_x: torch.Tensor, layers: list[nn.Linear], B: int, K: int, chunk_rows: int | None = None,
                 dtype: torch.dtype = torch.float32, network=None, workers: int = 1):
        dev = w_x.device
        H = w_x.shape[0]
        if chunk_rows is None:  # chunking only pays for CPU caches
            chunk_rows = CPU_CHUNK_ROWS if dev.type == "cpu" else K * B
        self.w_xT = w_x.t().contiguous()                                      # [X, H]
        self.hidden = [(lin.weight.t().to(dtype), lin.bias.to(dtype)) for lin in layers[:-1]]
        self.w_last, self.b_last = layers[-1].weight, layers[-1].bias         # [out, H], [out]
        self.B = B
        R = max(1, chunk_rows)
        if B >= R:   # chunks within one candidate: bias rows = a slice of the B state rows
            self.tiles = 1
            self.chunks = [(k * B + j, j, min(R, B - j)) for k in range(K) for j in range(0, B, R)]
        else:        # a chunk holds g whole candidates: the B state rows tiled g times (g*B rows, small)
            self.tiles = min(K, R // B)
            self.chunks = [(k * B, 0, min(self.tiles, K - k) * B) for k in range(0, K, self.tiles)]
        rows = max(n for _, _, n in self.chunks)
        self.base = torch.empty(self.tiles * B, H, device=dev) if self.tiles > 1 else None
        self.out = torch.empty(self.w_last.shape[0], K * B, device=dev)     # transposed outputs
        if network is not None:
            self.network = network
            self.run_chunks = self._run_network
            return
        self.run_chunks = self._run_eager
        self.kernels = native.kernels() if dev.type == "cpu" else None
        self.workers = min(workers, len(self.chunks)) if dev.type == "cpu" else 1
        low = dtype != torch.float32   # products in `dtype` need their inputs and outputs in it
        self.buffers = [(*(torch.empty(rows, H, device=dev) for _ in range(3)),
                         *((torch.empty(rows, H, device=dev, dtype=dtype) for _ in range(2)) if low else (None, None)))
                        for _ in range(self.workers)]

    def __call__(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """x [K*B, X], base [B, H] -> the MLP's outputs [K*B, out] (a view of a buffer the next call reuses)."""
        if self.base is not None:
            base = self.base.view(self.tiles, self.B, -1).copy_(base).flatten(0, 1)
        self.run_chunks(x, base)
        return self.out.t()

    def _run_eager(self, x: torch.Tensor, base: torch.Tensor) -> None:
        if self.workers == 1:
            self._run_chunks(self.chunks, self.buffers[0], x, base)
        else:
            pool = _worker_pool(self.workers)
            done = [pool.submit(self._run_chunks, self.chunks[i::self.workers], self.buffers[i], x, base)
                    for i in range(self.workers)]
            for future in done:
                future.result()
        self.out.add_(self.b_last[:, None])

    @torch.no_grad()  # grad mode is per thread
    def _run_chunks(self, chunks: list[tuple[int, int, int]], buffers: tuple, x: torch.Tensor,
                    base: torch.Tensor) -> None:
        h_a, h_b, tmp_rows, low_in, low_out = buffers
        kernels, last = self.kernels, len(self.hidden) - 1
        for r0, b0, n in chunks:
            h, h_next, tmp = h_a[:n], h_b[:n], tmp_rows[:n]
            out = self.out[:, r0:r0 + n]
            if kernels is None:
                mish_(torch.addmm(base[b0:b0 + n], x[r0:r0 + n], self.w_xT, out=h), tmp)
            else:  # the last Mish is applied by mish_project
                kernels.first_layer(h, base[b0:b0 + n], x[r0:r0 + n], self.w_xT, apply_mish=last >= 0)
            for i, (w, b) in enumerate(self.hidden):
                if low_in is None:
                    torch.addmm(b, h, w, out=h_next)
                else:
                    h_next.copy_(torch.addmm(b, low_in[:n].copy_(h), w, out=low_out[:n]))
                if kernels is None:
                    mish_(h_next, tmp)
                elif i < last:
                    kernels.mish(h_next, h_next)
                h, h_next = h_next, h
            if kernels is None:
                torch.mm(self.w_last, h.t(), out=out)
            else:
                kernels.mish_project(h, self.w_last, out)

    def _run_network(self, x: torch.Tensor, base: torch.Tensor) -> None:
        for r0, b0, n in self.chunks:
            self.out[:, r0:r0 + n].copy_(
                self.network(x[r0:r0 + n], base[b0:b0 + n], self.w_xT, self.hidden, self.w_last, self.b_last))


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
                dtype: torch.dtype | None = None, chunk_rows: int | None = None, network=None) -> torch.Tensor:
    """DDPM ancestral sampling of K = n_candidates actions per state: s [B, S] -> [B, K, A].

    a_T ~ N(0, I); for t = T-1..0: eps = model(a_t, t, s); a_0 = clamp(sqrt(1/abar) a_t
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
    x = torch.randn(N, A, device=dev, generator=generator)
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
    with factored=False, or any other callable, eps_theta is model(a_t, t, s)."""
    N = actions.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (N,), device=actions.device, generator=generator)
    if eps is None:
        eps = torch.randn(actions.shape, device=actions.device, generator=generator)
    a_t = q_sample(schedule, actions, t, eps)
    if factored and isinstance(model, NoisePredictor):
        predicted = model.forward_factored(a_t, t, states, T=schedule.T)
    else:
        predicted = model(a_t, t, states)
    sq = (eps - predicted) ** 2
    if weights is not None:
        sq = sq * weights.reshape(N, 1)
    return sq.mean()


# --------------------------------------------------------------------------- candidate scoring


def mish_mlp_linears(net: nn.Sequential) -> list[nn.Linear]:
    """The Linear layers of a Sequential (Linear, Mish, ..., Linear), or a TypeError for any other layout."""
    layers = list(net)
    linears, activations = layers[0::2], layers[1::2]
    if not (len(layers) % 2 == 1 and all(isinstance(m, nn.Linear) for m in linears)
            and all(isinstance(m, nn.Mish) for m in activations)):
        raise TypeError(f"expected a Sequential of Linear layers with Mish between them, got {net}")
    return linears


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
