"""The work of one QVPO update, counted as the authors' network computes it.

Counted: the multiply-adds of every Linear layer, 2 FLOPs each (biases, activations and the
sampler's elementwise arithmetic are not counted). The authors' noise net evaluates the
time-embedding MLP and the whole first layer on concat[a_t, t_emb(t), s] for every candidate at
every step; both critics score every candidate; a backward pass counts twice its forward.
"""
from __future__ import annotations

from collections.abc import Sequence

from qvpo.algos.qvpo import QVPOSettings


def linear_flops(widths: Sequence[int]) -> int:
    """sum over consecutive widths (a, b) of 2 a b: one row through an MLP of these widths."""
    return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))


def noise_net_flops(obs_dim: int, act_dim: int, hidden: int, t_dim: int) -> int:
    """One row of eps_theta(a_t, t, s): time MLP t_dim -> hidden -> t_dim, then
    (act_dim + t_dim + obs_dim) -> hidden -> hidden -> hidden -> act_dim. Hopper (11, 3, 256, 32): 320,000."""
    return linear_flops([t_dim, hidden, t_dim]) + linear_flops([act_dim + t_dim + obs_dim, hidden, hidden, hidden,
                                                                act_dim])


def twin_critic_flops(obs_dim: int, act_dim: int, hidden: Sequence[int]) -> int:
    """One row through both critics (obs_dim + act_dim) -> hidden... -> 1. Hopper, 3 x 256: 539,648."""
    return 2 * linear_flops([obs_dim + act_dim, *hidden, 1])


def qvpo_update_flops(obs_dim: int, act_dim: int, c: QVPOSettings) -> dict[str, int]:
    """FLOPs of each part of one update (train_step) with the qadv/qcut rows: B selected + B*Ne uniform.

    policy sampling   B Nd T eps        policy scoring    B Nd Q
    TD-target sampling B Kt T eps       TD-target scoring B Kt Q
    critic step       3 B Q             diffusion loss step 3 B (1 + Ne) eps
    with eps = noise_net_flops and Q = twin_critic_flops per row.
    """
    eps = noise_net_flops(obs_dim, act_dim, c.hidden, c.t_dim)
    q = twin_critic_flops(obs_dim, act_dim, c.critic_hidden)
    B, T = c.batch_size, c.diffusion_steps
    return {
        "policy sampling": B * c.nd * T * eps,
        "policy scoring": B * c.nd * q,
        "TD-target sampling": B * c.kt * T * eps,
        "TD-target scoring": B * c.kt * q,
        "critic step": 3 * B * q,
        "diffusion loss step": 3 * B * (1 + c.ne) * eps,
    }
