"""PPO's and SPO's math against values worked out by hand, and both on the run harness:
run files, exact resume from a checkpoint in the middle of a rollout (signal and SIGKILL)."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import kill_after_checkpoint, logged, meta, read_csv, run_cli
from qvpo.algos.ppo import PPO, PPOSettings, clipped_surrogate
from qvpo.algos.spo import SPO, SPOSettings, kl_clip_factor, kl_clip_loss, ratio_penalty_loss
from qvpo.cli import main
from qvpo.envs import Transition
from qvpo.algos.ppo import (RMS_INITIAL_COUNT, GaussianActor, RewardNormalizer, RunningMeanStd, gae, gaussian_entropy,
                           gaussian_kl, gaussian_log_prob, gaussian_sample, value_loss)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def t(x):
    return torch.tensor(x, dtype=torch.float32, device=DEVICE)


# -- the objectives -------------------------------------------------------------------------


def test_ppo_clipped_surrogate_and_its_gradient():
    # clip 0.2: (A=1, r=1.5) max(-1.5, -1.2) = -1.2 ; (A=-1, r=0.5) max(0.5, 0.8) = 0.8 ; (A=2, r=0.9) -1.8
    ratio = t([1.5, 0.5, 0.9]).requires_grad_()
    loss = clipped_surrogate(t([1.0, -1.0, 2.0]), ratio, 0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.8) / 3)
    loss.backward()  # the two clipped rows pass no gradient; the third -A/3
    assert ratio.grad.tolist() == pytest.approx([0.0, 0.0, -2.0 / 3])


def test_clipped_value_loss():
    # row 1: (1-2)^2 = 1 vs (0.5 + 0.2 - 2)^2 = 1.69 ; row 2: 0 vs (0.5 - 0.2 - 0)^2 = 0.09 ; 0.5 * mean(1.69, 0.09)
    new, old, ret = t([1.0, 0.0]), t([0.5, 0.5]), t([2.0, 0.0])
    assert value_loss(new, old, ret, 0.2, clipped=True).item() == pytest.approx(0.445)
    assert value_loss(new, old, ret, 0.2, clipped=False).item() == pytest.approx(0.25)


def test_spo_2024_kl_clip_factor_loss_and_kl_gradient():
    adv = t([1.0, -1.0, 2.0, -2.0, 0.0])
    kl = t([0.04, 0.04, 0.01, 0.01, 0.05]).requires_grad_()
    # A>0 beyond 0.02: 0.02/0.04 = 0.5 ; A<0 beyond: 2 - 0.5 = 1.5 ; within the clip: 1 ; A=0: 0
    assert kl_clip_factor(adv, kl, 0.02, 0.0).tolist() == pytest.approx([0.5, 1.5, 1.0, 1.0, 0.0])
    ratio = t([1.1, 0.9, 1.0, 1.2, 1.0])
    loss = kl_clip_loss(adv, ratio, kl, 0.02, 1e-12)
    # -mean(A r f) = -mean(0.55, -1.35, 2.0, -2.4, 0) = 0.24
    assert loss.item() == pytest.approx(0.24)
    loss.backward()  # d is not detached: row 1: -(1/5) A r d(0.02/d)/dd = -(0.2)(1.1)(-0.02/0.04^2) = 2.75
    assert kl.grad[0].item() == pytest.approx(2.75)
    assert kl.grad[1].item() == pytest.approx(-(0.2) * (-1.0) * 0.9 * (0.02 / 0.04 ** 2))  # f = 2 - 0.02/d
    assert kl.grad[2:].abs().max().item() < 1e-4  # inside the clip f = d / (d + 1e-12): flat up to float32 noise


def test_spo_2025_ratio_penalty():
    # eps 0.2: 1*1.2 - 1*0.2^2/0.4 = 1.1 ; -2*0.9 - 2*0.1^2/0.4 = -1.85 ; loss = -mean = 0.375
    assert ratio_penalty_loss(t([1.0, -2.0]), t([1.2, 0.9]), 0.2).item() == pytest.approx(0.375)


def test_spo_first_minibatch_plain_and_2025_selectable():
    agent = SPO(3, 2, SPOSettings(), DEVICE, 10**6, seed=0)
    adv, ratio, kl = t([1.0, -2.0]), t([1.2, 0.9]), t([0.04, 0.0])
    assert agent.policy_loss(adv, ratio, kl, first=True)[0].item() == pytest.approx(-(1.2 - 1.8) / 2)
    assert agent.policy_loss(adv, ratio, kl, first=False)[0].item() == pytest.approx(
        kl_clip_loss(adv, ratio, kl, 0.02, 1e-12).item())
    agent = SPO(3, 2, SPOSettings(objective="ratio_penalty_2025"), DEVICE, 10**6, seed=0)
    for first in (True, False):
        assert agent.policy_loss(adv, ratio, kl, first)[0].item() == pytest.approx(0.375)


def test_gaussian_formulas_are_torch_distributions_bit_for_bit():
    """log-prob, entropy, KL and a draw, and the gradients they pass to the actor, equal Normal's exactly."""
    from torch.distributions import Normal, kl_divergence

    torch.manual_seed(0)
    actor = GaussianActor(3, 2, [8, 8], 0.0)
    with torch.no_grad():
        actor.log_std.copy_(t([[-0.3, 0.4]]))
    obs, action = torch.randn(6, 3), torch.randn(6, 2)
    old_mean, old_std = torch.randn(6, 2), t([[0.9, 1.3]])

    def losses(ours: bool):
        actor.zero_grad()
        mean, std = actor(obs)
        if ours:
            logp, ent = gaussian_log_prob(action, mean, std), gaussian_entropy(std)
            kl = gaussian_kl(old_mean, old_std, mean, std)
        else:
            dist = Normal(mean, actor.log_std.expand_as(mean).exp())
            logp, ent = dist.log_prob(action), dist.entropy()
            kl = kl_divergence(Normal(old_mean, old_std), dist)
        values = [v.sum(-1) for v in (logp, ent, kl)]
        (values[0].exp().mean() + values[1].mean() + values[2].mean()).backward()
        return values, [p.grad.clone() for p in actor.parameters()]

    (ours, our_grads), (ref, ref_grads) = losses(True), losses(False)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
    assert all(torch.equal(a, b) for a, b in zip(our_grads, ref_grads))
    mean, std = actor(obs)
    torch.manual_seed(1)
    draw = gaussian_sample(mean.detach(), std.detach())
    torch.manual_seed(1)
    assert torch.equal(draw, Normal(mean.detach(), std.detach()).sample())


