"""Shared test fixtures: tiny per-algorithm budgets and helpers to run the CLI."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items):
    """Tests marked `long(seconds)` first, longest first (a stable sort): with several workers (scripts/test.sh
    runs -n auto), a long test collected last would otherwise run alone while the other workers sit idle."""
    def seconds(item) -> float:
        marker = item.get_closest_marker("long")
        return marker.args[0] if marker else 0.0
    items.sort(key=seconds, reverse=True)
import torch

torch.set_num_threads(1)

# Per algorithm: an env and --set overrides small enough for a run of a few seconds.
# Checkpoints every 200 steps so a test can kill a run between checkpoints.
COMMON = ["eval_every=200", "eval_episodes=2", "checkpoint_every=200"]
OFF_POLICY = COMMON + ["warmup_steps=100", "batch_size=32", "hidden=[32,32]"]
ON_POLICY = COMMON + ["num_steps=64", "num_envs=2", "num_minibatches=4", "update_epochs=2"]
TINY = {
    "sac": ("Hopper-v5", OFF_POLICY),
    "td3": ("Hopper-v5", OFF_POLICY),
    "ppo": ("Hopper-v5", ON_POLICY),
    "spo": ("Hopper-v5", ON_POLICY),
    "qvpo": ("Hopper-v5", COMMON + ["warmup_steps=100", "batch_size=16", "diffusion_steps=3", "nd=4", "kb=2",
                                    "kt=2", "eval_candidates=4", "ne=2", "hidden=32", "t_dim=8",
                                    "critic_hidden=[32,32]"]),
    "dipo": ("Hopper-v5", COMMON + ["warmup_steps=100", "batch_size=16", "diffusion_steps=3", "hidden=32", "t_dim=8",
                                    "critic_hidden=[32,32]", "action_gradient_steps=2", "memory_write_back=true"]),
    "qsm": ("Hopper-v5", COMMON + ["warmup_steps=100", "batch_size=16", "diffusion_steps=3", "hidden=[32,32]",
                                   "time_dim=8", "time_hidden=[16,16]", "critic_hidden=[32,32]"]),
    "dacer": ("Hopper-v5", COMMON + ["warmup_steps=100", "batch_size=16", "diffusion_steps=3", "hidden=[32,32]",
                                     "time_dim=8", "critic_hidden=[32,32]", "alpha_every=100", "entropy_samples=8"]),
    "sdac": ("Hopper-v5", COMMON + ["warmup_steps=100", "update_every=1", "batch_size=16", "diffusion_steps=3",
                                    "hidden=32", "t_dim=8", "time_hidden=16", "critic_hidden=[32,32]", "n_particles=4",
                                    "reverse_mc=4", "alpha_every=5"]),
    "dpmd": ("Hopper-v5", COMMON + ["warmup_steps=100", "update_every=1", "batch_size=16", "diffusion_steps=3",
                                    "hidden=32", "t_dim=8", "time_hidden=16", "critic_hidden=[32,32]", "n_particles=4",
                                    "alpha_every=5"]),
}


def tiny_args(algo: str, out: Path, steps: int = 600, seed: int = 0) -> list[str]:
    env, sets = TINY[algo]
    args = ["train", "--algo", algo, "--env", env, "--seed", str(seed), "--steps", str(steps), "--out", str(out),
            "--threads", "1", "--progress", "log"]
    for s in sets:
        args += ["--set", s]
    return args


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `qvpo ARGS` in a fresh interpreter (as a user would)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, "-m", "qvpo", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def columns(path: Path, names: list[str]) -> list[tuple]:
    rows = read_csv(path)
    return [tuple(r[n] for n in names if n in r) for r in rows]


def meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


TIMING = {"wall_time_s"}


def logged(run_dir: Path) -> dict[str, list[dict]]:
    """Every logged column but wall-clock time, which no two runs share."""
    return {name: [{k: v for k, v in r.items() if k not in TIMING} for r in read_csv(run_dir / name)]
            for name in ("eval.csv", "train.csv")}


def start(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "qvpo", *args], env=env, **kwargs)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, min_step: int, timeout: float = 240) -> int | None:
    """The step of the first checkpoint at or after `min_step` the running `proc` records, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = json.loads((run / "meta.json").read_text()).get("step", 0)
        except (OSError, json.JSONDecodeError):
            step = 0
        if step >= min_step:
            return step
        time.sleep(0.01)
    return None


def kill_after_checkpoint(args: list[str], run: Path, min_step: int) -> int | None:
    """Run `qvpo ARGS`, SIGKILL it once it has checkpointed at or after `min_step`; that step."""
    proc = start(args)
    step = wait_for_checkpoint(run, proc, min_step)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return step


@pytest.fixture(params=sorted(TINY))
def algo(request):
    return request.param
