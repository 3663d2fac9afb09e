"""`qvpo bench`: how fast QVPO's update and the training loops run here, written to results/bench/.

One command, one process (plus the two-job measurement's child processes), one run:
1. QVPO's full update at the paper's settings and Hopper-v5 shapes: ms, effective rate (the
   authors' FLOPs / time) over the same run's fp32 matmul rate, speed over the authors' order of
   computation; also with bf16 sampling and with compile=True;
2. steady-state steps per second of our SAC, TD3 and PPO loops against Stable-Baselines3's;
3. two 1-thread SAC jobs at once against one;
and, beside the targets, how far each could go were everything but its dense products free (breakdown.py).
bench.json holds every figure, bench.md a readable table with the machine and the targets.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from qvpo.errors import UserError

LOOP_ALGOS = ("sac", "td3", "ppo")


def add_bench_command(sub) -> None:
    """Register `qvpo bench` on the `qvpo` parser."""
    b = sub.add_parser("bench", help="measure QVPO's update and the training loops' speed (bench.json, bench.md)")
    b.add_argument("--out", type=Path, default=Path("results/bench"), help="directory of bench.json and bench.md")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    b.add_argument("--quick", action="store_true", help="tiny sizes, no compile: checks the command in seconds")
    b.add_argument("--preemption", action="store_true",
                   help="instead: time the checkpoint a SIGTERM triggers with a full Humanoid-v5 buffer (preemption.json)")
    b.add_argument("--rows", type=int, default=1_000_000, help="--preemption: the buffer's transitions")
    b.add_argument("--rounds", type=int, default=3,
                   help="rounds of each loop measurement, ours and SB3's interleaved; the median counts (default 3)")
    b.set_defaults(handler=cmd_bench)

    c = sub.add_parser("sb3", help="train Stable-Baselines3's SAC or TD3 at this project's settings into a run "
                                   "directory: an independent cross-check (needs the bench extra)")
    c.add_argument("algo", choices=["sac", "td3"])
    c.add_argument("env_id")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--warmup", type=int, required=True, help="uniform-random steps before learning")
    c.add_argument("--eval-every", type=int, required=True)
    c.add_argument("--eval-episodes", type=int, default=10)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--out", type=Path, required=True, help="the run directory")
    c.set_defaults(handler=cmd_sb3)


def _say(text: str) -> None:
    print(f"qvpo bench: {text}", file=sys.stderr, flush=True)


def cmd_bench(args) -> int:
    import torch

    from qvpo.bench import breakdown, loops, report, update
    from qvpo.checkpoint import atomic_write_text
    from qvpo.envs import EnvPool

    if args.rounds <= 0:
        raise UserError(f"--rounds must be positive, got {args.rounds}")
    if args.preemption:
        return cmd_bench_preemption(args)
    if args.threads is not None:
        if args.threads <= 0:
            raise UserError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    command = ("qvpo bench" + (f" --threads {args.threads}" if args.threads else "") + (" --quick" if args.quick else "")
               + (f" --rounds {args.rounds}" if args.rounds != 3 else ""))
    result = {"command": command, "quick": args.quick, "machine": report.machine(threads),
              "sb3_version": loops.sb3_available()}
    pool = EnvPool(loops.ENV_ID, 1, 0)
    obs_dim, act_dim = pool.obs_dim, pool.act_dim
    pool.close()

    _say("timing QVPO's update (ours fp32, the authors' order, bf16 sampling"
         + ("" if args.quick else ", compile") + ")")
    result["update"] = update.bench_update(obs_dim, act_dim, args.quick, not args.quick, warmup=1 if args.quick else 2,
                                           repeats=2 if args.quick else 5)
    windows = loops.windows(args.quick)
    result["loops"] = {}
    for algo in LOOP_ALGOS:
        w = windows[algo]
        rounds: dict[str, list[dict]] = {"ours": [], "sb3": []}
        for r in range(args.rounds):  # interleaved, so a drifting load on a shared machine hits both alike
            _say(f"timing our {algo.upper()} loop (round {r + 1} of {args.rounds})")
            rounds["ours"].append(loops.ours(algo, w, threads))
            if result["sb3_version"] is not None:
                _say(f"timing Stable-Baselines3's {algo.upper()} loop (round {r + 1} of {args.rounds})")
                rounds["sb3"].append(loops.sb3(algo, w, threads))
        entry = {"window": asdict(w), "ours": loops.median_of_rounds(rounds["ours"])}
        if algo in loops.OFF_POLICY:
            _say(f"profiling our {algo.upper()} update")
            entry["update"] = breakdown.off_policy_update(algo, obs_dim, act_dim, args.quick)
        if rounds["sb3"]:
            entry["sb3"] = loops.median_of_rounds(rounds["sb3"])
            entry["ratio"] = entry["ours"]["steps_per_s"] / entry["sb3"]["steps_per_s"]
            if "update" in entry:
                entry["update"]["ceiling_ratio"] = breakdown.loop_ceiling(
                    entry["sb3"]["steps_per_s"], entry["ours"]["steps_per_s"], entry["update"]["median_ms"],
                    entry["update"]["product_ms"])
        result["loops"][algo] = entry
    _say("timing one, then two 1-thread SAC jobs")
    result["cores"] = loops.two_jobs(windows["sac"], args.quick)
    result["load_average_end"] = list(os.getloadavg())
    result["targets"] = report.targets(result)

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "bench.md", report.markdown(result))
    _say(f"wrote {args.out / 'bench.json'} and bench.md")
    for t in result["targets"]:
        met = "not judged" if t["met"] is None else ("met" if t["met"] else "NOT met")
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        _say(f"{t['what']}: {value} (target {t['at_least']:.2f}) {met}")
    return 0


def cmd_bench_preemption(args) -> int:
    import tempfile

    from qvpo.bench import preemption

    if args.rows < preemption.CHECKPOINT_INTERVAL:
        raise UserError(f"--rows must be at least {preemption.CHECKPOINT_INTERVAL}, got {args.rows}")
    with tempfile.TemporaryDirectory(prefix="qvpo-preempt-") as tmp:
        result = preemption.measure(args.rows, Path(tmp) / "checkpoint")
    path = preemption.write(result, args.out)
    _say(f"wrote {path}: incremental checkpoint {result['incremental_save_s']} s, full {result['full_save_s']} s")
    return 0


def cmd_sb3(args) -> int:
    import torch

    from qvpo.bench import crosscheck, loops

    for name in ("steps", "eval_every", "eval_episodes", "threads"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.warmup < args.steps:
        raise UserError(f"--warmup must lie in [0, --steps), got {args.warmup}")
    if loops.sb3_available() is None:
        raise UserError("stable-baselines3 is not installed: pip install -e '.[bench]'")
    meta = args.out / "meta.json"
    if meta.exists() and json.loads(meta.read_text()).get("status") == "complete":
        _say(f"{args.out} is complete; left as it is")
        return 0
    torch.set_num_threads(args.threads)
    crosscheck.crosscheck(args.algo, args.env_id, args.seed, args.steps, args.warmup, args.eval_every,
                          args.eval_episodes, args.out)
    return 0