@pytest.mark.parametrize("cls", [PPO, SPO])
def test_observe_after_act_stores_what_a_fresh_computation_stores(cls):
    """observe() reuses the exploring act()'s tensors only for that very observation and action, and stores
    exactly the rows it stores without them."""
    data = list(transitions(2, 8))
    rollouts = []
    for use_act in (True, False):
        torch.manual_seed(0)
        agent = cls(3, 2, small(cls), DEVICE, 1000, seed=0)
        for tr in data:
            if use_act:
                action = agent.act(torch.as_tensor(tr.obs, device=DEVICE), "explore").cpu().numpy()
                tr = Transition(tr.obs, action, tr.reward, tr.next_obs, tr.terminated, tr.truncated)
            else:  # the draw act() would make, from the same generator state, without act()'s cache
                x = agent.normalize_obs(torch.as_tensor(tr.obs, device=DEVICE))
                action = gaussian_sample(*agent.actor(x)).detach().cpu().numpy()
                tr = Transition(tr.obs, action, tr.reward, tr.next_obs, tr.terminated, tr.truncated)
            agent.observe(tr)
        rollouts.append({k: v.clone() for k, v in agent.rollout.state_dict().items() if isinstance(v, torch.Tensor)})
    assert rollouts[0].keys() == rollouts[1].keys()
    assert all(torch.equal(rollouts[0][k], rollouts[1][k]) for k in rollouts[0])
    agent = cls(3, 2, small(cls), DEVICE, 1000, seed=0)  # a stale cache (another observation) is not used
    tr = data[0]
    agent.act(torch.as_tensor(data[1].obs, device=DEVICE), "explore")
    x = agent.normalize_obs(torch.as_tensor(tr.obs, device=DEVICE))  # before observe() moves the statistics
    agent.observe(tr)
    assert torch.equal(agent.rollout.obs[0], x)
    assert torch.equal(agent.rollout.means[0], agent.actor(x)[0].detach())


# -- GAE and the normalisers ----------------------------------------------------------------


