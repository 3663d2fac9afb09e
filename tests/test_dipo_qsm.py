"""DIPO's action gradient and QSM's score target, schedule and sampler against values worked out by hand."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from qvpo.algos.dipo import DIPO, DIPO_ENV_SETTINGS, DIPOSettings, improve_actions
from qvpo.algos.qsm import (QSM, FourierFeatures, QSMSettings, cosine_decay_lr, q_score_target, vp_beta_schedule,
                            vp_sample, vp_step)
from qvpo.diffusion import DiffusionSchedule
from qvpo.envs import Transition
from qvpo.errors import UserError
from qvpo.settings import resolve


class LinearTwinQ(nn.Module):
    """Q1(s, a) = a . w1 and Q2(s, a) = a . w2: grad_a Q_i = w_i everywhere."""

    def __init__(self, w1, w2):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(w1))
        self.w2 = nn.Parameter(torch.tensor(w2))

    def forward(self, s, a):
        return (a * self.w1).sum(-1, keepdim=True), (a * self.w2).sum(-1, keepdim=True)

    def min_q(self, s, a):
        return torch.min(*self(s, a))


# --------------------------------------------------------------------------- DIPO

W = [3.0, 4.0]          # grad of -sum Q is -W per row; over B = 2 rows its norm is sqrt(2 * 25) = 5 sqrt(2)
START = torch.tensor([[0.0, 0.99], [-0.5, 0.3]])


def adam_move(g: float, lr: float, eps: float) -> float:
    """A fresh Adam's step on a constant gradient g: m_hat = g, v_hat = g^2, so every step moves lr g / (|g| + eps)."""
    return lr * g / (abs(g) + eps)


def test_action_gradient_clips_the_norm_of_the_whole_batch():
    # max_norm = act_dim * ratio = 2 * 0.5 = 1: every gradient entry scaled by k = 1 / (5 sqrt 2).
    # eps = 1 makes the clip visible in Adam's step: dim 0 moves 0.03 * 3k / (3k + 1), dim 1 0.03 * 4k / (4k + 1).
    k = 1.0 / (5 * math.sqrt(2) + 1e-6)  # clip_grad_norm_ divides by (norm + 1e-6)
    out = improve_actions(LinearTwinQ(W, W), torch.zeros(2, 1), START, steps=1, lr=0.03, eps=1.0, max_norm=1.0)
    move = torch.tensor([adam_move(3 * k, 0.03, 1.0), adam_move(4 * k, 0.03, 1.0)])
    assert move.tolist() == pytest.approx([0.0089365, 0.0108391], abs=1e-7)
    assert torch.allclose(out, (START + move).clamp(-1, 1), atol=1e-7)   # 0.99 + 0.0108 is clamped to 1
    # without the clip the raw gradient (3, 4) moves further
    unclipped = improve_actions(LinearTwinQ(W, W), torch.zeros(2, 1), START, 1, 0.03, 1.0, max_norm=0.0)
    raw_move = torch.tensor([adam_move(3, 0.03, 1.0), adam_move(4, 0.03, 1.0)])   # 0.0225, 0.024
    assert torch.allclose(unclipped, (START + raw_move).clamp(-1, 1))


def test_action_gradient_ascends_min_q_and_clamps_each_step():
    # Q1 = a.(3, 4), Q2 = a.(1, -1): Q1 - Q2 = a.(2, 5) > 0 for these actions all along, so Q2 is the min and
    # each step moves (+0.03, -0.03) (eps 1e-5 is negligible against |g| = 1).
    critic = LinearTwinQ([3.0, 4.0], [1.0, -1.0])
    out = improve_actions(critic, torch.zeros(2, 1), START, steps=2, lr=0.03, eps=1e-5, max_norm=0.0)
    step = adam_move(1.0, 0.03, 1e-5)
    assert torch.allclose(out, START + 2 * torch.tensor([step, -step]), atol=1e-6)
    up = improve_actions(LinearTwinQ(W, W), torch.zeros(2, 1), START, steps=2, lr=0.03, eps=1e-5, max_norm=0.0)
    # ascending (3, 4) instead: 0.99 + 0.03 is clamped to 1 and stays there
    assert up[0].tolist() == pytest.approx([0.06, 1.0], abs=1e-5) and up[0, 1].item() == 1.0
    assert up[1].tolist() == pytest.approx([-0.44, 0.36], abs=1e-5)


def test_action_gradient_leaves_the_critic_gradients_alone():
    critic = LinearTwinQ(W, W)
    improve_actions(critic, torch.zeros(2, 1), START, steps=3, lr=0.03, eps=1e-5, max_norm=1.0)
    assert critic.w1.grad is None and critic.w2.grad is None


