"""How much of an update is dense products, and so how fast it could get if nothing else took time.

torch's profiler, on every thread, sums the self time of the product ops (forward and backward). On the
calling thread a product's time is its wall time, however many intra-op threads it uses; QVPO's chunk
workers run their products side by side on other threads while the caller waits, so of those only the
busiest worker's total counts. The sum is a lower bound of the wall time the update's products need.
With everything else free the update would take that long: the ceilings bench.md puts beside the targets.
The profiler adds a few microseconds to every op, so the products' time is slightly overstated and the
ceilings slightly understated.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

PRODUCT_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"})
CALLER_MARK = "qvpo-bench-profiled-call"


def random_batch(obs_dim: int, act_dim: int, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A replay minibatch of the right shapes (the update's cost does not depend on the values)."""
    def normal(width: int) -> torch.Tensor:
        return torch.randn(batch_size, width, generator=generator)

    return {"obs": normal(obs_dim), "action": torch.rand(batch_size, act_dim, generator=generator) * 2 - 1,
            "reward": normal(1), "next_obs": normal(obs_dim), "terminated": torch.zeros(batch_size, 1),
            "truncated": torch.zeros(batch_size, 1)}


def product_microseconds(events: Iterable, caller_thread: int) -> tuple[float, int]:
    """(lower bound of the products' wall time in us, number of product calls) over profiler events: the caller's
    products in full, plus the busiest other thread's."""
    caller, others, calls = 0.0, defaultdict(float), 0
    for e in events:
        if e.name not in PRODUCT_OPS:
            continue
        calls += 1
        if e.thread == caller_thread:
            caller += e.self_cpu_time_total
        else:
            others[e.thread] += e.self_cpu_time_total
    return caller + max(others.values(), default=0.0), calls


def profile_products(step: Callable[[], object], calls: int) -> dict:
    """Per call of `step`, over `calls` profiled calls: ms its dense products need at least, their count, and
    the calls' wall time under the profiler (the products' share of that same time cannot exceed it)."""
    from torch._C._profiler import _ExperimentalConfig  # the public API has no other way to see worker threads

    with profile(activities=[ProfilerActivity.CPU],
                 experimental_config=_ExperimentalConfig(profile_all_threads=True)) as prof:
        with record_function(CALLER_MARK):
            start = time.perf_counter()
            for _ in range(calls):
                step()
            wall_s = time.perf_counter() - start
    events = prof.events()
    caller_thread = next(e.thread for e in events if e.name == CALLER_MARK)
    microseconds, count = product_microseconds(events, caller_thread)
    return {"product_ms": microseconds / 1e3 / calls, "product_calls": count / calls,
            "profiled_ms": wall_s * 1e3 / calls}


def median_ms(step: Callable[[], object], calls: int, blocks: int = 5) -> float:
    """Median over `blocks` blocks of `calls` calls of the ms per call of `step` (not profiled)."""
    per_call = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        per_call.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(per_call)


def loop_ceiling(sb3_steps_per_s: float, ours_steps_per_s: float, update_ms: float, product_ms: float) -> float:
    """Our loop over SB3's if our update took only its products' time and the rest of our step stayed as it is."""
    ours_step_ms = 1e3 / ours_steps_per_s
    return (1e3 / sb3_steps_per_s) / (ours_step_ms - update_ms + product_ms)


def off_policy_update(algo: str, obs_dim: int, act_dim: int, quick: bool) -> dict:
    """Ms per update of an off-policy agent at its default settings, as in the loops (replay filled with random
    rows, the real `update` path with its minibatch sampling), and the ms of dense products in it. --quick only
    times fewer updates."""
    from qvpo import algos

    torch.manual_seed(0)
    cls = algos.get(algo)
    settings = cls.Settings()
    agent = cls(obs_dim, act_dim, settings, torch.device("cpu"), 10_000, 0)
    rows = random_batch(obs_dim, act_dim, 4 * settings.batch_size, torch.Generator().manual_seed(0))
    agent.replay.add(**{name: column.numpy() for name, column in rows.items()})
    step = [settings.warmup_steps]

    def one_update() -> None:
        step[0] += 1
        agent.update(step[0])

    calls = 5 if quick else 100
    median_ms(one_update, calls, blocks=1)  # warm-up
    out = {"median_ms": median_ms(one_update, calls), "profiled_updates": calls}
    out.update(profile_products(one_update, calls))
    return out
