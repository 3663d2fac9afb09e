"""SAC's and TD3's math against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qvpo.algos.sac import SAC, SACSettings, soft_target, temperature_loss
from qvpo.algos.td3 import TD3, TD3Settings, smoothed_target_action
from qvpo.envs import Transition
from qvpo.nets import soft_update

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def t(x):
    return torch.tensor(x, dtype=torch.float32, device=DEVICE).reshape(-1, 1)


def test_sac_soft_target():
    # y0 = 1 + 0.9 * (min(2, 1.5) - 0.5 * (-1)) = 1 + 0.9 * 2.0 = 2.8 ; y1 terminated: 0.5
    y = soft_target(t([1.0, 0.5]), t([0.0, 1.0]), 0.9, t([2.0, 3.0]), t([1.5, 4.0]), t([-1.0, 0.2]), 0.5)
    assert y.flatten().tolist() == pytest.approx([2.8, 0.5])


def test_sac_temperature_loss_and_gradient():
    # alpha = 2, target entropy -2: -2 * (-1 - 2) = 6 and -2 * (-3 - 2) = 10, mean 8.
    log_alpha = torch.tensor([math.log(2.0)], requires_grad=True)
    loss = temperature_loss(log_alpha, t([-1.0, -3.0]).cpu(), -2.0)
    assert loss.item() == pytest.approx(8.0)
    loss.backward()  # d/dlog_alpha of -alpha (lp + H) is the same expression: 8
    assert log_alpha.grad.item() == pytest.approx(8.0)


def test_td3_target_smoothing():
    # noise * 0.2 = [0.6, -0.2] -> clipped to [0.5, -0.2]; plus [0.9, -0.2] = [1.4, -0.4] -> clamped [1.0, -0.4]
    a = smoothed_target_action(torch.tensor([[0.9, -0.2]]), torch.tensor([[3.0, -1.0]]), 0.2, 0.5)
    assert a.tolist()[0] == pytest.approx([1.0, -0.4])


def test_soft_update():
    target, source = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        target.weight.fill_(1.0), source.weight.fill_(3.0)
    soft_update(target, source, 0.25)  # 0.25 * 3 + 0.75 * 1 = 1.5
    assert target.weight.item() == pytest.approx(1.5)


def filled(agent_cls, settings, n=64):
    torch.manual_seed(0)
    agent = agent_cls(3, 2, settings, DEVICE, 1000, seed=0)
    rng = np.random.default_rng(0)
    agent.observe(Transition(rng.normal(size=(n, 3)).astype(np.float32), rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                             rng.normal(size=n), rng.normal(size=(n, 3)).astype(np.float32), np.zeros(n, bool),
                             np.zeros(n, bool)))
    return agent


def adam_steps(opt: torch.optim.Optimizer) -> int:
    states = list(opt.state.values())
    return int(states[0]["step"]) if states else 0


def test_td3_delays_actor_and_targets():
    agent = filled(TD3, TD3Settings(warmup_steps=0, batch_size=8, hidden=[8, 8]))
    actor_changes, target_changes = [], []
    for step in range(1, 7):
        before = [p.clone() for p in agent.actor.parameters()]
        target_before = [p.clone() for p in agent.critic_target.parameters()]
        agent.update(step)
        actor_changes.append(any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters())))
        target_changes.append(any(not torch.equal(a, b) for a, b in zip(target_before,
                                                                          agent.critic_target.parameters())))
    # policy_frequency 2: actor and targets move on updates 2, 4, 6 only; the critic every update
    assert actor_changes == [False, True, False, True, False, True]
    assert target_changes == actor_changes
    assert adam_steps(agent.q_optimizer) == 6 and adam_steps(agent.actor_optimizer) == 3


def test_sac_actor_takes_two_steps_every_second_update():
    agent = filled(SAC, SACSettings(warmup_steps=0, batch_size=8, hidden=[8, 8]))
    counts = []
    for step in range(1, 6):
        agent.update(step)
        counts.append((adam_steps(agent.q_optimizer), adam_steps(agent.actor_optimizer),
                       adam_steps(agent.alpha_optimizer)))
    assert counts == [(1, 0, 0), (2, 2, 2), (3, 2, 2), (4, 4, 4), (5, 4, 4)]


def test_no_learning_during_warmup():
    agent = filled(SAC, SACSettings(warmup_steps=10, batch_size=8, hidden=[8, 8]))
    assert agent.update(10) == {} and agent.n_updates == 0
    assert "q_loss" in agent.update(11)


def test_sacs_old_learning_rate_names_still_load(tmp_path):
    # SAC's settings were CleanRL's policy_lr and q_lr; a config (or a committed run's config.yaml) with them loads
    from qvpo.errors import UserError
    from qvpo.settings import load_yaml_mapping, resolve

    old = tmp_path / "sac.yaml"
    old.write_text("policy_lr: 0.0001\nq_lr: 0.002\nhidden: [64, 64]\n")
    s = resolve(SACSettings, load_yaml_mapping(old))
    assert (s.actor_lr, s.critic_lr, s.hidden) == (1e-4, 2e-3, [64, 64])
    agent = SAC(3, 2, s, torch.device("cpu"), 100, 0)
    assert [g["lr"] for g in agent.actor_optimizer.param_groups] == [1e-4]
    assert agent.q_optimizer.param_groups[0]["lr"] == agent.alpha_optimizer.param_groups[0]["lr"] == 2e-3
    with pytest.raises(UserError, match="'q_lr' is the old name of 'critic_lr'"):
        resolve(SACSettings, {"q_lr": 1e-3, "critic_lr": 1e-3})
    assert SACSettings().hidden is not SACSettings().hidden  # each instance owns its widths list