def test_gae_cut_at_termination_and_truncation():
    # gamma 0.5, lambda 0.5, every reward 1, values 1..4, V(after the last row) = 8.
    # env 0 terminates at t=1, env 1 is truncated at t=2; both cut the recursion (CleanRL).
    # env 0: t3: 1 + 0.5*8 - 4 = 1 ; t2: 1 + 0.5*4 - 3 = 0, + 0.25*1 = 0.25 ; t1: 1 - 2 = -1 ;
    #        t0: 1 + 0.5*2 - 1 = 1, + 0.25*(-1) = 0.75
    # env 1: t3: 1 ; t2: 1 - 3 = -2 ; t1: 1 + 1.5 - 2 = 0.5, + 0.25*(-2) = 0 ; t0: 1 + 0 = 1
    rewards = t([[1.0, 1.0]] * 4)
    values = t([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    dones = t([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    adv, ret = gae(rewards, values, dones, t([8.0, 8.0]), 0.5, 0.5)
    assert adv[:, 0].tolist() == pytest.approx([0.75, -1.0, 0.25, 1.0])
    assert adv[:, 1].tolist() == pytest.approx([1.0, 0.0, -2.0, 1.0])
    assert ret[:, 0].tolist() == pytest.approx([1.75, 1.0, 3.25, 5.0])


def test_gae_on_the_host_is_the_torch_recursion_bit_for_bit():
    """gae() runs in numpy float32; the same recursion written with torch tensors gives the same bits."""
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(64, 3, generator=gen), torch.randn(64, 3, generator=gen)
    dones, next_value = (torch.rand(64, 3, generator=gen) < 0.1).float(), torch.randn(3, generator=gen)
    expected, last = torch.zeros_like(rewards), torch.zeros(3)
    for i in reversed(range(64)):
        following = next_value if i == 63 else values[i + 1]
        delta = rewards[i] + 0.99 * following * (1.0 - dones[i]) - values[i]
        last = expected[i] = delta + 0.99 * 0.95 * (1.0 - dones[i]) * last
    adv, ret = gae(rewards.to(DEVICE), values.to(DEVICE), dones.to(DEVICE), next_value.to(DEVICE), 0.99, 0.95)
    assert adv.device == rewards.to(DEVICE).device and adv.dtype == torch.float32
    assert torch.equal(adv.cpu(), expected) and torch.equal(ret.cpu(), expected + values)


def test_running_mean_std_update_and_normalize():
    rms = RunningMeanStd((1,))
    rms.update(t([[1.0], [3.0]]))
    # merge of the prior (mean 0, var 1, count 1e-4) with a batch of mean 2, var 1, count 2
    c = RMS_INITIAL_COUNT
    mean = 2.0 * 2 / (c + 2)
    var = (1.0 * c + 1.0 * 2 + 2.0 ** 2 * c * 2 / (c + 2)) / (c + 2)
    assert rms.mean.item() == pytest.approx(mean, rel=1e-12) and rms.var.item() == pytest.approx(var, rel=1e-12)
    assert rms.count.item() == pytest.approx(c + 2)
    x = rms.normalize(t([[3.0], [1000.0]]), 10.0)
    assert x[0, 0].item() == pytest.approx((3.0 - mean) / (var + 1e-8) ** 0.5, rel=1e-6)
    assert x[1, 0].item() == 10.0  # clipped


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=40), st.integers(1, 39))
def test_running_mean_std_merge_is_the_whole_batch(values, cut):
    cut = min(cut, len(values) - 1)
    whole, split = RunningMeanStd(()), RunningMeanStd(())
    x = torch.tensor(values, dtype=torch.float64, device=DEVICE)
    whole.update(x)
    split.update(x[:cut])
    split.update(x[cut:])
    assert split.mean.item() == pytest.approx(whole.mean.item(), abs=1e-9)
    assert split.var.item() == pytest.approx(whole.var.item(), rel=1e-9, abs=1e-9)


def test_reward_normalizer_return_restarts_only_at_termination():
    norm = RewardNormalizer(2)
    r = torch.tensor([1.0, 1.0], dtype=torch.float64, device=DEVICE)
    norm(r, torch.tensor([False, False], device=DEVICE), 0.5, 10.0)
    out = norm(r, torch.tensor([True, False], device=DEVICE), 0.5, 10.0)
    # returns: [1, 1] then [0.5*0*1 + 1, 0.5*1 + 1] = [1, 1.5]: the terminating step's return drops the past
    assert norm.ret.tolist() == pytest.approx([1.0, 1.5])
    ref = RunningMeanStd(())  # the statistics are of every return seen, batch by batch
    ref.update(torch.tensor([1.0, 1.0], dtype=torch.float64))
    ref.update(torch.tensor([1.0, 1.5], dtype=torch.float64))
    assert norm.rms.var.item() == pytest.approx(ref.var.item())
    assert out.tolist() == pytest.approx([min(10.0, 1.0 / (ref.var.item() + 1e-8) ** 0.5)] * 2)


def test_normalisers_load_the_buffers_of_older_checkpoints():
    """Before 2026-11-30 the statistics were float64 buffers (mean, var, count; ret): a run continued with
    --accept-code-change loads them."""
    old = {"ret": torch.tensor([0.5, -1.0], dtype=torch.float64),
           "rms.mean": torch.tensor(0.25, dtype=torch.float64), "rms.var": torch.tensor(2.0, dtype=torch.float64),
           "rms.count": torch.tensor(7.0, dtype=torch.float64)}
    norm = RewardNormalizer(2)
    norm.load_state_dict(old)
    assert norm.ret.tolist() == [0.5, -1.0]
    assert (norm.rms.mean.item(), norm.rms.var.item(), norm.rms.count.item()) == (0.25, 2.0, 7.0)
    assert set(norm.state_dict()) == {"_extra_state", "rms._extra_state"}  # and saved in the new form


# -- the agent, driven by synthetic transitions ---------------------------------------------


def transitions(n_envs: int, count: int, seed: int = 0, end_every: int = 5):
    rng = np.random.default_rng(seed)
    for i in range(count):
        done = np.full(n_envs, (i + 1) % end_every == 0)
        obs, action, next_obs = (rng.normal(size=(n_envs, d)).astype(np.float32) for d in (3, 2, 3))
        yield Transition(obs, action, rng.normal(size=n_envs), next_obs, done & (i % 2 == 0), done & (i % 2 == 1))


def small(cls, **kw):
    s = (PPOSettings if cls is PPO else SPOSettings)(num_envs=2, num_steps=8, num_minibatches=4, update_epochs=2,
                                                      actor_hidden=[8, 8], critic_hidden=[8, 8], **kw)
    s.validate()
    return s


def test_observe_normalises_with_the_statistics_act_used_then_updates_them():
    agent = PPO(3, 2, small(PPO), DEVICE, 1000, seed=0)
    tr = next(transitions(2, 1))
    before = agent.obs_rms.get_extra_state()
    agent.act(torch.as_tensor(tr.obs, device=DEVICE), "explore")
    assert all(np.array_equal(before[k], v) for k, v in agent.obs_rms.get_extra_state().items())  # act is pure
    agent.observe(tr)
    s0 = RunningMeanStd((3,))  # the stored obs is normalize(o_t; S_t), then S_t takes in o'_{t+1}
    assert torch.allclose(agent.rollout.obs[0], s0.normalize(torch.as_tensor(tr.obs, device=DEVICE), 10.0))
    s0.update(torch.as_tensor(tr.next_obs, device=DEVICE))
    assert np.array_equal(agent.obs_rms.mean, s0.mean) and agent.obs_rms.count.item() == pytest.approx(2 + 1e-4)
    assert agent.rollout.pos == 1


def test_dones_are_terminated_or_truncated_and_lr_anneals():
    agent = PPO(3, 2, small(PPO), DEVICE, 3 * 16, seed=0)  # 3 rollouts of 8 steps x 2 envs
    lrs = []
    for step, tr in enumerate(transitions(2, 3 * 8), start=1):
        agent.observe(tr)
        if step == 16:  # transitions 8..15: 9 is truncated, 14 terminated; both end the episode
            assert agent.rollout.dones[:, 0].tolist() == [0, 1, 0, 0, 0, 0, 1, 0]
        m = agent.update(2 * step)
        if m:
            lrs.append(m["learning_rate"])
    assert lrs == pytest.approx([3e-4, 2e-4, 1e-4])  # CleanRL: lr (1 - (iteration - 1) / iterations)


def test_only_the_first_minibatch_of_a_phase_is_marked_first(monkeypatch):
    agent = SPO(3, 2, small(SPO), DEVICE, 1000, seed=0)
    flags = []
    original = agent.policy_loss
    monkeypatch.setattr(agent, "policy_loss", lambda a, r, k, first: flags.append(first) or original(a, r, k, first))
    for tr in transitions(2, 16):
        agent.observe(tr)
        agent.update(0)
    assert flags == ([True] + [False] * 7) * 2  # 2 phases x 2 epochs x 4 minibatches


@pytest.mark.parametrize("cls", [PPO, SPO])
def test_state_dict_mid_rollout_continues_exactly(cls):
    """A fresh agent loaded mid-rollout (buffer, position, normalisers, running return) learns identically."""
    data = list(transitions(2, 12))
    torch.manual_seed(0)
    a = cls(3, 2, small(cls), DEVICE, 1000, seed=0)
    for tr in data[:5]:
        a.observe(tr)
        a.update(0)
    state = a.state_dict()
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    torch.manual_seed(1)
    b = cls(3, 2, small(cls), DEVICE, 1000, seed=0)
    b.load_state_dict(state)
    assert b.rollout.pos == 5 and np.array_equal(b.reward_norm.ret, a.reward_norm.ret)
    results = []
    for agent in (a, b):
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        metrics = []
        for tr in data[5:]:
            agent.observe(tr)
            metrics.append(agent.update(0))
        results.append((metrics, [p.detach().clone() for p in agent.params]))
    assert results[0][0] == results[1][0] and any(results[0][0])
    assert all(torch.equal(p, q) for p, q in zip(results[0][1], results[1][1]))


# -- through the CLI ------------------------------------------------------------------------

ENV = "InvertedPendulum-v5"


def cli_args(algo: str, out, steps: int = 512, checkpoint_every: int = 10000) -> list[str]:
    # rollouts of 64 steps x 2 envs = 128 env steps; checkpoints fall mid-rollout unless a multiple of 128
    sets = ["num_steps=64", "num_envs=2", "num_minibatches=4", "update_epochs=2", "eval_every=128", "eval_episodes=2",
            f"checkpoint_every={checkpoint_every}"]
    args = ["train", "--algo", algo, "--env", ENV, "--seed", "0", "--steps", str(steps), "--out", str(out),
            "--threads", "1", "--progress", "log"]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One uninterrupted run per algorithm, shared by the tests that compare against it."""
    root = tmp_path_factory.mktemp("ref")
    for algo in ("ppo", "spo"):
        assert main(cli_args(algo, root / algo)) == 0
    return root


@pytest.mark.parametrize("algo", ["ppo", "spo"])
def test_run_files(algo, references):
    run = references / algo
    for name in ("config.yaml", "eval.csv", "train.csv", "meta.json", "checkpoint/state.pt"):
        assert (run / name).exists(), name
    assert meta(run)["status"] == "complete" and meta(run)["step"] == 512
    assert [int(r["step"]) for r in read_csv(run / "eval.csv")] == [128, 256, 384, 512]
    rows = read_csv(run / "train.csv")
    learned = [r for r in rows if r["policy_loss"]]
    assert learned and all(float(r["learning_rate"]) > 0 for r in learned)


@pytest.mark.parametrize("algo", ["ppo", "spo"])
def test_signal_mid_rollout_then_resume_is_exact(algo, references, tmp_path, monkeypatch):
    """SIGUSR1 at env step 200 (rollout position 36 of 64): checkpoint there, exit, resume, same logs."""
    cls = {"ppo": PPO, "spo": SPO}[algo]
    original, calls = cls.observe, []

    def observe(self, tr):
        original(self, tr)
        calls.append(1)
        if len(calls) == 100:  # 100 iterations x 2 envs
            os.kill(os.getpid(), signal.SIGUSR1)

    run = tmp_path / "run"
    monkeypatch.setattr(cls, "observe", observe)
    assert main(cli_args(algo, run)) == 128 + signal.SIGUSR1
    monkeypatch.setattr(cls, "observe", original)
    assert meta(run)["step"] == 200 and meta(run)["status"] == "interrupted"
    assert main(cli_args(algo, run)) == 0
    assert meta(run)["resumed_from_step"] == [200]
    assert logged(run) == logged(references / algo)


@pytest.mark.parametrize("algo", ["ppo", "spo"])
def test_sigkill_after_a_mid_rollout_checkpoint_then_resume_is_exact(algo, tmp_path):
    steps, every = 1024, 100  # checkpoints at 100, 200, ...: none a multiple of the 128-step rollout
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(cli_args(algo, ref, steps, every)) == 0
    killed_at = kill_after_checkpoint(cli_args(algo, run, steps, every), run, every)
    assert killed_at is not None and killed_at < steps and killed_at % 128, "not killed after a mid-rollout checkpoint"
    result = run_cli(cli_args(algo, run, steps, every))
    assert result.returncode == 0, result.stderr
    resumed = meta(run)["resumed_from_step"]
    assert len(resumed) == 1 and resumed[0] >= killed_at and resumed[0] % 128
    assert logged(run) == logged(ref)


@pytest.mark.parametrize("sets,message", [
    (["num_minibatches=3"], "num_steps*num_envs (128) must be divisible by num_minibatches (3)"),
    (["objective=kl_clip_2023"], "setting 'objective' must be one of"),
    (["gae_lambda=1.5"], "setting 'gae_lambda' must lie in [0, 1]"),
])
def test_bad_settings_are_one_line(sets, message, tmp_path, capsys):
    args = cli_args("spo", tmp_path / "run", 256)
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
