"""Tests of qvpo.diffusion: expectations worked out by hand where the arithmetic allows.

Reference: the authors' code, wadx2019/qvpo@40a1974 (agent/diffusion.py, model.py, helpers.py).
Everything runs on whatever device is available; nothing hard-codes one.
"""
import math

import pytest
import torch
from torch.nn import functional as F

from qvpo.diffusion import (DiffusionSchedule, NoisePredictor, _update, cosine_beta_schedule, ddpm_sample, q_sample,
                            weighted_eps_loss)
from qvpo.fastpath import mish_

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SQ3 = math.sqrt(3.0)


def ddpm_step(schedule: DiffusionSchedule, a_t: torch.Tensor, eps: torch.Tensor, t: int,
              z: torch.Tensor | None = None, noise_ratio: float = 1.0, clip: float = 1.0) -> torch.Tensor:
    """One ancestral step a_t -> a_{t-1} for step index t, out of place, through the sampler's own in-place
    step; z is ignored at t = 0 (no noise at the last step), as in ddpm_sample."""
    x = a_t.clone()
    _update(x, eps, torch.empty_like(x), schedule.step_coefficients(noise_ratio)[t], clip,
            z if t > 0 else None)
    return x


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def schedule_T3() -> DiffusionSchedule:
    """Cosine schedule with s = 0, T = 3: abar(i) = cos^2(i/3 * pi/2) = [1, 3/4, 1/4, 0]
    -> betas = [1 - 3/4, 1 - (1/4)/(3/4), 1 - 0 -> clipped 0.999] = [1/4, 2/3, 0.999].
    alphas [3/4, 1/3, 0.001]; abar [3/4, 1/4, 0.00025]; abar_prev [1, 3/4, 1/4]."""
    return DiffusionSchedule.cosine(3, s=0.0).to(DEVICE)


def constant_eps_model(obs_dim: int, act_dim: int, eps_value: float) -> NoisePredictor:
    """A real NoisePredictor whose output is `eps_value` whatever the input (last layer
    weight 0, bias eps_value), so both sampler paths can run it."""
    m = NoisePredictor(obs_dim, act_dim, hidden=16, t_dim=8)
    with torch.no_grad():
        m.layer[6].weight.zero_()
        m.layer[6].bias.fill_(eps_value)
    return m.to(DEVICE)


# ---------------------------------------------------------------- schedule


def test_cosine_schedule_T2_default_s_by_hand():
    # s = 0.008, T = 2: angle_i = (i/2 + 0.008)/1.008 * pi/2
    #   i=0: 0.0124666 rad, cos^2 = 0.99984459;  i=1: 0.7916315 rad, cos^2 = 0.49376684;
    #   i=2: pi/2, cos^2 ~ 3.7e-33.
    # beta_1 = 1 - 0.49376684/0.99984459 = 0.50615641; beta_2 = 1 - ~0 -> clipped to 0.999.
    betas = cosine_beta_schedule(2)
    assert betas.dtype == torch.float32
    torch.testing.assert_close(betas, torch.tensor([0.50615641, 0.999]), atol=1e-7, rtol=0)


