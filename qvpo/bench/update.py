"""QVPO's full update (train_step) timed against torch's dense fp32 matmul, all in one process.

Variants run in interleaved rounds (one update of each per round, then about a second of each
reference product), so drifting load on a shared machine hits all of them alike, and updates and
matmuls are compared by the same statistic (the median over rounds): ratios within a run are what
the figures mean.
"""
from __future__ import annotations

import statistics
import time

import torch

from qvpo.algos.qvpo import QVPO, QVPOSettings
from qvpo.bench.breakdown import profile_products, random_batch
from qvpo.bench.flops import qvpo_update_flops


class AuthorsOrderQVPO(QVPO):
    """The same update evaluated the way the authors' network computes it: time MLP and whole first layer for
    every candidate at every step (ddpm_sample factored=False), the critics on B*K materialised rows, the loss
    through the plain forward, torch's Mish throughout."""

    def __init__(self, *args):
        super().__init__(*args)
        self.factored = False


def matmul_shapes(quick: bool) -> dict[str, tuple[int, int, int]]:
    """(M, K, N) of the reference products: a square one and the sampler's hidden layer on all candidates."""
    n, rows = (256, 1024) if quick else (2048, 16384)
    return {f"mm {n}x{n} @ {n}x{n}": (n, n, n), f"addmm {rows}x256 @ 256x256": (rows, 256, 256)}


def matmul_gflops(m: int, k: int, n: int, seconds: float, generator: torch.Generator) -> float:
    """GFLOP/s of fp32 products [m, k] @ [k, n] (+ a bias row, output preallocated) repeated for about `seconds`."""
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    bias, out = torch.randn(n, generator=generator), torch.empty(m, n)
    torch.addmm(bias, a, b, out=out)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        torch.addmm(bias, a, b, out=out)
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def variants(quick: bool, with_compile: bool) -> dict[str, tuple[type[QVPO], dict]]:
    """name -> (agent class, settings overrides). The paper's settings are QVPOSettings' defaults
    (B 256, Nd 64, Kt 4, Ne 10, T 20, hidden 256); --quick shrinks them."""
    base = dict(batch_size=16, nd=4, kt=2, ne=2, diffusion_steps=3, hidden=32, t_dim=8,
                critic_hidden=[32, 32]) if quick else {}
    out = {"ours fp32": (QVPO, base), "authors' order fp32": (AuthorsOrderQVPO, base),
           "ours bf16 sampling": (QVPO, {**base, "sample_dtype": "bfloat16"})}
    if with_compile:
        out["ours fp32 compile"] = (QVPO, {**base, "compile": True})
    return out


def bench_update(obs_dim: int, act_dim: int, quick: bool, with_compile: bool, warmup: int,
                 repeats: int) -> dict:
    """Median ms per update of each variant, its effective rate (authors' FLOPs / median time), that rate over
    the median fp32 matmul rate of the same rounds (the better of the two shapes), and each variant's speed
    relative to the authors' order. Then one profiled update of each eager variant: the ms its dense products
    need at least, and the ceiling of its rate over the matmul rate were everything else free."""
    if with_compile:  # compile time as on a fresh machine, not from inductor's on-disk cache of earlier runs
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True
    gen = torch.Generator().manual_seed(0)
    agents, settings = {}, {}
    for name, (cls, overrides) in variants(quick, with_compile).items():
        torch.manual_seed(0)
        settings[name] = QVPOSettings(**overrides)
        agents[name] = cls(obs_dim, act_dim, settings[name], torch.device("cpu"), 1_000_000, 0)
    batch = random_batch(obs_dim, act_dim, settings["ours fp32"].batch_size, gen)
    step = settings["ours fp32"].warmup_steps  # the entropy weight's schedule position
    shapes = matmul_shapes(quick)
    seconds = {name: [] for name in agents}
    first = {}
    matmul_rates = {label: [] for label in shapes}
    for round_ in range(warmup + repeats):
        for name, agent in agents.items():
            start = time.perf_counter()
            agent.train_step(batch, step)
            took = time.perf_counter() - start
            if round_ == 0:
                first[name] = took
            if round_ >= warmup:
                seconds[name].append(took)
        if round_ >= warmup:
            for label, (m, k, n) in shapes.items():
                matmul_rates[label].append(matmul_gflops(m, k, n, 0.1 if quick else 1.0, gen))
    matmul_medians = {label: statistics.median(rates) for label, rates in matmul_rates.items()}
    reference = max(matmul_medians.values())
    plain_ms = statistics.median(seconds["authors' order fp32"]) * 1e3
    results = {}
    for name, times in seconds.items():
        flops = qvpo_update_flops(obs_dim, act_dim, settings[name])
        ms = statistics.median(times) * 1e3
        rate = sum(flops.values()) / (ms / 1e3) / 1e9
        results[name] = {"median_ms": ms, "all_ms": [t * 1e3 for t in times], "first_ms": first[name] * 1e3,
                         "gflop_per_update": sum(flops.values()) / 1e9, "effective_gflops": rate,
                         "fraction_of_matmul": rate / reference, "speedup_over_authors_order": plain_ms / ms}
        if agents[name].sample_network is not None:
            results[name].update(compile_s=first[name] - ms / 1e3, compiled=agents[name].sample_network.active)
        else:  # a compiled update's products are inductor's kernels, not the aten ops the profile counts
            products = profile_products(lambda agent=agents[name]: agent.train_step(batch, step), calls=1)
            results[name].update(products, ceiling_fraction_of_matmul=(
                sum(flops.values()) / (products["product_ms"] / 1e3) / 1e9 / reference))
    return {"obs_dim": obs_dim, "act_dim": act_dim, "warmup_updates": warmup, "timed_updates": repeats,
            "flops_by_part": qvpo_update_flops(obs_dim, act_dim, settings["ours fp32"]),
            "matmul_gflops": matmul_medians, "matmul_gflops_by_round": matmul_rates,
            "matmul_reference_gflops": reference, "variants": results}
