"""The speed work computes what the plain form computes, the FLOP count is the hand count, and
`qvpo bench --quick` runs end to end. (The factored first layer against the plain one is in
test_diffusion.py.) Tolerances: float32 evaluations in another order agree within 1e-5 absolute
on these sizes; Mish's rewrite within 2e-6 in value and 1e-5 in gradient."""
import json
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from qvpo.algos.qvpo import QVPO, CompiledChunkNetwork, QVPOSettings
from qvpo.bench.breakdown import loop_ceiling, product_microseconds, profile_products, random_batch
from qvpo.bench.flops import noise_net_flops, qvpo_update_flops, twin_critic_flops
from qvpo.bench.update import AuthorsOrderQVPO
from qvpo.cli import main
from qvpo.diffusion import DiffusionSchedule, NoisePredictor, ddpm_sample, twin_min_q, weighted_eps_loss
from qvpo.fastpath import mish
from qvpo.nets import TwinQ, init_authors_normal


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flops_tiny_configuration_by_hand():
    # obs 2, act 1, hidden 4, t_dim 4, critics [4]:
    # noise net row: time MLP 2(4*4 + 4*4) = 64; layers (1+4+2=7) -> 4 -> 4 -> 4 -> 1: 2(28 + 16 + 16 + 4) = 128
    # twin critics row: 2 * 2(3*4 + 4*1) = 64
    assert noise_net_flops(2, 1, 4, 4) == 192
    assert twin_critic_flops(2, 1, [4]) == 64
    c = QVPOSettings(batch_size=2, nd=3, kt=2, ne=1, diffusion_steps=2, hidden=4, t_dim=4, critic_hidden=[4])
    assert qvpo_update_flops(2, 1, c) == {
        "policy sampling": 2 * 3 * 2 * 192,      # B Nd T eps = 2304
        "policy scoring": 2 * 3 * 64,            # B Nd Q = 384
        "TD-target sampling": 2 * 2 * 2 * 192,   # B Kt T eps = 1536
        "TD-target scoring": 2 * 2 * 64,         # B Kt Q = 256
        "critic step": 3 * 2 * 64,               # 3 B Q = 384
        "diffusion loss step": 3 * 2 * 2 * 192,  # 3 B (1 + Ne) eps = 2304
    }


def test_flops_at_the_papers_settings_match_algorithms_md():
    # Hopper (11, 3): 2(32*256 + 256*32) + 2(46*256 + 2*256*256 + 256*3) = 32768 + 287232 = 320000;
    # critics 2 * 2(14*256 + 2*256*256 + 256) = 539648. docs/algorithms.md: ~105 + 9 + 7 + 3 = ~124 GFLOP.
    assert noise_net_flops(11, 3, 256, 32) == 320_000
    assert twin_critic_flops(11, 3, [256, 256, 256]) == 539_648
    parts = qvpo_update_flops(11, 3, QVPOSettings())
    assert parts["policy sampling"] == 256 * 64 * 20 * 320_000
    assert sum(parts.values()) == 123_923_202_048


def test_fast_mish_value_and_gradient_match_torch():
    x = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([-100.0, -50.0, 50.0, 100.0])]).requires_grad_()
    g = torch.randn(x.shape, generator=gen(0))
    ours = mish(x)
    (grad,) = torch.autograd.grad(ours, x, g)
    ref = F.mish(x)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("B,K,chunk", [(16, 8, None), (16, 8, 5), (3, 7, 8), (1, 4, 2)])
def test_factored_critic_scoring_equals_plain(B, K, chunk):
    torch.manual_seed(1)
    critic = TwinQ(11, 3, [32, 32, 32], activation="mish")
    init_authors_normal(critic)
    s = torch.randn(B, 11)
    candidates = torch.rand(B, K, 3) * 2 - 1
    plain = critic.min_q(s.repeat_interleave(K, 0), candidates.reshape(B * K, 3)).view(B, K)
    torch.testing.assert_close(twin_min_q(critic, s, candidates, chunk_rows=chunk), plain, atol=1e-5, rtol=0)