def test_cosine_schedule_T3_s0_and_ddpm_quantities():
    sch = schedule_T3()
    assert sch.T == 3 and sch.betas.device.type == DEVICE.type
    t = lambda *v: torch.tensor(v, device=DEVICE)  # noqa: E731
    tol = dict(atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sch.betas, t(0.25, 2 / 3, 0.999), **tol)
    torch.testing.assert_close(sch.alphas_cumprod, t(0.75, 0.25, 0.00025), **tol)
    torch.testing.assert_close(sch.alphas_cumprod_prev, t(1.0, 0.75, 0.25), **tol)
    # sqrt(1/abar) = [2/sqrt3, 2, 63.2456]; sqrt(1/abar - 1) = [1/sqrt3, sqrt3, 63.2377]
    torch.testing.assert_close(sch.sqrt_recip_alphas_cumprod[:2], t(2 / SQ3, 2.0), **tol)
    torch.testing.assert_close(sch.sqrt_recipm1_alphas_cumprod[:2], t(1 / SQ3, SQ3), **tol)
    # posterior variance beta (1 - abar_prev)/(1 - abar): t0: 1/4*0/(1/4) = 0; t1: (2/3)(1/4)/(3/4) = 2/9
    torch.testing.assert_close(sch.posterior_variance[:2], t(0.0, 2 / 9), **tol)
    # clipped log: log(1e-20) at t0
    torch.testing.assert_close(sch.posterior_log_variance_clipped[:2], t(math.log(1e-20), math.log(2 / 9)), **tol)
    # coef1 = beta sqrt(abar_prev)/(1-abar): t0: (1/4)(1)/(1/4) = 1; t1: (2/3)(sqrt3/2)/(3/4) = 4/(3 sqrt3)
    torch.testing.assert_close(sch.posterior_mean_coef1[:2], t(1.0, 4 / (3 * SQ3)), **tol)
    # coef2 = (1-abar_prev) sqrt(alpha)/(1-abar): t0: 0; t1: (1/4)(1/sqrt3)/(3/4) = 1/(3 sqrt3)
    torch.testing.assert_close(sch.posterior_mean_coef2[:2], t(0.0, 1 / (3 * SQ3)), **tol)


# ---------------------------------------------------------------- sampler arithmetic


def test_one_step_by_hand():
    # t = 1 of schedule_T3, a_t = 0.5, eps = 0.1, z = 1:
    # a_0 = 2*0.5 - sqrt3*0.1 = 0.82679492 (inside [-1, 1])
    # mean = 4/(3 sqrt3)*0.82679492 + 1/(3 sqrt3)*0.5 = 0.63646686 + 0.09622504 = 0.73269190
    # + sigma z = sqrt(2/9) = 0.47140452  -> 1.20409642 (no clamp inside a step)
    sch = schedule_T3()
    one = torch.ones(1, 1, device=DEVICE)
    out = ddpm_step(sch, 0.5 * one, 0.1 * one, t=1, z=one)
    torch.testing.assert_close(out, 1.20409642 * one, atol=1e-6, rtol=0)
    # noise_ratio = 0 (DIPO's evaluation) leaves the posterior mean
    out0 = ddpm_step(sch, 0.5 * one, 0.1 * one, t=1, z=one, noise_ratio=0.0)
    torch.testing.assert_close(out0, 0.73269190 * one, atol=1e-6, rtol=0)


def test_predicted_a0_is_clamped():
    # t = 1, a_t = 0.9, eps = -0.5: a_0 = 2*0.9 + sqrt3*0.5 = 2.666 -> clamped to 1
    # mean = 4/(3 sqrt3)*1 + 1/(3 sqrt3)*0.9 = 0.76980036 + 0.17320508 = 0.94300544
    # (unclamped it would be 2.225). Negative side: a_t = -0.9, eps = 0.5 -> -0.94300544.
    sch = schedule_T3()
    a_t = torch.tensor([[0.9], [-0.9]], device=DEVICE)
    eps = torch.tensor([[-0.5], [0.5]], device=DEVICE)
    out = ddpm_step(sch, a_t, eps, t=1, noise_ratio=0.0)
    torch.testing.assert_close(out, torch.tensor([[0.94300544], [-0.94300544]], device=DEVICE),
                               atol=1e-6, rtol=0)


def test_no_noise_at_last_step():
    # t = 0: abar_prev = 1 so coef1 = 1, coef2 = 0: a_{-1} = clamp(a_0 prediction), z ignored.
    # a_t = 0.3, eps = 0.2: a_0 = (2/sqrt3)*0.3 - (1/sqrt3)*0.2 = 0.4/sqrt3 = 0.23094011
    sch = schedule_T3()
    one = torch.ones(1, 1, device=DEVICE)
    out = ddpm_step(sch, 0.3 * one, 0.2 * one, t=0, z=100.0 * one)
    torch.testing.assert_close(out, 0.23094011 * one, atol=1e-6, rtol=0)


