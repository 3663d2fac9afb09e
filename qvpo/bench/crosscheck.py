"""`qvpo sb3`: Stable-Baselines3's SAC or TD3 at this project's settings, an independent cross-check.

Where our SAC or TD3 misses a learning check (TD3 on InvertedPendulum-v5), this asks whether an
independent implementation with the same settings (qvpo.bench.loops.sb3_model: CleanRL's values, which
ours uses; DIFFERENCES there lists what SB3 cannot match) does better within the same budget. It writes
RUN_DIR/eval.csv (step, return_mean, return_std, episodes, wall_time_s; deterministic policy, a separate
evaluation env) and meta.json, the layout the report commands read. Needs the bench extra
(pip install -e '.[bench]'). A run whose meta.json says complete is left alone; an interrupted one
starts again (SB3 has no exact resume).
"""
from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from qvpo.bench.loops import Window, sb3_available, sb3_model


def crosscheck(algo: str, env_id: str, seed: int, steps: int, warmup: int, eval_every: int, episodes: int,
               run: Path) -> None:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    run.mkdir(parents=True, exist_ok=True)
    meta = {"algo": f"{algo}_sb3", "env": env_id, "seed": seed, "steps": steps, "warmup_steps": warmup,
            "eval_every": eval_every, "eval_episodes": episodes, "status": "running", "step": 0,
            "versions": {"stable_baselines3": sb3_available(), "torch": torch.__version__,
                         "gymnasium": gym.__version__, "python": platform.python_version()},
            "command": " ".join(["qvpo sb3", algo, env_id, "--seed", str(seed), "--steps", str(steps), "--warmup",
                                 str(warmup), "--eval-every", str(eval_every), "--eval-episodes", str(episodes),
                                 "--out", str(run)])}
    (run / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    eval_env = Monitor(gym.make(env_id))
    eval_env.reset(seed=10_000 + seed)
    start = time.perf_counter()
    with open(run / "eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "return_mean", "return_std", "episodes", "wall_time_s"])

        class Evaluate(BaseCallback):
            def _on_step(self) -> bool:
                if self.num_timesteps % eval_every == 0:
                    returns, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=episodes,
                                                 deterministic=True, return_episode_rewards=True)
                    writer.writerow([self.num_timesteps, float(np.mean(returns)), float(np.std(returns)), episodes,
                                     round(time.perf_counter() - start, 3)])
                    f.flush()
                    print(f"{env_id} {algo}_sb3 seed {seed} step {self.num_timesteps}: {np.mean(returns):.1f}",
                          flush=True)
                return True

        model = sb3_model(algo, Window(0, 0, warmup), steps, env_id=env_id, seed=seed)
        model.learn(total_timesteps=steps, callback=Evaluate())
    meta.update(status="complete", step=steps, wall_time_s=round(time.perf_counter() - start, 3))
    (run / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