def test_factored_loss_and_gradients_equal_plain():
    torch.manual_seed(2)
    model = NoisePredictor(11, 3, hidden=32, t_dim=8)
    sch = DiffusionSchedule.cosine(20)
    a, s, w = torch.rand(40, 3) * 2 - 1, torch.randn(40, 11), torch.rand(40)
    losses, grads = [], []
    for factored in (True, False):
        model.zero_grad()
        loss = weighted_eps_loss(model, sch, a, s, w, generator=gen(3), factored=factored)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-5)
    for fast, plain in zip(*grads):
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)


def test_chunks_on_worker_threads_give_the_same_samples_and_scores():
    # with 2 torch threads, 2 worker threads each run every 2nd chunk on one core: the same arithmetic per chunk
    torch.manual_seed(8)
    model = NoisePredictor(11, 3, hidden=32, t_dim=8)
    critic = TwinQ(11, 3, [32, 32], activation="mish")
    sch = DiffusionSchedule.cosine(5)
    s = torch.randn(6, 11)
    results = []
    threads = torch.get_num_threads()
    for n in (1, 2):
        torch.set_num_threads(n)
        try:
            samples = ddpm_sample(model, sch, s, 7, generator=gen(9), chunk_rows=8)
            results.append((samples, twin_min_q(critic, s, samples, chunk_rows=8)))
        finally:
            torch.set_num_threads(threads)
    for one, two in zip(*results):
        torch.testing.assert_close(two, one, atol=1e-6, rtol=0)


def test_whole_update_equals_the_authors_order():
    # the same seed, batch and settings: ours and the authors' order draw the same noise in the same order,
    # so after one update every parameter agrees within float32 rounding
    c = QVPOSettings(batch_size=8, nd=5, kt=3, ne=2, diffusion_steps=4, hidden=32, t_dim=8, critic_hidden=[32, 32])
    agents = []
    for cls in (QVPO, AuthorsOrderQVPO):
        torch.manual_seed(4)
        agent = cls(11, 3, c, torch.device("cpu"), 1000, 0)
        agent.train_step(random_batch(11, 3, c.batch_size, gen(5)), c.warmup_steps)
        agents.append(agent)
    for (name, fast), (_, plain) in zip(agents[0].actor.named_parameters(), agents[1].actor.named_parameters()):
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0, msg=name)
    for fast, plain in zip(agents[0].critic.parameters(), agents[1].critic.parameters()):
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


def test_compiled_sampler_equals_eager_plain():
    network = CompiledChunkNetwork(torch.device("cpu"))
    torch.manual_seed(6)
    model = NoisePredictor(5, 2, hidden=16, t_dim=4)
    sch = DiffusionSchedule.cosine(3)
    s = torch.randn(4, 5)
    compiled = ddpm_sample(model, sch, s, 3, generator=gen(7), network=network)
    if not network.active:
        pytest.skip("torch.compile cannot run here (qvpo warned on stderr and sampled eagerly)")
    plain = ddpm_sample(model, sch, s, 3, generator=gen(7), factored=False)
    torch.testing.assert_close(compiled, plain, atol=1e-5, rtol=0)