@pytest.mark.parametrize("factored", [True, False])
def test_whole_chain_T1_is_noise_free_and_clamped(factored):
    # T = 1 (s = 0): beta = 0.999, abar = 0.001, coef1 = 1, coef2 = 0, a single step at t = 0:
    # output = clamp(sqrt(1000) a_T - sqrt(999) eps). With eps = 0: clamp(31.6228 a_T),
    # the same for any noise_ratio (no noise at the last step) and exactly in [-1, 1].
    sch = DiffusionSchedule.cosine(1, s=0.0).to(DEVICE)
    model = constant_eps_model(5, 2, 0.0)
    s = torch.randn(3, 5, device=DEVICE, generator=gen(0))
    a_T = torch.randn(4 * 3, 2, device=DEVICE, generator=gen(1))      # first draw of the sampler
    expected = (math.sqrt(1000.0) * a_T).clamp(-1, 1).view(4, 3, 2).transpose(0, 1)
    for ratio in (1.0, 0.0, 7.0):
        out = ddpm_sample(model, sch, s, 4, generator=gen(1), noise_ratio=ratio, factored=factored)
        assert out.shape == (3, 4, 2)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_chain_with_constant_eps_matches_step_by_step():
    # The loop = a_T, then ddpm_step for t = 2, 1, 0 with one fresh normal draw per step
    # (also at t = 0, unused, as the authors' p_sample), then a final clamp.
    sch = schedule_T3()
    model = constant_eps_model(4, 2, 0.3)
    s = torch.randn(2, 4, device=DEVICE)
    g = gen(5)
    x = torch.randn(3 * 2, 2, device=DEVICE, generator=g)
    for t in (2, 1, 0):
        z = torch.randn(3 * 2, 2, device=DEVICE, generator=g)
        x = ddpm_step(sch, x, torch.full_like(x, 0.3), t, z=z, noise_ratio=0.5)
    expected = x.clamp(-1, 1).view(3, 2, 2).transpose(0, 1)
    out = ddpm_sample(model, sch, s, 3, generator=gen(5), noise_ratio=0.5)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_rng_order_matches_authors_p_sample_loop():
    # Transcription of the authors' sample_n / p_sample_loop / p_sample (global RNG,
    # rows state.repeat(K, 1), extract-style per-row coefficients) for the plain network.
    torch.manual_seed(0)
    model = NoisePredictor(6, 2).to(DEVICE)
    sch = DiffusionSchedule.cosine(5).to(DEVICE)
    s = torch.randn(3, 6, device=DEVICE)
    K = 4
    ex = lambda a, t: a[t].reshape(-1, 1)  # noqa: E731  (authors' extract)

    torch.manual_seed(123)
    with torch.no_grad():
        state = s.repeat(K, 1)
        x = torch.randn(state.shape[0], 2, device=DEVICE)
        for i in reversed(range(sch.T)):
            t = torch.full((state.shape[0],), i, device=DEVICE, dtype=torch.long)
            eps = model(x, t, state)
            x_recon = (ex(sch.sqrt_recip_alphas_cumprod, t) * x - ex(sch.sqrt_recipm1_alphas_cumprod, t) * eps)
            x_recon.clamp_(-1.0, 1.0)
            mean = ex(sch.posterior_mean_coef1, t) * x_recon + ex(sch.posterior_mean_coef2, t) * x
            noise = torch.randn_like(x)
            mask = (1 - (t == 0).float()).reshape(-1, 1)
            x = mean + mask * (0.5 * ex(sch.posterior_log_variance_clipped, t)).exp() * noise
        x.clamp_(-1.0, 1.0)
    reference = x.view(K, 3, 2).transpose(0, 1)

    for factored in (False, True):
        torch.manual_seed(123)
        out = ddpm_sample(model, sch, s, K, factored=factored)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- network


