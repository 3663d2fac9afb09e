"""bench.json and bench.md: the machine, every figure, and the issue's targets met or not."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

import torch

from qvpo import runlog
from qvpo.bench.loops import DIFFERENCES


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict:
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "torch_threads": threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "versions": runlog.versions(), "git_commit": runlog.git_commit(),
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_start": list(os.getloadavg())}


TARGETS = [  # (what, key path into the results, at least, key path of its ceiling or None)
    ("QVPO fp32 update: effective rate / fp32 matmul rate", ("update", "variants", "ours fp32", "fraction_of_matmul"),
     0.90, ("update", "variants", "ours fp32", "ceiling_fraction_of_matmul")),
    ("QVPO fp32 update: speed over the authors' order", ("update", "variants", "ours fp32",
                                                         "speedup_over_authors_order"), 1.6, None),
    ("QVPO bf16-sampling update: effective rate / fp32 matmul rate (aim)",
     ("update", "variants", "ours bf16 sampling", "fraction_of_matmul"), 1.20,
     ("update", "variants", "ours bf16 sampling", "ceiling_fraction_of_matmul")),
    ("SAC loop: steps/s ours / SB3", ("loops", "sac", "ratio"), 1.5, ("loops", "sac", "update", "ceiling_ratio")),
    ("TD3 loop: steps/s ours / SB3", ("loops", "td3", "ratio"), 1.5, ("loops", "td3", "update", "ceiling_ratio")),
    ("PPO loop: steps/s ours / SB3", ("loops", "ppo", "ratio"), 1.0, None),
    ("two 1-thread SAC jobs / one job", ("cores", "ratio"), 1.7, None),
]


def _lookup(result: dict, path: tuple[str, ...] | None) -> float | None:
    value = result if path else None
    for key in path or ():
        value = value.get(key) if isinstance(value, dict) else None
    return value


def targets(result: dict) -> list[dict]:
    """Each target with this run's value, its ceiling (None where there is none) and whether it is met (None: no
    value, or --quick's tiny sizes)."""
    rows = []
    for what, path, at_least, ceiling in TARGETS:
        value = _lookup(result, path)
        rows.append({"what": what, "at_least": at_least, "value": value, "ceiling": _lookup(result, ceiling),
                     "met": None if value is None or result["quick"] else value >= at_least})
    return rows


def busy_note(load: float, cpus: int, threads: int) -> list[str]:
    """A warning when other work already ran on the machine as the benchmark started (load above 1)."""
    if load <= 1.0:
        return []
    return ["", f"**Other work was running**: load average {load:.2f} on {cpus} logical CPUs at the start. Every "
            "figure is depressed and noisy" + (f", above all with {threads} threads: each parallel op waits at its "
                                              "barrier for whichever thread the OS has descheduled" if threads > 1
                                              else "") + ". Rerun on a quiet machine for the real figures."]


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _rounds(m: dict) -> str:
    return f"{m['steps_per_s']:.1f} [{', '.join(f'{r:.1f}' for r in (x['steps_per_s'] for x in m['rounds']))}]"


