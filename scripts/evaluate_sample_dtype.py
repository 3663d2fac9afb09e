"""Evaluate QVPO runs' final checkpoints with candidates sampled in float32 and in bfloat16.

Separates bf16's effect on acting (the same trained network, sampled both ways) from its effect on
training (runs trained with either dtype). Same episodes, seeds and noise as the pipeline's final evaluation (qvpo evaluate).
Usage: python scripts/evaluate_sample_dtype.py RUN_DIR... --out CSV [--episodes 10]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import torch
import yaml

from qvpo import algos, checkpoint
from qvpo.envs import EnvPool
from qvpo.loop import CKPT_DIR, FINAL_EVAL_SEED, STATE_FILE, evaluate
from qvpo.runtime import seed_everything
from qvpo.settings import resolve

DTYPES = ("float32", "bfloat16")
MODES = {"evaluate": "best_of_candidates", "single": "one_sample"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        agent_cls = algos.get(config["algo"])
        state = checkpoint.load(run / CKPT_DIR / STATE_FILE)
        trained = resolve(agent_cls.Settings, config["settings"])
        pool = EnvPool(config["env"], 1, 0)
        for dtype in DTYPES:
            settings = dataclasses.replace(trained, sample_dtype=dtype)
            seed_everything(config["seed"])  # as the final evaluation: both dtypes draw the same noise
            agent = agent_cls(pool.obs_dim, pool.act_dim, settings, torch.device("cpu"), int(state["step"]),
                              config["seed"])
            agent.load_state_dict(state["agent"])
            for mode, name in MODES.items():
                returns = evaluate(agent, config["env"], args.episodes, FINAL_EVAL_SEED + 1000 * config["seed"], mode)
                rows.append({"run": str(run), "seed": config["seed"], "trained_with": trained.sample_dtype, "step": int(state["step"]),
                             "sampled_with": dtype, "policy": name, "episodes": args.episodes,
                             "return_mean": round(float(returns.mean()), 1), "return_min": float(returns.min()),
                             "return_max": float(returns.max())})
                print(",".join(str(v) for v in rows[-1].values()), flush=True)
        pool.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