def test_parameter_count_hopper():
    # time MLP 32*256+256 + 256*32+32 = 16,672; first layer (3+32+11)*256+256 = 12,032;
    # two hidden 2*(256*256+256) = 131,584; output 256*3+3 = 771  -> 161,059
    model = NoisePredictor(11, 3)
    assert sum(p.numel() for p in model.parameters()) == 161_059
    # the authors' submodule names, so their state_dict keys (minus `model.`) load
    assert set(model.state_dict()) == {f"time_mlp.{i}.{w}" for i in (1, 3) for w in ("weight", "bias")} | {
        f"layer.{i}.{w}" for i in (0, 2, 4, 6) for w in ("weight", "bias")}


def test_init_std_and_zero_bias():
    torch.manual_seed(0)
    model = NoisePredictor(11, 3)
    w = model.layer[2].weight                                   # fan_in 256: std 1/32
    assert abs(w.std().item() - 1 / 32) < 0.002 and model.layer[2].bias.abs().max() == 0
    assert (w.abs() > 2 / 32).float().mean() > 0.02             # plain normal: ~4.6% beyond 2 std
    trunc = NoisePredictor(11, 3, truncated_init=True)
    assert trunc.layer[2].weight.abs().max() <= 2 / 32 + 1e-6


def test_factored_first_layer_equals_plain():
    # W1 concat[a, e, s] + b1 == W_a a + W_t e(t) + (W_s s + b1): same value, different
    # summation order: tolerance 1e-5 absolute in float32.
    torch.manual_seed(1)
    model = NoisePredictor(11, 3).to(DEVICE)
    a = torch.randn(50, 3, device=DEVICE)
    s = torch.randn(50, 11, device=DEVICE)
    t = torch.randint(0, 20, (50,), device=DEVICE)
    torch.testing.assert_close(model.forward_factored(a, t, s, T=20), model(a, t, s), atol=1e-5, rtol=0)
    w_a, w_t, w_s, b1 = model.first_layer_split()
    h_plain = model.layer[0](torch.cat([a, model.time_mlp(t), s], dim=-1))
    h_fact = a @ w_a.t() + model.time_features(20)[t] + model.state_features(s)
    torch.testing.assert_close(h_fact, h_plain, atol=1e-5, rtol=0)


def test_fast_mish_matches_torch():
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([-1e4, 1e4])]).to(DEVICE)
    torch.testing.assert_close(mish_(x.clone(), torch.empty_like(x)), F.mish(x), atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("B,K,chunk", [(16, 8, None), (16, 8, 5), (16, 8, 40), (1, 4, None), (7, 3, 2)])
def test_factored_sampler_equals_plain(B, K, chunk):
    torch.manual_seed(2)
    model = NoisePredictor(11, 3).to(DEVICE)
    sch = DiffusionSchedule.cosine(20).to(DEVICE)
    s = torch.randn(B, 11, device=DEVICE)
    fast = ddpm_sample(model, sch, s, K, generator=gen(9), chunk_rows=chunk)
    plain = ddpm_sample(model, sch, s, K, generator=gen(9), factored=False)
    assert fast.shape == (B, K, 3) and fast.abs().max() <= 1.0
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


def test_bf16_sampler_close_to_fp32():
    torch.manual_seed(3)
    model = NoisePredictor(11, 3).to(DEVICE)
    sch = DiffusionSchedule.cosine(20).to(DEVICE)
    s = torch.randn(8, 11, device=DEVICE)
    ref = ddpm_sample(model, sch, s, 4, generator=gen(4))
    for factored in (True, False):
        low = ddpm_sample(model, sch, s, 4, generator=gen(4), dtype=torch.bfloat16, factored=factored)
        assert low.dtype == torch.float32
        torch.testing.assert_close(low, ref, atol=0.05, rtol=0)


# ---------------------------------------------------------------- loss


def test_weighted_loss_two_rows_by_hand():
    # schedule_T3: t=1: sqrt(abar) = 1/2, sqrt(1-abar) = sqrt3/2; t=0: sqrt3/2, 1/2.
    # A stub model returning a_t itself exposes q_sample: loss = mean w (eps - a_t)^2.
    # row 0: a = [1, 0], eps = [0, 0], t = 1: a_t = [0.5, 0]; (eps - a_t)^2 = [0.25, 0]; w = 2 -> [0.5, 0]
    # row 1: a = [0, 0], eps = [2, 0], t = 0: a_t = [1.0, 0]; (eps - a_t)^2 = [1, 0];   w = 0.5 -> [0.5, 0]
    # mean over 2 rows x 2 dims = 1.0 / 4 = 0.25; unweighted (0.25 + 1) / 4 = 0.3125
    sch = schedule_T3()
    stub = lambda a_t, t, s: a_t  # noqa: E731
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]], device=DEVICE)
    eps = torch.tensor([[0.0, 0.0], [2.0, 0.0]], device=DEVICE)
    t = torch.tensor([1, 0], device=DEVICE)
    s = torch.zeros(2, 3, device=DEVICE)
    w = torch.tensor([2.0, 0.5], device=DEVICE)
    assert weighted_eps_loss(stub, sch, a, s, w, t=t, eps=eps).item() == pytest.approx(0.25, abs=1e-6)
    assert weighted_eps_loss(stub, sch, a, s, None, t=t, eps=eps).item() == pytest.approx(0.3125, abs=1e-6)
    torch.testing.assert_close(q_sample(sch, a, t, eps), torch.tensor([[0.5, 0.0], [1.0, 0.0]], device=DEVICE))