def markdown(result: dict) -> str:
    m, u = result["machine"], result["update"]
    lines = [
        "# qvpo bench", "",
        f"Command: `{result['command']}`" + (" (quick: tiny sizes, not the real figures)" if result["quick"] else ""),
        "",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['platform']}, torch capability "
        f"{m['cpu_capability']}",
        f"- torch {m['versions']['torch']}, {m['torch_threads']} torch threads; python {m['versions']['python']}, "
        f"gymnasium {m['versions']['gymnasium']}, mujoco {m['versions'].get('mujoco', 'n/a')}, "
        f"stable-baselines3 {result['sb3_version'] or 'not installed'}",
        f"- date (UTC): {m['date_utc']}; git commit {m['git_commit']}",
        f"- load average (1, 5, 15 min) at start: {', '.join(f'{x:.2f}' for x in m['load_average_start'])}; "
        f"at end: {', '.join(f'{x:.2f}' for x in result['load_average_end'])}",
        "",
        "Timings are wall-clock. The machine is shared: the figures that matter are the ratios, each measured "
        "within this one run.",
        *busy_note(m["load_average_start"][0], m["logical_cpus"], m["torch_threads"]),
        "",
        "## Targets (issue 6)", "",
        "Ceiling: the value were everything but the dense products free (the products' profiled time, a lower "
        "bound of what they need; qvpo/bench/breakdown.py). For a loop, only our update shrinks to its "
        "products; the rest of our step and SB3's step stay as measured.", "",
        "| what | at least | this run | met | ceiling |", "| --- | --- | --- | --- | --- |",
    ]
    for t in result["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "no")
        ceiling = "-" if t["ceiling"] is None else _fmt(t["ceiling"])
        lines.append(f"| {t['what']} | {t['at_least']:.2f} | {_fmt(t['value'])} | {met} | {ceiling} |")
    flops = u["flops_by_part"]
    lines += [
        "", f"## QVPO update (Hopper-v5 shapes: obs {u['obs_dim']}, act {u['act_dim']})", "",
        f"Median of {u['timed_updates']} updates after {u['warmup_updates']} warm-up updates, the variants "
        "interleaved. FLOPs counted as the authors' network computes them (qvpo/bench/flops.py): "
        f"{sum(flops.values()) / 1e9:.2f} GFLOP per update.", "",
        "| part | GFLOP |", "| --- | --- |",
        *[f"| {part} | {n / 1e9:.3f} |" for part, n in flops.items()],
        "", "fp32 matmul rate of this run (median over the rounds; each round repeats the product for about "
        "1 s, 0.1 s with --quick):", "",
        *[f"- {label}: {rate:.1f} GFLOP/s" for label, rate in u["matmul_gflops"].items()],
        f"- reference (the better one): {u['matmul_reference_gflops']:.1f} GFLOP/s", "",
        "| variant | median ms | effective GFLOP/s | / matmul rate | speed over authors' order | first update ms "
        "| products ms (calls) | ceiling / matmul rate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in u["variants"].items():
        products = f"{v['product_ms']:.0f} ({v['product_calls']:.0f})" if "product_ms" in v else "-"
        lines.append(f"| {name} | {v['median_ms']:.0f} | {v['effective_gflops']:.1f} | "
                     f"{v['fraction_of_matmul']:.2f} | {v['speedup_over_authors_order']:.2f} | {v['first_ms']:.0f} | "
                     f"{products} | {_fmt(v.get('ceiling_fraction_of_matmul'))} |")
    for name, v in u["variants"].items():
        if "compile_s" in v:
            state = "compiled" if v["compiled"] else "torch.compile FAILED here, so it ran eagerly"
            lines.append(f"\n{name}: {state}; compile time ~{v['compile_s']:.1f} s (first update minus median).")
    lines += ["", "## Training loops on Hopper-v5: steady-state steps per second", ""]
    if result["sb3_version"] is None:
        lines.append("stable-baselines3 is not installed (`pip install -e .[bench]`): ours only.\n")
    lines += ["Median over the rounds, ours and SB3's interleaved (every round in brackets).", "",
              "| algorithm | window (steps) | ours steps/s | SB3 steps/s | ours / SB3 |",
              "| --- | --- | --- | --- | --- |"]
    for algo, r in result["loops"].items():
        sb3 = r.get("sb3")
        lines.append(f"| {algo.upper()} | ({r['window']['start']}, {r['window']['start'] + r['window']['steps']}] | "
                     f"{_rounds(r['ours'])} | {_rounds(sb3) if sb3 else '-'} | {_fmt(r.get('ratio'))} |")
    lines += ["", "The window starts after the warm-up (off-policy: uniform-random steps, no updates) and a "
              "settling stretch; in it every step acts, stores and updates once (PPO: whole rollouts and their "
              "learning phases). Both sides: seed 0, CPU, the same torch threads, the same warm-up and network "
              "sizes. What differs from SB3:", ""]
    for key, notes in DIFFERENCES.items():
        lines += [f"- {key.upper() if key != 'all' else 'all'}: {note}" for note in notes]
    updates = {algo: r["update"] for algo, r in result["loops"].items() if "update" in r}
    if updates:
        lines += ["", "Our off-policy updates alone (default settings, batch 256, replay of random rows; median of "
                  "5 blocks, then the same number profiled):", "",
                  "| algorithm | ms per update | dense products ms (calls) | everything else ms | loop ceiling |",
                  "| --- | --- | --- | --- | --- |"]
        for algo, v in updates.items():
            lines.append(f"| {algo.upper()} | {v['median_ms']:.2f} | {v['product_ms']:.2f} ({v['product_calls']:.0f})"
                         f" | {v['median_ms'] - v['product_ms']:.2f} | {_fmt(v.get('ceiling_ratio'))} |")
    c = result["cores"]
    lines += [
        "", "## Use of cores: SAC on Hopper-v5, 1 torch thread per job", "",
        f"- one job alone: {c['one_job_steps_per_s']:.1f} steps/s",
        f"- two jobs at once: {' + '.join(f'{x:.1f}' for x in c['two_jobs_steps_per_s'])} = "
        f"{c['two_jobs_total_steps_per_s']:.1f} steps/s (their windows overlapped {100 * c['windows_overlap']:.0f}%)",
        f"- ratio: {c['ratio']:.2f}", "",
    ]
    return "\n".join(lines)
