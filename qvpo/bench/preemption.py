"""`qvpo bench --preemption`: the checkpoint a SIGTERM triggers, with a full Humanoid-v5 buffer.

Fills a replay buffer of Humanoid-v5's shapes (1M transitions: ~2.9 GB of float32), writes it once
in full (what the first checkpoint after filling costs), then adds the 10,000 transitions of one
default checkpoint interval and times the incremental checkpoint a preemption signal triggers: only
the blocks written since the previous checkpoint are saved. Writes OUT/preemption.json.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from qvpo.buffers import ReplayBuffer

SIGNAL_BUDGET_S = 25.0
"""Seconds a preempted job has between SIGTERM and SIGKILL (a common SLURM KillWait is 30)."""
CHECKPOINT_INTERVAL = 10_000
"""Transitions added between two checkpoints (the default checkpoint_every)."""


def measure(rows: int, directory: Path) -> dict:
    env = gym.make("Humanoid-v5")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    columns = {"obs": obs_dim, "action": act_dim, "reward": 1, "next_obs": obs_dim, "terminated": 1, "truncated": 1}
    buf = ReplayBuffer(rows, columns, seed=0, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    chunk = min(50_000, rows)
    for _ in range(rows // chunk):
        buf.add(**{k: rng.standard_normal((chunk, w), dtype=np.float32) for k, w in columns.items()})
    gigabytes = sum(v.nbytes for v in buf.data.values()) / 1e9

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        buf.save_blocks(directory, "replay", tag=1)
        full_s = time.perf_counter() - t0
        buf.add(**{k: rng.standard_normal((CHECKPOINT_INTERVAL, w), dtype=np.float32) for k, w in columns.items()})
        t0 = time.perf_counter()
        buf.save_blocks(directory, "replay", tag=2)
        incremental_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"env": "Humanoid-v5", "rows": rows, "buffer_gb": round(gigabytes, 2), "full_save_s": round(full_s, 2),
            "rows_since_last_checkpoint": CHECKPOINT_INTERVAL, "incremental_save_s": round(incremental_s, 2),
            "signal_budget_s": SIGNAL_BUDGET_S, "meets_budget": incremental_s < SIGNAL_BUDGET_S}


def write(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "preemption.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
