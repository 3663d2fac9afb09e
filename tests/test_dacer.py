"""DACER's schedule, chain gradient, critic targets and loss, temperature and acting against values worked out
by hand, and one short `qvpo train` run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qvpo.algos.dacer import (DACER, DACER_ENV_SETTINGS, DACERSettings, denoise_chain, dsac_critic_loss,
                              gmm_entropy, noisy_action, running_mean_std, td_targets)
from qvpo.diffusion import DiffusionSchedule, discrete_vp_beta_schedule, temperature_loss
from qvpo.settings import resolve

from conftest import read_csv, run_cli, tiny_args

# --------------------------------------------------------------------------- VP schedule


def test_vp_schedule_by_hand():
    # T = 2, beta_min 0.1, beta_max 10: alpha_t = exp(-0.1/2 - 0.5 * 9.9 * (2t - 1) / 4)
    #   t = 1: exp(-0.05 - 1.2375) = exp(-1.2875) = 0.2759598...; beta_1 = 0.7240402
    #   t = 2: exp(-0.05 - 3.7125) = exp(-3.7625) = 0.0232256...; beta_2 = 0.9767744
    betas = discrete_vp_beta_schedule(2)
    assert betas.dtype == torch.float32
    assert betas.tolist() == pytest.approx([1 - math.exp(-1.2875), 1 - math.exp(-3.7625)], abs=1e-7)
    assert betas.tolist() == pytest.approx([0.7240402, 0.9767744], abs=1e-6)
    # abar_T = exp(sum of exponents) = exp(-T beta_min/T - 9.9/2 * sum(2t-1)/T^2) = exp(-0.1 - 4.95), any T
    for T in (1, 2, 3, 20):
        abar = DiffusionSchedule(discrete_vp_beta_schedule(T)).alphas_cumprod[-1].item()
        assert abar == pytest.approx(math.exp(-5.05), rel=1e-5)
    # T = 3: exponents -0.1/3 - 4.95 (2t-1)/9 = -0.0333 - 0.55, -0.0333 - 1.65, -0.0333 - 2.75
    assert discrete_vp_beta_schedule(3).tolist() == pytest.approx(
        [1 - math.exp(-0.1 / 3 - 0.55), 1 - math.exp(-0.1 / 3 - 1.65), 1 - math.exp(-0.1 / 3 - 2.75)], abs=1e-7)


# --------------------------------------------------------------------------- actor loss through the chain


class ConstantDenoiser(nn.Module):
    """eps_theta(x, t, s) = theta for every input: d eps / d theta = 1."""

    act_dim = 1

    def __init__(self, theta: float):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta))

    def forward(self, a_t, t, s):
        return self.theta.expand_as(a_t)


class LinearDistTwinQ(nn.Module):
    """Critic means Q_i(s, a) = w_i a + c_i (std 1): the actor loss only reads the means."""

    def __init__(self, w1, c1, w2, c2):
        super().__init__()
        self.w = (w1, w2)
        self.c = (c1, c2)

    def min_q(self, obs, act):
        return torch.min(self.w[0] * act + self.c[0], self.w[1] * act + self.c[1])


def test_actor_loss_gradient_through_a_two_step_chain():
    # T = 2: a1 = exp(-1.2875), a2 = exp(-3.7625); abar1 = a1, abar2 = a1 a2 = exp(-5.05).
    # Step t = 1 from x_2 = 0 (z = 0): x0 = clip(x_2 / sqrt(abar2) - sqrt(1/abar2 - 1) theta)
    #   = -sqrt(1/abar2 - 1) theta; x_1 = coef1_1 x0, coef1_1 = beta2 sqrt(abar1) / (1 - abar2).
    # Step t = 0: coef1_0 = beta1 / (1 - abar1) = 1, coef2_0 = 0:
    #   out = clip(x_1 / sqrt(abar1) - sqrt(1/abar1 - 1) theta).
    # So out = k theta, k = -coef1_1 sqrt(1/abar2 - 1) / sqrt(abar1) - sqrt(1/abar1 - 1) (no clip active).
    a1, a2 = math.exp(-1.2875), math.exp(-3.7625)
    abar1, abar2 = a1, a1 * a2
    coef1_1 = (1 - a2) * math.sqrt(abar1) / (1 - abar2)
    k = -coef1_1 * math.sqrt(1 / abar2 - 1) / math.sqrt(abar1) - math.sqrt(1 / abar1 - 1)
    assert k == pytest.approx(-13.8599, abs=1e-4)   # -(0.516428 * 12.450802 / 0.525319 + 1.619789)
    theta = 0.001
    policy = ConstantDenoiser(theta)
    schedule = DiffusionSchedule(discrete_vp_beta_schedule(2))
    out = denoise_chain(policy, schedule, torch.zeros(1, 3), x=torch.zeros(1, 1), noise=torch.zeros(2, 1, 1))
    assert out.item() == pytest.approx(k * theta, rel=1e-4)            # -0.0138599
    # noisy action with z = 0.5, log_alpha = ln 2, lambda = 0.1: + 2 * 0.1 * 0.5 = +0.1
    a = noisy_action(out, torch.tensor([math.log(2.0)]), 0.1, z=torch.full_like(out, 0.5))
    assert a.item() == pytest.approx(k * theta + 0.1, rel=1e-4)
    # Q1 = 2a - 1, Q2 = -3a + 1: at a = 0.0861401, Q1 = -0.82772 < Q2 = 0.74158, so loss = -(2a - 1), dL/dtheta = -2 k
    critic = LinearDistTwinQ(2.0, -1.0, -3.0, 1.0)
    loss = -critic.min_q(None, a).mean()
    loss.backward()
    assert loss.item() == pytest.approx(-(2 * (k * theta + 0.1) - 1), rel=1e-5)
    assert policy.theta.grad.item() == pytest.approx(-2 * k, rel=1e-4)  # 27.7197


def test_the_final_clip_stops_the_gradient():
    # out = k theta with k = -13.8599; theta = 1 gives -13.9, clipped at the last step: no gradient reaches theta
    policy = ConstantDenoiser(1.0)
    schedule = DiffusionSchedule(discrete_vp_beta_schedule(2))
    out = denoise_chain(policy, schedule, torch.zeros(1, 3), x=torch.zeros(1, 1), noise=torch.zeros(2, 1, 1))
    assert out.item() == -1.0
    out.sum().backward()
    assert policy.theta.grad.item() == 0.0


# --------------------------------------------------------------------------- critic


def test_td_targets_take_the_lower_mean_and_clip_z():
    # row 0: m1 = 1 < m2 = 3, so the sample is critic 1's: 1 + 2 clip(5, -3, 3) = 7;
    #        y = 0.5 + 0.5 * min(1, 3) = 1.0, y_s = 0.5 + 0.5 * 7 = 4.0
    # row 1: m1 = 4 > m2 = 2, critic 2's: 2 + 1 * (-0.5) = 1.5; y = 0.5 + 0.5 * 2 = 1.5, y_s = 0.5 + 0.75 = 1.25
    # row 2: terminated: y = y_s = r = 0.5
    reward = torch.full((3, 1), 0.5)
    terminated = torch.tensor([[0.0], [0.0], [1.0]])
    heads = [(torch.tensor([[1.0], [4.0], [1.0]]), torch.tensor([[2.0], [1.0], [1.0]])),
             (torch.tensor([[3.0], [2.0], [2.0]]), torch.tensor([[1.0], [1.0], [1.0]]))]
    z = torch.tensor([[[5.0], [0.0], [1.0]], [[0.0], [-0.5], [1.0]]])
    y, y_s = td_targets(reward, terminated, 0.5, heads, z, 3.0)
    assert y.flatten().tolist() == pytest.approx([1.0, 1.5, 0.5])
    assert y_s.flatten().tolist() == pytest.approx([4.0, 1.25, 0.5])


def test_critic_loss_bounds_the_sampled_target():
    # m = 0, s = 1, y = 1, y_s = 4, b = 0.5, bound 3 -> y_s bounded to 0 + clip(4, -1.5, 1.5) = 1.5; eps = 0.1:
    # loss = -(0.25 + 0.1) * (0 * 1 / 1.1 + 1 * ((0 - 1.5)^2 - 1) / (1 + 0.1)) = -0.35 * 1.25 / 1.1 = -0.3977273
    # dL/dm = -0.35 * (y - m) / (s^2 + eps) = -0.35 / 1.1 = -0.3181818; dL/ds = -0.35 * 1.25 / 1.1
    mean = torch.zeros(1, 1, requires_grad=True)
    std = torch.ones(1, 1, requires_grad=True)
    loss = dsac_critic_loss(mean, std, torch.ones(1, 1), torch.full((1, 1), 4.0), torch.tensor(0.5), 3.0, 0.1)
    assert loss.item() == pytest.approx(-0.35 * 1.25 / 1.1)
    loss.backward()
    assert mean.grad.item() == pytest.approx(-0.35 / 1.1)
    assert std.grad.item() == pytest.approx(-0.35 * 1.25 / 1.1)
    # without the bound (b large) the sampled target counts in full: ((0 - 4)^2 - 1) / 1.1 = 13.636...
    loose = dsac_critic_loss(torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), torch.full((1, 1), 4.0),
                             torch.tensor(10.0), 3.0, 0.1)
    assert loose.item() == pytest.approx(-(100 + 0.1) * 15 / 1.1)
    # below the mean: y_s = -4 is bounded to -1.5 the same way
    low = dsac_critic_loss(torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), torch.full((1, 1), -4.0),
                           torch.tensor(0.5), 3.0, 0.1)
    assert low.item() == pytest.approx(-0.35 * 1.25 / 1.1)


def test_running_mean_std():
    # first update (sentinel -1): the batch's mean std (1 + 2) / 2 = 1.5; then 0.1 * 1.5 + 0.9 * 0.5 = 0.6
    std = torch.tensor([[1.0], [2.0]])
    assert running_mean_std(torch.tensor(-1.0), std, 0.1).item() == pytest.approx(1.5)
    assert running_mean_std(torch.tensor(0.5), std, 0.1).item() == pytest.approx(0.6)


# --------------------------------------------------------------------------- entropy and temperature


def test_alpha_loss_sign_and_gradient():
    # log_alpha = ln 3, H = -1, H_target = -2.7: loss = -ln3 (1 - 2.7) = 1.7 ln 3; d/dlog_alpha = H - H_target = 1.7
    log_alpha = torch.tensor([math.log(3.0)], requires_grad=True)
    loss = temperature_loss(log_alpha, -1.0, -2.7)
    assert loss.item() == pytest.approx(1.7 * math.log(3.0))
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(1.7)
    # entropy below target: the gradient is negative, so gradient descent raises alpha
    log_alpha.grad = None
    temperature_loss(log_alpha, -5.0, -2.7).backward()
    assert log_alpha.grad.item() == pytest.approx(-2.3)


def test_gmm_entropy_of_three_separated_clusters():
    # three clusters at -0.5, 0, 0.5, std 0.01, equal weights, d = 1:
    # H = -sum w log w + sum w (0.5 (1 + log 2 pi) + log sigma) = ln 3 + 1.4189385 + ln 0.01 = -2.0876786
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.01, size=(1000, 1)) for c in (-0.5, 0.0, 0.5)]).astype(np.float32)
    h = gmm_entropy(np.stack([x, x]), 3)
    assert h == pytest.approx(math.log(3) + 0.5 * (1 + math.log(2 * math.pi)) + math.log(0.01), abs=0.02)


def tiny_agent(**overrides) -> DACER:
    sets = {"warmup_steps": 0, "batch_size": 4, "diffusion_steps": 2, "hidden": [8], "time_dim": 4,
            "critic_hidden": [8], "entropy_samples": 4, **overrides}
    torch.manual_seed(0)
    agent = DACER(3, 2, resolve(DACERSettings, sets), torch.device("cpu"), 100, 0)
    rng = np.random.default_rng(0)
    for _ in range(8):
        agent.replay.add(obs=rng.normal(size=(1, 3)).astype(np.float32),
                         action=rng.uniform(-1, 1, (1, 2)).astype(np.float32), reward=np.ones((1, 1), np.float32),
                         next_obs=rng.normal(size=(1, 3)).astype(np.float32),
                         terminated=np.zeros((1, 1), np.float32), truncated=np.zeros((1, 1), np.float32))
    return agent


def test_alpha_steps_only_on_refit_updates_given_a_known_entropy(monkeypatch):
    # H = 0 > H_target = -0.9 * 2 = -1.8: gradient +1.8, a fresh Adam moves lr g / (|g| + 1e-8) = 0.03 down,
    # on steps 0 and 2 (alpha_every = 2) only; a constant gradient keeps Adam's move at lr.
    agent = tiny_agent(alpha_every=2)
    monkeypatch.setattr(DACER, "estimate_entropy", lambda self, states: 0.0)
    ln3 = math.log(3.0)
    values = []
    for step in range(1, 4):
        metrics = agent.update(step)
        values.append(agent.log_alpha.item())
        assert metrics["entropy"] == 0.0
    assert values == pytest.approx([ln3 - 0.03, ln3 - 0.03, ln3 - 0.06], abs=1e-6)
    assert metrics["alpha"].item() == pytest.approx(math.exp(ln3 - 0.06), rel=1e-6)


def test_actor_and_targets_update_every_second_update():
    agent = tiny_agent(alpha_every=1000)
    before = [p.detach().clone() for p in agent.actor.parameters()]
    target = [p.detach().clone() for p in agent.critic_target.parameters()]
    assert "actor_loss" in agent.update(1)                     # step 0: actor and targets move
    moved = [p.detach().clone() for p in agent.actor.parameters()]
    moved_target = [p.detach().clone() for p in agent.critic_target.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))
    assert any(not torch.equal(a, b) for a, b in zip(target, moved_target))
    assert "actor_loss" not in agent.update(2)                 # step 1: critics only
    assert all(torch.equal(a, b.detach()) for a, b in zip(moved, agent.actor.parameters()))
    assert all(torch.equal(a, b.detach()) for a, b in zip(moved_target, agent.critic_target.parameters()))


# --------------------------------------------------------------------------- acting


def test_noisy_action_by_hand():
    # chain 0.2, alpha = exp(ln 2) = 2, lambda 0.15: z = 1 -> 0.2 + 0.3 = 0.5; z = -10 -> 0.2 - 3 = -2.8, clipped to -1
    out = noisy_action(torch.tensor([[0.2, 0.2]]), torch.tensor([math.log(2.0)]), 0.15, z=torch.tensor([[1.0, -10.0]]))
    assert out[0].tolist() == pytest.approx([0.5, -1.0])


def test_act_adds_scaled_noise_when_exploring_and_none_when_evaluating():
    agent = tiny_agent(noise_scale=0.1)
    with torch.no_grad():
        agent.log_alpha.fill_(math.log(0.5))                      # exp(log_alpha) lambda = 0.05
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    explore = agent.act(obs, "explore")
    torch.manual_seed(1)
    with torch.no_grad():
        chain = denoise_chain(agent.actor, agent.schedule, obs)
        z = torch.randn_like(chain)
    assert torch.allclose(explore, (chain + 0.05 * z).clamp(-1, 1))
    torch.manual_seed(1)
    assert torch.equal(agent.act(obs, "evaluate"), chain.clamp(-1, 1))
    # a huge alpha saturates the exploring actions at the bounds; evaluation is unchanged
    with torch.no_grad():
        agent.log_alpha.fill_(10.0)
    torch.manual_seed(1)
    assert agent.act(obs, "explore").abs().eq(1.0).all()
    torch.manual_seed(1)
    assert torch.equal(agent.act(obs, "evaluate"), chain.clamp(-1, 1))


def test_env_settings_and_validation():
    assert DACER.env_settings("Humanoid-v5") == {"noise_scale": 0.15, "warmup_steps": 200_000}
    assert DACER.env_settings("HalfCheetah-v5") == DACER_ENV_SETTINGS["HalfCheetah"]
    assert DACER.env_settings("Hopper-v5") == {"noise_scale": 0.1, "warmup_steps": 30_000}
    c = DACERSettings()
    assert (c.diffusion_steps, c.actor_lr, c.critic_lr, c.alpha_lr, c.reward_scale) == (20, 1e-4, 1e-4, 3e-2, 0.2)
    assert c.log_alpha_init == pytest.approx(math.log(3)) and c.hidden == [256, 256, 256]
    from qvpo.errors import UserError
    with pytest.raises(UserError, match="entropy_samples"):
        resolve(DACERSettings, {"entropy_samples": 2})


# --------------------------------------------------------------------------- CLI


def test_train_cli_short_run(tmp_path):
    run = tmp_path / "run"
    result = run_cli(tiny_args("dacer", run, steps=400))
    assert result.returncode == 0, result.stderr
    rows = read_csv(run / "train.csv")
    assert rows and {"alpha", "entropy", "q_loss"} <= set(rows[0])
    alphas = {round(float(r["alpha"]), 6) for r in rows if r.get("alpha")}
    assert alphas and all(math.isfinite(a) for a in alphas)
    assert read_csv(run / "eval.csv")


def test_gmm_entropy_of_non_finite_actions_is_nan():
    actions = np.zeros((2, 8, 2), np.float32)
    actions[1, 3, 0] = np.nan
    assert math.isnan(gmm_entropy(actions, 3))
