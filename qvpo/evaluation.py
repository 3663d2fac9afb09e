"""Evaluation: the episodes the loop runs on schedule (eval.csv) and `qvpo evaluate`'s final one.

Each evaluation runs its episodes in lockstep, env i reset with seed + i, from fixed start states:
during training TRAIN_EVAL_SEED + 1000 * seed + i; the final evaluation uses other start states
(FINAL_EVAL_SEED) than the evaluations it is compared with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qvpo import algos, checkpoint
from qvpo.agent import Agent, Mode
from qvpo.envs import EnvPool
from qvpo.errors import UserError
from qvpo.rundir import RunDir
from qvpo.runtime import pick_device, seed_everything
from qvpo.settings import resolve

TRAIN_EVAL_SEED = 100_000
"""Evaluation episodes during training reset with seed TRAIN_EVAL_SEED + 1000*seed + i."""
FINAL_EVAL_SEED = 200_000
"""`qvpo evaluate` uses other start states than the evaluations it is compared with."""


def to_obs(obs: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(obs, dtype=torch.float32, device=device)


@torch.no_grad()
def evaluate(agent: Agent, env_id: str, episodes: int, seed: int, mode: str) -> np.ndarray:
    """Returns of `episodes` episodes run in lockstep, env i reset with seed + i."""
    pool = EnvPool(env_id, episodes, seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        action = agent.act(to_obs(pool.obs, agent.device), mode).cpu().numpy()
        tr = pool.step(action)
        returns += np.where(running, tr.reward, 0.0)
        running &= ~(tr.terminated | tr.truncated)
    pool.close()
    return returns


def evaluate_run(run_dir: Path, episodes: int, device: str) -> dict:
    """Evaluate a run directory's saved policy on fresh start states."""
    if episodes <= 0:
        raise UserError(f"--episodes must be positive, got {episodes}")
    run = RunDir(run_dir)
    meta, config = run.read()
    agent_cls = algos.get(config["algo"])
    settings = resolve(agent_cls.Settings, config["settings"])
    dev = pick_device(device)
    state = checkpoint.load(run.state_file)
    pool = EnvPool(config["env"], 1, 0)
    seed_everything(config["seed"])
    agent = agent_cls(pool.obs_dim, pool.act_dim, settings, dev, meta["steps"], config["seed"])
    pool.close()
    agent.load_state_dict(state["agent"])
    returns = evaluate(agent, config["env"], episodes, FINAL_EVAL_SEED + 1000 * config["seed"], Mode.EVALUATE)
    return {"algo": config["algo"], "env": config["env"], "seed": config["seed"], "step": int(state["step"]),
            "status": meta.get("status"), "episodes": episodes, "return_mean": float(returns.mean()),
            "return_std": float(returns.std()), "returns": [float(r) for r in returns],
            "wall_time_s": meta.get("wall_time_s")}