def tiny_dipo(write_back: bool) -> DIPO:
    settings = DIPOSettings(warmup_steps=0, batch_size=4, diffusion_steps=3, hidden=16, t_dim=4, critic_hidden=[8],
                            action_gradient_steps=2, action_grad_ratio=0.0, memory_write_back=write_back)
    agent = DIPO(3, 2, settings, torch.device("cpu"), total_steps=8, seed=0)
    # a linear critic that the critic step cannot move (lr 0), so the improvement is known by hand
    agent.critic = LinearTwinQ(W, W)
    agent.critic_target = copy.deepcopy(agent.critic)
    agent.critic_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=0.0)
    rng = np.random.default_rng(1)
    for _ in range(6):
        action = rng.uniform(-0.5, 0.5, (1, 2)).astype(np.float32)
        agent.observe(Transition(rng.normal(size=(1, 3)), action, np.ones(1), rng.normal(size=(1, 3)),
                                 np.zeros(1, bool), np.zeros(1, bool)))
    return agent


@pytest.mark.parametrize("write_back", [True, False])
def test_dipo_writes_improved_actions_back_into_the_replay_column(write_back):
    agent = tiny_dipo(write_back)
    batch = agent.replay.sample(4)
    rng_state = copy.deepcopy(agent.replay.rng.bit_generator.state)
    before = {k: agent.replay.data[k][:6].copy() for k in ("action", "memory_action")}
    assert np.array_equal(before["action"], before["memory_action"])   # the memory starts as the executed actions
    agent.n_updates = 1
    agent.train_step(batch, 1)
    replay_rng = np.random.default_rng()
    replay_rng.bit_generator.state = rng_state
    idx = replay_rng.integers(0, 6, size=4)                           # the memory's own draw of rows
    memory = agent.replay.data["memory_action"][:6]
    assert np.array_equal(agent.replay.data["action"][:6], before["action"])
    if not write_back:  # the authors' code: their write is a no-op
        assert np.array_equal(memory, before["memory_action"])
        return
    step = adam_move(3.0, 0.03, 1e-5), adam_move(4.0, 0.03, 1e-5)
    expected = before["memory_action"].copy()
    expected[idx] = np.clip(before["memory_action"][idx] + 2 * np.array(step, dtype=np.float32), -1, 1)
    assert np.allclose(memory, expected, atol=1e-6)
    untouched = np.setdiff1d(np.arange(6), idx)
    assert np.array_equal(memory[untouched], before["memory_action"][untouched])


def test_dipo_env_table_is_the_readme_and_resolves_as_settings():
    assert DIPO.env_settings("HalfCheetah-v5") == {"grad_clip": 2.0, "action_grad_ratio": 0.08,
                                              "action_gradient_steps": 40, "actor_target_every": 2}
    assert DIPO.env_settings("Hopper-v5")["action_grad_ratio"] == 0.3 and DIPO.env_settings("InvertedPendulum-v5") == {}
    for overrides in DIPO_ENV_SETTINGS.values():
        assert all(getattr(resolve(DIPOSettings, overrides), k) == v for k, v in overrides.items())


def test_dipo_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="t_dim"):
        resolve(DIPOSettings, {"t_dim": 5})
    with pytest.raises(UserError, match="action_gradient_steps"):
        resolve(DIPOSettings, {"action_gradient_steps": -1})


# --------------------------------------------------------------------------- QSM


def test_q_score_target_is_minus_mq_times_the_mean_critic_gradient():
    # grad Q1 = (1, 2), grad Q2 = (3, -2): mean (2, 0); target -50 * (2, 0)
    critic = LinearTwinQ([1.0, 2.0], [3.0, -2.0])
    target = q_score_target(critic, torch.zeros(2, 1), torch.randn(2, 2), 50.0)
    assert target.tolist() == [[-100.0, 0.0], [-100.0, 0.0]]
    assert not target.requires_grad and critic.w1.grad is None


class Bowls(nn.Module):
    """Q1 = -|a - 1|^2, Q2 = -|a + 1|^2: grads -2(a - 1) and -2(a + 1), mean -2a, which depends on where it is taken."""

    def forward(self, s, a):
        return -((a - 1) ** 2).sum(-1, keepdim=True), -((a + 1) ** 2).sum(-1, keepdim=True)


def test_q_score_target_is_taken_at_the_noisy_action():
    a_t = torch.tensor([[0.5, -0.25]], requires_grad=True)
    target = q_score_target(Bowls(), torch.zeros(1, 1), a_t, 50.0)   # -50 * (-2 a_t) = 100 a_t
    assert target.tolist() == [[50.0, -25.0]]
    assert a_t.grad is None


