"""QVPO's math against values worked out by hand: weights, entropy decay, Kb/Kt selection."""
from __future__ import annotations

import pytest
import torch

from qvpo.algos.qvpo import QVPO, QVPOSettings, best_candidate, entropy_weight, q_weights, td_target

SCORES = torch.tensor([[1.0, 3.0, 2.0], [-1.0, -2.0, -4.0]])


def test_qadv_weight():
    # row 0: max 3, V = mean 2 -> 1; row 1: max -1, V = -7/3 -> 4/3. Only the argmax carries it.
    weights, w_eq = q_weights(SCORES, "qadv", 1.0)
    assert w_eq.tolist() == pytest.approx([1.0, 4 / 3])
    assert torch.allclose(weights, torch.tensor([[0, 1.0, 0], [4 / 3, 0, 0]]))


def test_qadv_is_zero_when_all_candidates_tie():
    _, w_eq = q_weights(torch.tensor([[2.0, 2.0]]), "qadv", 1.0)
    assert w_eq.tolist() == [0.0]


def test_qcut_as_the_authors_code_computes_it():
    # max(Q(s, a_max), cut): max(3, 1) = 3 and max(-1, 1) = 1, on the argmax only
    weights, w_eq = q_weights(SCORES, "qcut", 1.0)
    assert w_eq.tolist() == [3.0, 1.0]
    assert weights.tolist() == [[0, 3.0, 0], [1.0, 0, 0]]


def test_qcut_paper_proportional_form():
    # row 0 has max Q > 0: every candidate weighted by its Q; row 1 does not: all weight (1) on the argmax
    weights, w_eq = q_weights(SCORES, "qcut_paper", 1.0)
    assert weights.tolist() == [[1.0, 3.0, 2.0], [1.0, 0.0, 0.0]]
    assert w_eq.tolist() == [3.0, 1.0]


@pytest.mark.parametrize("step,expected", [(0, 0.02), (50, 0.01), (80, 0.004), (95, 0.002), (100, 0.002)])
def test_entropy_weight_decays_linearly_to_its_floor(step, expected):
    assert entropy_weight(step, 100, 0.02, 0.002) == pytest.approx(expected)


def test_td_target_takes_the_best_of_kt():
    # y0 = 1 + 0.5 * max(2, 5, 3) = 3.5; y1 is terminal: 2
    y = td_target(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [1.0]]), 0.5,
                  torch.tensor([[2.0, 5.0, 3.0], [9.0, 9.0, 9.0]]))
    assert y.flatten().tolist() == [3.5, 2.0]


class PeakCritic(torch.nn.Module):
    """min(Q1, Q2)(s, a) = -(a - s)^2: the best action equals the state."""

    def min_q(self, s, a):
        return -((a - s) ** 2).sum(-1, keepdim=True)


def test_best_candidate_selects_by_min_q():
    states = torch.tensor([[0.5], [-0.2]])
    candidates = torch.tensor([[[0.0], [0.4], [0.9]], [[-0.1], [0.3], [-0.9]]])
    action, scores = best_candidate(PeakCritic(), states, candidates)
    assert action.flatten().tolist() == pytest.approx([0.4, -0.1])
    assert scores[0].tolist() == pytest.approx([-0.25, -0.01, -0.16])


@pytest.mark.parametrize("mode,k", [("explore", 3), ("evaluate", 5), ("single", 1), ("policy", 1)])
def test_acting_draws_kb_or_eval_candidates(mode, k, monkeypatch):
    agent = QVPO(1, 1, QVPOSettings(kb=3, eval_candidates=5, hidden=8, t_dim=4, critic_hidden=[8],
                                    diffusion_steps=2), torch.device("cpu"), 100, 0)
    agent.critic = PeakCritic()
    asked = []

    def fake_sample(actor, states, n):
        asked.append(n)
        return torch.linspace(-1, 1, n).view(1, n, 1).expand(states.shape[0], n, 1)

    monkeypatch.setattr(agent, "sample", fake_sample)
    action = agent.act(torch.tensor([[0.1]]), mode)
    assert asked == [k]
    if k > 1:  # the candidate nearest the state 0.1 wins
        grid = torch.linspace(-1, 1, k)
        assert action.item() == pytest.approx(grid[(grid - 0.1).abs().argmin()].item())
