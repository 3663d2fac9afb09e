"""Steady-state environment steps per second of whole training loops: ours (qvpo.loop.Trainer) and
Stable-Baselines3's, and of two 1-thread jobs at once.

A loop is timed over a window of steps (start, start + window]: `start` lies after the warm-up (and,
for PPO, after a first rollout and learning phase), so the window holds acting, storing and one
update per step (one learning phase per rollout for PPO), and nothing else: evaluations and
checkpoints are scheduled outside it. Ours is the real Trainer, its agent class wrapped to take a
time stamp after `update(step)`; SB3's is stamped by a callback at each step.

Run as `python -m qvpo.bench.loops ALGO ...` it measures ours once and prints the result as JSON
(the two-job measurement starts such processes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qvpo.loop import Trainer, TrainRequest

ENV_ID = "Hopper-v5"
OFF_POLICY = ("sac", "td3")


@dataclass
class Window:
    """Steps before the window and in it. For PPO both are whole rollouts."""

    start: int
    steps: int
    warmup: int
    """Uniform-random steps (off-policy; 0 for PPO)."""
    rollout: int = 0
    """PPO's steps per rollout; 0 for off-policy."""
    minibatches: int = 32
    epochs: int = 10


def windows(quick: bool) -> dict[str, Window]:
    """Each algorithm's default warm-up (SAC 5000, TD3 25000: CleanRL's), then a settling stretch and a window."""
    if quick:
        return {"sac": Window(60, 20, 50), "td3": Window(60, 20, 50),
                "ppo": Window(32, 32, 0, rollout=32, minibatches=2, epochs=1)}
    return {"sac": Window(5500, 3000, 5000), "td3": Window(25500, 3000, 25000),
            "ppo": Window(2048, 4096, 0, rollout=2048)}


def our_overrides(algo: str, w: Window) -> dict:
    """Settings keeping evaluations and checkpoints out of the window; the algorithm's own defaults otherwise."""
    far = 10 * (w.start + w.steps)
    out = {"eval_every": far, "eval_episodes": 1, "checkpoint_every": far}
    if algo in OFF_POLICY:
        out["warmup_steps"] = w.warmup
    else:
        out.update(num_steps=w.rollout, num_minibatches=w.minibatches, update_epochs=w.epochs)
    return out


def _stamping(agent_cls: type, steps: set[int], stamps: dict[int, float]) -> type:
    class Stamped(agent_cls):
        def update(self, step: int) -> dict[str, float]:
            metrics = super().update(step)
            if step in steps:
                stamps[step] = time.perf_counter()
            return metrics

    Stamped.__name__ = f"Stamped{agent_cls.__name__}"
    return Stamped


def window_result(stamps: dict[int, float], w: Window) -> dict:
    seconds = stamps[w.start + w.steps] - stamps[w.start]
    return {"steps": w.steps, "seconds": seconds, "steps_per_s": w.steps / seconds,
            "wall_clock_start": time.time() - (time.perf_counter() - stamps[w.start]),
            "wall_clock_end": time.time() - (time.perf_counter() - stamps[w.start + w.steps])}


def median_of_rounds(rounds: list[dict]) -> dict:
    """The median steps per second over rounds of one loop's measurement, with every round kept."""
    return {"steps_per_s": statistics.median(r["steps_per_s"] for r in rounds), "rounds": rounds}


def ours(algo: str, w: Window, threads: int) -> dict:
    """Steps per second of qvpo's Trainer over the window."""
    stamps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        req = TrainRequest(algo, ENV_ID, 0, w.start + w.steps, Path(tmp) / "run", our_overrides(algo, w), "cpu",
                           threads, progress=False)
        trainer = Trainer(req)
        trainer.agent_cls = _stamping(trainer.agent_cls, {w.start, w.start + w.steps}, stamps)
        trainer.run()
    return window_result(stamps, w)


def sb3_available() -> str | None:
    """SB3's version, or None when the optional dependency is not installed."""
    try:
        import stable_baselines3
    except ImportError:
        return None
    return stable_baselines3.__version__