def test_bench_quick_writes_its_files(tmp_path):
    assert main(["bench", "--quick", "--threads", "1", "--rounds", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["quick"] and result["machine"]["torch_threads"] == 1
    assert result["command"] == "qvpo bench --threads 1 --quick --rounds 2"
    for r in result["loops"].values():  # the median of two rounds is their mean
        rounds = [x["steps_per_s"] for x in r["ours"]["rounds"]]
        assert len(rounds) == 2 and r["ours"]["steps_per_s"] == pytest.approx(sum(rounds) / 2)
    assert set(result["update"]["variants"]) == {"ours fp32", "authors' order fp32", "ours bf16 sampling"}
    assert all(v["median_ms"] > 0 for v in result["update"]["variants"].values())
    assert set(result["loops"]) == {"sac", "td3", "ppo"}
    assert all(r["ours"]["steps_per_s"] > 0 for r in result["loops"].values())
    assert len(result["cores"]["two_jobs_steps_per_s"]) == 2
    for algo in ("sac", "td3"):
        update = result["loops"][algo]["update"]
        # within the one profiled measurement (the median comes from another, which load can make shorter)
        assert update["product_calls"] > 0 and 0 < update["product_ms"] < update["profiled_ms"]
    eager = {"ours fp32", "authors' order fp32", "ours bf16 sampling"}
    assert all(result["update"]["variants"][name]["product_calls"] > 0 for name in eager)
    ceilings = {t["what"]: t["ceiling"] for t in result["targets"]}
    assert ceilings["two 1-thread SAC jobs / one job"] is None
    assert ceilings["QVPO fp32 update: effective rate / fp32 matmul rate"] > 0
    assert "## Targets (issue 6)" in (tmp_path / "bench.md").read_text()


def test_bench_refuses_zero_rounds(tmp_path, capsys):
    assert main(["bench", "--quick", "--rounds", "0", "--out", str(tmp_path)]) != 0
    assert "--rounds must be positive, got 0" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_product_time_is_the_callers_plus_the_busiest_other_thread():
    def event(name, thread, us):
        return SimpleNamespace(name=name, thread=thread, self_cpu_time_total=us)

    events = [event("aten::addmm", 1, 100.0), event("aten::relu", 1, 50.0), event("aten::mm", 2, 30.0),
              event("aten::mm", 2, 30.0), event("aten::baddbmm", 3, 40.0), event("aten::copy_", 3, 500.0)]
    assert product_microseconds(events, caller_thread=1) == (100.0 + 60.0, 4)
    assert product_microseconds(events[:2], caller_thread=1) == (100.0, 1)


def test_profile_products_sees_every_product_on_every_thread():
    a, b, bias = torch.randn(64, 64), torch.randn(64, 64), torch.randn(64)
    pool = ThreadPoolExecutor(2)

    def step():
        torch.mm(a, b)
        F.linear(a, b, bias)  # one addmm
        list(pool.map(lambda _: torch.bmm(a[None], b[None]), range(2)))  # one bmm on each of two threads
        torch.relu(a)

    try:
        out = profile_products(step, calls=3)
    finally:
        pool.shutdown()
    assert out["product_calls"] == 4 and out["product_ms"] > 0


def test_loop_ceiling_by_hand():
    # SB3 10 ms a step; ours 8 ms, of which a 6 ms update with 3 ms of products: 8 - 6 + 3 = 5 ms
    assert loop_ceiling(100.0, 125.0, update_ms=6.0, product_ms=3.0) == pytest.approx(2.0)


def test_bench_preemption_times_an_incremental_checkpoint(tmp_path):
    assert main(["bench", "--preemption", "--rows", "20000", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "preemption.json").read_text())
    assert result["rows"] == 20000 and result["rows_since_last_checkpoint"] == 10000
    assert result["incremental_save_s"] > 0 and result["meets_budget"] == (result["incremental_save_s"] < 25.0)


def test_bench_preemption_refuses_a_buffer_smaller_than_one_interval(tmp_path, capsys):
    assert main(["bench", "--preemption", "--rows", "5000", "--out", str(tmp_path)]) == 2
    assert "--rows must be at least 10000" in capsys.readouterr().err


def test_sb3_crosscheck_refuses_bad_input_or_a_missing_sb3(tmp_path, capsys):
    from qvpo.bench.loops import sb3_available

    args = ["sb3", "td3", "InvertedPendulum-v5", "--steps", "300", "--eval-every", "100", "--out", str(tmp_path / "r")]
    assert main([*args, "--warmup", "300"]) == 2
    assert "--warmup must lie in [0, --steps)" in capsys.readouterr().err
    if sb3_available() is None:
        assert main([*args, "--warmup", "100"]) == 2
        assert "stable-baselines3 is not installed" in capsys.readouterr().err
    else:  # a tiny run into the layout the report commands read
        assert main([*args, "--warmup", "100", "--eval-episodes", "2"]) == 0
        meta = json.loads((tmp_path / "r" / "meta.json").read_text())
        assert meta["status"] == "complete" and meta["algo"] == "td3_sb3"
        assert (tmp_path / "r" / "eval.csv").read_text().count("\n") == 4  # header + steps 100, 200, 300
