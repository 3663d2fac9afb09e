"""Benchmark (not a test): the checkpoint a SIGTERM triggers, with a full Humanoid-v5 buffer.

Fills a 1M-transition replay buffer of Humanoid-v5's shapes (~2.9 GB of float32), writes it
once in full (what the first checkpoint after filling costs), then adds the 10,000 transitions
of one default checkpoint interval and times the incremental checkpoint a preemption signal
triggers: only the blocks written since the previous checkpoint are saved. Writes
results/bench/preemption.json.

    python scripts/bench_preemption.py [--dir /tmp/qvpo-preempt] [--out results/bench/preemption.json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from qvpo.buffers import ReplayBuffer

SIGNAL_BUDGET_S = 25.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/qvpo-preempt"))
    p.add_argument("--out", type=Path, default=Path("results/bench/preemption.json"))
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args()

    env = gym.make("Humanoid-v5")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    columns = {"obs": obs_dim, "action": act_dim, "reward": 1, "next_obs": obs_dim, "terminated": 1, "truncated": 1}
    buf = ReplayBuffer(args.rows, columns, seed=0, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    chunk = 50_000
    for _ in range(args.rows // chunk):
        buf.add(**{k: rng.standard_normal((chunk, w), dtype=np.float32) for k, w in columns.items()})
    gigabytes = sum(v.nbytes for v in buf.data.values()) / 1e9

    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    t0 = time.perf_counter()
    buf.save_blocks(args.dir, "replay", tag=1)
    full_s = time.perf_counter() - t0

    interval = 10_000  # the default checkpoint_every
    buf.add(**{k: rng.standard_normal((interval, w), dtype=np.float32) for k, w in columns.items()})
    t0 = time.perf_counter()
    buf.save_blocks(args.dir, "replay", tag=2)
    incremental_s = time.perf_counter() - t0

    result = {"env": "Humanoid-v5", "rows": args.rows, "buffer_gb": round(gigabytes, 2),
              "full_save_s": round(full_s, 2), "rows_since_last_checkpoint": interval,
              "incremental_save_s": round(incremental_s, 2), "signal_budget_s": SIGNAL_BUDGET_S,
              "meets_budget": incremental_s < SIGNAL_BUDGET_S}
    shutil.rmtree(args.dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
