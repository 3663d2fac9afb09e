"""SDAC's and DPMD's pieces against values worked out by hand, their update schedule, and a CLI run of each."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import read_csv, run_cli, tiny_args
from qvpo.algos.dpmd import DPMD, DPMDSettings, dpmd_weights, running_update
from qvpo.algos.sdac import (SDAC, SDACNoiseNet, SDACSettings, alpha_loss, gaussian_entropy,
                             linear_decay_lr, reverse_sampling_loss, reverse_sampling_weights, reverse_sampling_x0)
from qvpo.diffusion import DiffusionSchedule, ScaledSinusoidalEmb, ddpm_sample, linear_beta_schedule, weighted_eps_loss
from qvpo.envs import Transition
from qvpo.errors import UserError
from qvpo.settings import resolve


class ToyTwinQ(nn.Module):
    """Q1(s, a) = a_0 + a_1 and Q2(s, a) = 2 a_0, whatever the state."""

    def forward(self, s, a):
        return (a[..., 0] + a[..., 1]).unsqueeze(-1), (2 * a[..., 0]).unsqueeze(-1)

    def min_q(self, s, a):
        return torch.min(*self(s, a))


# One noisy action a_t = (0.4, -0.2) at a step with abar = 0.64 (beta 0.36: sqrt(abar) = 0.8, sqrt(1 - abar) = 0.6),
# and K = 3 noises eps_k.
SCHEDULE = DiffusionSchedule(torch.tensor([0.36]))
A_T = torch.tensor([[0.4, -0.2]])
EPS = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]]])
# x0_k = (a_t - 0.6 eps_k) / 0.8, clipped to [-1, 1]:
#   k = 0: (0.4 / 0.8, -0.2 / 0.8)                         = (0.5, -0.25)
#   k = 1: ((0.4 - 0.6) / 0.8, (-0.2 - 0.6) / 0.8)         = (-0.25, -1.0)
#   k = 2: ((0.4 + 0.6) / 0.8, (-0.2 - 1.2) / 0.8)         = (1.25, -1.75) -> (1.0, -1.0)
X0 = torch.tensor([[[0.5, -0.25], [-0.25, -1.0], [1.0, -1.0]]])


# --------------------------------------------------------------------------- schedule, network, sampler


def test_linear_schedule_by_hand():
    # linspace(0.1, 0.5, 3) = (0.1, 0.3, 0.5), scaled by 0.5: betas (0.05, 0.15, 0.25)
    betas = linear_beta_schedule(3, 0.1, 0.5, scale=0.5)
    assert betas.tolist() == pytest.approx([0.05, 0.15, 0.25])
    s = DiffusionSchedule(betas)
    # alphas = 1 - betas = (0.95, 0.85, 0.75); abar = (0.95, 0.95 * 0.85 = 0.8075, 0.8075 * 0.75 = 0.605625)
    assert s.alphas.tolist() == pytest.approx([0.95, 0.85, 0.75])
    assert s.alphas_cumprod.tolist() == pytest.approx([0.95, 0.8075, 0.605625])
    # the authors' defaults for T = 2: linspace(1e-4, 0.999, 2) * 0.8 = (8e-5, 0.7992)
    assert linear_beta_schedule(2, scale=0.8).tolist() == pytest.approx([8e-5, 0.7992])
    assert SDACSettings().beta_scale == 0.8 and SDACSettings().diffusion_steps == 20


def test_scaled_sinusoidal_embedding_by_hand():
    # dim 4: f = (10000^0, 10000^(-1/2)) = (1, 0.01); at t = 1: (sin 1, sin 0.01, cos 1, cos 0.01) / sqrt(4)
    emb = ScaledSinusoidalEmb(4)(torch.tensor([1]))
    assert emb[0].tolist() == pytest.approx([0.4207355, 0.0049999, 0.2701512, 0.4999750], abs=1e-6)


def test_noise_net_factored_form_equals_the_plain_one():
    torch.manual_seed(0)
    net = SDACNoiseNet(5, 3, hidden=16, t_dim=8, time_hidden=12)
    a, s, t = torch.randn(7, 3), torch.randn(7, 5), torch.randint(0, 4, (7,))
    assert torch.allclose(net.forward_factored(a, t, s, T=4), net(a, t, s), atol=1e-5)


@pytest.mark.parametrize("factored", [True, False])
def test_sampler_starts_from_half_a_standard_normal_candidate_major(factored):
    # T = 1, beta 0.36 and a net that predicts eps = 0: x_0 = clip(x_T / sqrt(abar)) = clip(x_T / 0.8),
    # and at t = 0 coef1 = 1, coef2 = 0, so the sample is clip(0.5 z / 0.8) = clip(0.625 z), z the first draw.
    net = SDACNoiseNet(2, 3, hidden=8, t_dim=4, time_hidden=4)
    with torch.no_grad():
        net.layer[-1].weight.zero_()
        net.layer[-1].bias.zero_()
    s = torch.randn(4, 2)
    torch.manual_seed(3)
    out = ddpm_sample(net, SCHEDULE, s, n_candidates=5, init_scale=0.5, factored=factored)
    torch.manual_seed(3)
    z = torch.randn(5 * 4, 3)
    expected = (0.625 * z).clamp(-1, 1).view(5, 4, 3).transpose(0, 1)   # rows candidate-major
    assert out.shape == (4, 5, 3) and torch.allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------- SDAC's actor loss


def test_reverse_sampling_candidates_by_hand():
    x0 = reverse_sampling_x0(SCHEDULE, A_T, torch.tensor([0]), EPS)
    assert torch.allclose(x0, X0, atol=1e-6)


def test_reverse_sampling_weights_from_a_toy_critic():
    # min(Q1, Q2) at the three x0: k0 min(0.25, 1.0) = 0.25; k1 min(-1.25, -0.5) = -1.25; k2 min(0.0, 2.0) = 0.0
    scores = ToyTwinQ().min_q(None, X0).squeeze(-1)
    assert scores.tolist() == [[0.25, -1.25, 0.0]]
    # alpha = 5, scale 5: logits = scores; e^0.25 = 1.2840254, e^-1.25 = 0.2865048, e^0 = 1, sum 2.5705302
    w = reverse_sampling_weights(scores, torch.tensor(5.0), 5.0)
    assert w[0].tolist() == pytest.approx([0.4995177, 0.1114575, 0.3890248], abs=1e-6)
    # alpha = 2.5: logits = 2 scores = (0.5, -2.5, 0): e^0.5 = 1.6487213, e^-2.5 = 0.0820850, 1; sum 2.7308063
    w = reverse_sampling_weights(scores, torch.tensor(2.5), 5.0)
    assert w[0].tolist() == pytest.approx([0.6037489, 0.0300589, 0.3661922], abs=1e-6)


def test_reverse_sampling_loss_by_hand():
    # eps_theta = (0.5, 0); squared errors to the eps_k summed over dims: k0 0.25 + 0 = 0.25; k1 0.25 + 1 = 1.25;
    # k2 2.25 + 4 = 6.25. With w = (0.5, 0.25, 0.25): 0.125 + 0.3125 + 1.5625 = 2.0, over K A = 6 entries: 1/3.
    loss = reverse_sampling_loss(torch.tensor([[0.5, 0.0]]), EPS, torch.tensor([[0.5, 0.25, 0.25]]))
    assert loss.item() == pytest.approx(1 / 3, abs=1e-6)


# --------------------------------------------------------------------------- DPMD's actor loss


def test_dpmd_weights_official_and_standardised():
    q, mean, std, alpha = torch.tensor([2.0, 0.5, -4.0]), torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.5)
    # official q - mean / std = q - 0.5 = (1.5, 0, -4.5) -> clip 3: (1.5, 0, -3) -> / 0.5: (3, 0, -6)
    w = dpmd_weights(q, mean, std, alpha, 3.0, "official")
    assert w.tolist() == pytest.approx([math.exp(3), 1.0, math.exp(-6)], rel=1e-6)   # 20.0855, 1, 0.0024788
    # standardised (q - 1) / 2 = (0.5, -0.25, -2.5) -> / 0.5: (1, -0.5, -5)
    w_std = dpmd_weights(q, mean, std, alpha, 3.0, "standardised")
    assert w_std.tolist() == pytest.approx([math.exp(1), math.exp(-0.5), math.exp(-5)], rel=1e-6)


def test_dpmd_weighted_denoising_loss_by_hand():
    # a net predicting eps_theta = 0, so each row's squared error is eps^2: rows (1, 0), (0, 2), (1, 1) give
    # (1 + 0), (0 + 4), (1 + 1). The loss is the mean over 3 rows x 2 dims of w_i eps^2:
    #   official weights (e^3, 1, e^-6):       (20.085537 + 4 + 2 * 0.0024788) / 6 = 4.0150824
    #   standardised (e^1, e^-0.5, e^-5):      (2.7182818 + 4 * 0.6065307 + 2 * 0.0067379) / 6 = 0.8596467
    q, mean, std, alpha = torch.tensor([2.0, 0.5, -4.0]), torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.5)
    eps = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    zero_net = lambda a_t, t, s: torch.zeros_like(a_t)  # noqa: E731
    actions, states, t = torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)
    for norm, expected in (("official", 4.0150824), ("standardised", 0.8596467)):
        w = dpmd_weights(q, mean, std, alpha, 3.0, norm)
        loss = weighted_eps_loss(zero_net, SCHEDULE, actions, states, w, t=t, eps=eps)
        assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_running_statistics_by_hand():
    # mean 0 + 0.001 (5 - 0) = 0.005; std 1 + 0.001 (3 - 1) = 1.002
    assert running_update(torch.tensor(0.0), torch.tensor(5.0), 0.001).item() == pytest.approx(0.005)
    assert running_update(torch.tensor(1.0), torch.tensor(3.0), 0.001).item() == pytest.approx(1.002)


# --------------------------------------------------------------------------- alpha and lr


def test_alpha_loss_by_hand():
    # alpha = 5, noise 0.1: std 0.5; H = 2/2 log(2 pi e 0.25) = log 4.2698671 = 1.4515827; H_target = -1.8
    # loss = -log 5 (-1.4515827 - 1.8) = 1.6094379 * 3.2515827 = 5.2332205; d/d log_alpha = H - H_target = 3.2515827
    assert gaussian_entropy(2, torch.tensor(0.5)).item() == pytest.approx(1.4515827, abs=1e-6)
    log_alpha = torch.tensor(math.log(5.0), requires_grad=True)
    loss = alpha_loss(log_alpha, 2, 0.1, -1.8)
    loss.backward()
    assert loss.item() == pytest.approx(5.2332205, abs=1e-5)
    assert log_alpha.grad.item() == pytest.approx(3.2515827, abs=1e-5)


def test_actor_lr_schedule_by_hand():
    # optax.linear_schedule(3e-4, 3e-5, 50000, 25000): flat to 25,000, then 2.7e-4 over 50,000 steps
    assert linear_decay_lr(3e-4, 3e-5, 0, 25000, 50000) == 3e-4
    assert linear_decay_lr(3e-4, 3e-5, 25000, 25000, 50000) == 3e-4
    assert linear_decay_lr(3e-4, 3e-5, 50000, 25000, 50000) == pytest.approx(1.65e-4)
    assert linear_decay_lr(3e-4, 3e-5, 10**6, 25000, 50000) == pytest.approx(3e-5)
    assert linear_decay_lr(3e-4, 3e-5, 10**6, 25000, 0) == 3e-4


# --------------------------------------------------------------------------- agents


TINY_SETTINGS = {"warmup_steps": 0, "batch_size": 4, "diffusion_steps": 3, "hidden": 16, "t_dim": 4,
                 "time_hidden": 8, "critic_hidden": [8], "n_particles": 3, "update_every": 1}


def tiny(cls, **overrides):
    settings = resolve(cls.Settings, {**TINY_SETTINGS, **overrides})
    agent = cls(3, 2, settings, torch.device("cpu"), total_steps=100, seed=0)
    rng = np.random.default_rng(1)
    for _ in range(8):
        agent.observe(Transition(rng.normal(size=(1, 3)), rng.uniform(-1, 1, (1, 2)).astype(np.float32),
                                 np.ones(1), rng.normal(size=(1, 3)), np.zeros(1, bool), np.zeros(1, bool)))
    return agent


def test_best_of_n_picks_the_largest_min_q_and_adds_alpha_noise():
    agent = tiny(SDAC)
    agent.critic = ToyTwinQ()
    # state 0: min Q of X0's candidates (0.25, -1.25, 0) -> index 0;
    # state 1: (0.1, 0.9): min(1.0, 0.2) = 0.2; (0.3, 0): min(0.3, 0.6) = 0.3; (-1, 1): min(0, -2) = -2 -> index 1
    candidates = torch.cat([X0, torch.tensor([[[0.1, 0.9], [0.3, 0.0], [-1.0, 1.0]]])])
    used = []
    agent.sample = lambda actor, states, k: used.append((actor, k)) or candidates
    best = torch.tensor([[0.5, -0.25], [0.3, 0.0]])
    assert torch.equal(agent.act(torch.zeros(2, 3), "evaluate"), best)
    # exploring adds exp(log_alpha) * 0.1 * z = 0.5 z (alpha 5), not clipped
    torch.manual_seed(0)
    explored = agent.act(torch.zeros(2, 3), "explore")
    torch.manual_seed(0)
    assert torch.allclose(explored, best + 0.5 * torch.randn(2, 2))
    assert all(actor is agent.actor_target and k == 3 for actor, k in used)   # the target actor acts, best of 3
    agent.cfg.act_with_target_actor = False
    agent.act(torch.zeros(2, 3), "evaluate")
    assert used[-1][0] is agent.actor


def test_updates_come_every_update_every_steps_after_warmup():
    agent = tiny(SDAC, warmup_steps=100, update_every=5)
    agent.train_step = lambda batch, step: {"q_loss": 1.0}
    assert [bool(agent.update(step)) for step in range(99, 112)] == \
        [False] * 6 + [True] + [False] * 4 + [True] + [False]    # steps 105 and 110
    assert agent.n_updates == 2


@pytest.mark.parametrize("cls", [SDAC, DPMD])
def test_actor_every_second_update_and_alpha_every_250(cls):
    agent = tiny(cls)
    log_alpha0 = agent.log_alpha.item()
    snapshot = lambda m: [p.detach().clone() for p in m.parameters()]  # noqa: E731
    changed = lambda before, m: any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))  # noqa: E731
    actor, critic, target = snapshot(agent.actor), snapshot(agent.critic), snapshot(agent.actor_target)
    first = agent.update(1)                                               # update 0: actor, alpha, targets
    assert "actor_loss" in first and changed(actor, agent.actor) and changed(critic, agent.critic)
    assert changed(target, agent.actor_target)
    # alpha 5, act_dim 2: H = 1.4515827 > H_target -1.8, so Adam's first step lowers log alpha by lr = 7e-3
    assert agent.log_alpha.item() == pytest.approx(log_alpha0 - 7e-3, abs=1e-6)
    actor, target, log_alpha1 = snapshot(agent.actor), snapshot(agent.actor_target), agent.log_alpha.item()
    second = agent.update(2)                                              # update 1: the critic only
    assert "actor_loss" not in second and not changed(actor, agent.actor) and not changed(target, agent.actor_target)
    assert agent.log_alpha.item() == log_alpha1
    critic_steps = agent.critic_optimizer.state[next(agent.critic.parameters())]["step"].item()
    assert critic_steps == (4 if cls is DPMD else 2)                       # DPMD steps each gradient twice


def test_dpmd_single_critic_step_and_running_statistics():
    agent = tiny(DPMD, repeat_critic_step=False)
    out = agent.update(1)
    assert agent.critic_optimizer.state[next(agent.critic.parameters())]["step"].item() == 1
    # one EMA step from (0, 1) towards the batch's statistics
    assert agent.running_mean.item() == pytest.approx(0.001 * out["q_mean"].item(), abs=1e-7)
    assert "running_mean" in agent.counters() and "running_std" in agent.counters()


def test_bad_settings_are_user_errors():
    for cls, overrides, name in ((SDAC, {"t_dim": 5}, "t_dim"), (SDAC, {"reverse_mc": 0}, "reverse_mc"),
                                 (SDAC, {"update_every": 0}, "update_every"),
                                 (DPMD, {"q_normalisation": "z"}, "q_normalisation"),
                                 (DPMD, {"running_rate": 0.0}, "running_rate")):
        with pytest.raises(UserError, match=name):
            resolve(cls.Settings, overrides)
    assert isinstance(resolve(DPMDSettings, {}), DPMDSettings)


@pytest.mark.parametrize("algo", ["sdac", "dpmd"])
def test_cli_run(algo, tmp_path: Path):
    run = tmp_path / algo
    result = run_cli(tiny_args(algo, run, steps=400))
    assert result.returncode == 0, result.stderr
    assert [r["step"] for r in read_csv(run / "eval.csv")] == ["200", "400"]
    losses = [r["actor_loss"] for r in read_csv(run / "train.csv") if r["actor_loss"]]
    assert losses and all(math.isfinite(float(x)) for x in losses)