def test_loss_backward_on_real_model():
    torch.manual_seed(4)
    model = NoisePredictor(11, 3).to(DEVICE)
    sch = DiffusionSchedule.cosine(20).to(DEVICE)
    a = torch.rand(32, 3, device=DEVICE) * 2 - 1
    s = torch.randn(32, 11, device=DEVICE)
    loss = weighted_eps_loss(model, sch, a, s, torch.rand(32, device=DEVICE), generator=gen(0))
    loss.backward()
    assert torch.isfinite(loss) and model.layer[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("algo", ["qvpo", "dipo", "sdac", "dpmd"])
def test_the_plain_networks_cuda_runs_learn_as_the_fast_path_does(algo, monkeypatch):
    """On CUDA the diffusion algorithms run the plain networks (fastpath.on_fast_path); here, on the CPU, an agent
    switched to them (never touching a factored network) makes the same three updates and actions as the factored
    fast path, within float rounding."""
    from qvpo.fastpath import ChunkedMishMLP

    from conftest import TINY
    from qvpo import algos
    from qvpo.agent import Mode
    from qvpo.bench.breakdown import random_batch
    from qvpo.fastpath import on_fast_path
    from qvpo.settings import parse_assignment, resolve

    assert on_fast_path(torch.device("cpu")) and not on_fast_path(torch.device("cuda"))
    cls = algos.get(algo)
    settings = resolve(cls.Settings, dict(parse_assignment(s) for s in TINY[algo][1]))
    rows = {k: v.numpy() for k, v in random_batch(11, 3, 64, torch.Generator().manual_seed(1)).items()}
    agents = {}
    for factored in (True, False):
        if not factored:
            def factored_network(*args, **kwargs):
                raise AssertionError("the plain path ran a factored network")
            monkeypatch.setattr(ChunkedMishMLP, "__call__", factored_network)
            monkeypatch.setattr(NoisePredictor, "forward_factored", factored_network)
        torch.manual_seed(4)
        agent = cls(11, 3, settings, torch.device("cpu"), 1000, 0)
        assert agent.factored
        agent.factored = factored
        agent.replay.add(**rows, **{name: rows[source] for name, source in cls.replay_columns.items()})
        for step in range(settings.warmup_steps + 1, settings.warmup_steps + 4):
            assert agent.update(step)
        agents[factored] = (agent, agent.act(torch.as_tensor(rows["obs"][:8]), Mode.EVALUATE))
    (fast, fast_action), (plain, plain_action) = agents[True], agents[False]
    for name, value in fast.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, plain.state_dict()[name], atol=1e-4, rtol=0, msg=name)
    for (name, p), q in zip(fast.actor.named_parameters(), plain.actor.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=0, msg=name)
    for p, q in zip(fast.critic.parameters(), plain.critic.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast_action, plain_action, atol=1e-3, rtol=0)