def test_vp_beta_schedule():
    # T = 5: alpha_t = exp(-0.1/5 - 0.5 * 9.9 * (2t - 1) / 25) = exp(-0.02 - 0.198 (2t - 1))
    betas = vp_beta_schedule(5, 0.1, 10.0)
    expected = [1 - math.exp(-0.02 - 0.198 * (2 * t - 1)) for t in range(1, 6)]
    assert betas.tolist() == pytest.approx(expected, rel=1e-6)
    assert betas[0].item() == pytest.approx(0.195875, abs=1e-6) and betas[4].item() == pytest.approx(0.835031, abs=1e-6)
    # abar of the whole chain = exp(-0.1 - 0.198 * 25) = exp(-5.05)
    assert DiffusionSchedule(betas).alphas_cumprod[-1].item() == pytest.approx(math.exp(-5.05), rel=1e-5)


# betas (0.5, 0.75): alphas (0.5, 0.25), abar (0.5, 0.125)
TWO_STEPS = DiffusionSchedule(torch.tensor([0.5, 0.75]))


def test_vp_step_at_t1_adds_sqrt_beta_noise_and_clips_x():
    # (0.5 - 0.75 / sqrt(0.875) * 0.2) / sqrt(0.25) + sqrt(0.75) * 1 = 0.679286 + 0.866025 = 1.545311
    x, eps, z = torch.tensor([[0.5]]), torch.tensor([[0.2]]), torch.tensor([[1.0]])
    assert vp_step(TWO_STEPS, x, eps, 1, z, 1.0, clip=False).item() == pytest.approx(1.545311, abs=1e-6)
    assert vp_step(TWO_STEPS, x, eps, 1, z, 1.0, clip=True).item() == 1.0
    # temperature scales only the noise: 0.679286 + 0.2 * 0.866025
    assert vp_step(TWO_STEPS, x, eps, 1, z, 0.2, clip=False).item() == pytest.approx(0.852491, abs=1e-6)


def test_vp_step_at_t0_has_no_noise():
    # (0.3 + 0.5 / sqrt(0.5) * 0.4) / sqrt(0.5) = 0.582843 / 0.707107 = 0.824264; z is ignored
    out = vp_step(TWO_STEPS, torch.tensor([[0.3]]), torch.tensor([[-0.4]]), 0, torch.tensor([[5.0]]), 1.0, True)
    assert out.item() == pytest.approx(0.824264, abs=1e-6)


class ZeroNet(nn.Module):
    act_dim = 2

    def forward(self, a_t, t, s):
        return torch.zeros_like(a_t)


def test_vp_sample_without_noise_divides_by_sqrt_alpha_each_step():
    # eps = 0 and temperature 0: x_0 = x_T / sqrt(alpha_1 alpha_0) = x_T / sqrt(0.125), clipped only at the end
    torch.manual_seed(3)
    x_T = torch.randn(4, 2)
    torch.manual_seed(3)
    out = vp_sample(ZeroNet(), TWO_STEPS, torch.zeros(4, 1), temperature=0.0, clip=False)
    assert torch.allclose(out, (x_T / math.sqrt(0.125)).clamp(-1, 1))


def test_fourier_features_take_the_raw_step_index():
    ff = FourierFeatures(2, 0.2)
    with torch.no_grad():
        ff.kernel.fill_(0.25)                    # f = 2 pi t / 4: t = 1 -> pi/2, t = 2 -> pi
    out = ff(torch.tensor([1, 2]))
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0, -1.0, 0.0], abs=1e-6)   # [cos, sin] per row


@pytest.mark.parametrize("count,expected", [(0, 3e-4), (500, 1.5e-4), (1000, 0.0), (1500, 0.0)])
def test_actor_lr_cosine_decay(count, expected):
    assert cosine_decay_lr(3e-4, count, 1000) == pytest.approx(expected, abs=1e-12)


def test_actor_lr_is_half_way_at_1m_of_2m_updates_and_constant_without_decay():
    assert cosine_decay_lr(3e-4, 1_000_000, 2_000_000) == pytest.approx(1.5e-4)
    assert cosine_decay_lr(3e-4, 123, 0) == 3e-4


def test_qsm_explores_with_gaussian_noise_and_evaluates_without():
    settings = QSMSettings(diffusion_steps=2, hidden=[8], time_dim=4, time_hidden=[4], critic_hidden=[8],
                           sampler_temperature=0.0)
    agent = QSM(3, 2, settings, torch.device("cpu"), total_steps=10, seed=0)
    obs = torch.randn(5, 3)
    torch.manual_seed(0)
    plain = agent.act(obs, "evaluate")
    torch.manual_seed(0)
    explore = agent.act(obs, "explore")
    torch.manual_seed(0)
    assert torch.equal(agent.act(obs, "policy"), plain)
    noise = torch.randn(5, 2) * 0.1            # drawn after the sampler's own draws (x_T and one per step)
    assert torch.allclose(explore, (plain + noise).clamp(-1, 1))
    assert plain.abs().max() <= 1 and explore.abs().max() <= 1


def test_qsm_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="time_dim"):
        resolve(QSMSettings, {"time_dim": 7})
    with pytest.raises(UserError, match="sampling_actor_tau"):
        resolve(QSMSettings, {"sampling_actor_tau": 0.0})