def sb3_model(algo: str, w: Window, total: int, env_id: str = ENV_ID, seed: int = 0):
    """SB3's algorithm configured as close to ours as it allows (DIFFERENCES lists what is not)."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import PPO, SAC, TD3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise
    from stable_baselines3.common.vec_env import VecNormalize

    common = dict(seed=seed, device="cpu", verbose=0)
    with gym.make(env_id) as probe:
        act_dim = probe.action_space.shape[0]
    if algo == "sac":
        return SAC("MlpPolicy", env_id, learning_rate=3e-4, buffer_size=total, learning_starts=w.warmup,
                   batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1, ent_coef="auto",
                   target_update_interval=1, policy_kwargs=dict(net_arch=[256, 256]), **common)
    if algo == "td3":
        return TD3("MlpPolicy", env_id, learning_rate=3e-4, buffer_size=total, learning_starts=w.warmup,
                   batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1, policy_delay=2,
                   action_noise=NormalActionNoise(np.zeros(act_dim), 0.1 * np.ones(act_dim)), target_policy_noise=0.2,
                   target_noise_clip=0.5, policy_kwargs=dict(net_arch=[256, 256]), **common)
    env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), norm_obs=True, norm_reward=True, clip_obs=10.0,
                       clip_reward=10.0, gamma=0.99)
    return PPO("MlpPolicy", env, learning_rate=lambda remaining: 3e-4 * remaining, n_steps=w.rollout,
               batch_size=w.rollout // w.minibatches, n_epochs=w.epochs, gamma=0.99, gae_lambda=0.95,
               clip_range=0.2, clip_range_vf=0.2, normalize_advantage=True, ent_coef=0.0, vf_coef=0.5,
               max_grad_norm=0.5, policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]),
                                                     activation_fn=torch.nn.Tanh, ortho_init=True,
                                                     log_std_init=0.0), **common)


DIFFERENCES = {
    "all": ["SB3 wraps the env in Monitor and DummyVecEnv (ours: EnvPool, same-step autoreset); SB3 logs "
            "episode statistics in its logger, ours writes train.csv rows."],
    "sac": ["SB3 updates actor and temperature at every gradient step; ours (CleanRL) takes 2 actor and "
            "temperature steps every 2nd step: the same number of updates.",
            "SB3 has one learning rate (3e-4) for actor, critics and temperature; ours uses 1e-3 for critics "
            "and temperature (no effect on speed).",
            "SB3 clips the actor's log-std to [-20, 2]; ours squashes it into [-5, 2] with tanh."],
    "td3": ["SB3 updates the target networks after each actor update, as ours; SB3 draws exploration noise "
            "from NormalActionNoise in numpy, ours in torch."],
    "ppo": ["SB3 normalises observations and rewards in VecNormalize, ours in the agent (CleanRL's wrappers' "
            "arithmetic).",
            "SB3 bootstraps a time-limit truncation with gamma V(final obs) added to the reward; ours ends "
            "GAE there (CleanRL).",
            "SB3 computes the value and log-probability with the action in one forward pass; ours keeps the "
            "actor's forward pass of acting for storing the step, where it evaluates the critic.",
            "SB3 anneals the learning rate with its progress schedule; ours per learning phase (CleanRL)."],
}


def sb3(algo: str, w: Window, threads: int) -> dict:
    """Steps per second of SB3's loop over the window (callback stamps at steps start + 1, start + steps + 1:
    each is taken after the env step, before that step is stored and learned from, so the window holds the same
    number of acting, storing and learning iterations as ours)."""
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(threads)
    stamps: dict[int, float] = {}
    wanted = {w.start + 1, w.start + w.steps + 1}

    class Stamps(BaseCallback):
        def _on_step(self) -> bool:  # False after the window's last stamp: SB3 stops there
            if self.num_timesteps in wanted:
                stamps[self.num_timesteps - 1] = time.perf_counter()
            return self.num_timesteps < max(wanted)

    total = w.start + w.steps + 1
    sb3_model(algo, w, total).learn(total_timesteps=total, callback=Stamps())
    return window_result(stamps, w)


def two_jobs(w: Window, quick: bool) -> dict:
    """Total steps per second of two 1-thread SAC jobs at once (two processes) over one such job alone."""
    alone = _run_jobs(1, quick)
    together = _run_jobs(2, quick)
    start = max(r["wall_clock_start"] for r in together)
    end = min(r["wall_clock_end"] for r in together)
    longest = max(r["wall_clock_end"] - r["wall_clock_start"] for r in together)
    total = sum(r["steps_per_s"] for r in together)
    return {"window": asdict(w), "one_job_steps_per_s": alone[0]["steps_per_s"],
            "two_jobs_steps_per_s": [r["steps_per_s"] for r in together], "two_jobs_total_steps_per_s": total,
            "ratio": total / alone[0]["steps_per_s"], "windows_overlap": max(0.0, end - start) / longest}


def _run_jobs(n: int, quick: bool) -> list[dict]:
    cmd = [sys.executable, "-m", "qvpo.bench.loops", "sac", "--threads", "1"] + (["--quick"] if quick else [])
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"benchmark job {' '.join(cmd)} failed ({p.returncode}): {err.strip()[-2000:]}")
        results.append(json.loads(out))
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m qvpo.bench.loops", description="time one of our training loops")
    p.add_argument("algo", choices=sorted(windows(False)))
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(ours(args.algo, windows(args.quick)[args.algo], args.threads)))


if __name__ == "__main__":
    main()
