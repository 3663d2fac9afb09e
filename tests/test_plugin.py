"""An algorithm added from outside the project: a toy agent in a temporary module, registered as an entry
point of the group qvpo.algorithms (no file of the project edited), trains through `qvpo train`, resumes
exactly after SIGKILL, has a code identity, and is planned by the workflow."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import kill_after_checkpoint, logged, meta, run_cli
from pipeline_helpers import TINY_CONFIG, job_counts, snakemake, write_config

TOY = '''
from dataclasses import dataclass

import torch

from qvpo.agent import Agent
from qvpo.settings import CommonSettings


@dataclass
class ToySettings(CommonSettings):
    """A toy: a linear tanh policy pushed toward actions that were rewarded."""

    lr: float = 0.01
    """SGD step size."""


class Toy(Agent):
    Settings = ToySettings
    metrics = ("surrogate",)

    def __init__(self, obs_dim, act_dim, settings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        self.policy = torch.nn.Linear(obs_dim, act_dim).to(device)
        self.optimizer = torch.optim.SGD(self.policy.parameters(), lr=settings.lr)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs, mode):
        mean = torch.tanh(self.policy(obs))
        return mean + 0.3 * torch.randn_like(mean) if mode == "explore" else mean

    def observe(self, tr):
        self.obs = torch.as_tensor(tr.obs, dtype=torch.float32, device=self.device)
        self.action = torch.as_tensor(tr.action, dtype=torch.float32, device=self.device)
        self.reward = torch.as_tensor(tr.reward, dtype=torch.float32, device=self.device)

    def update(self, step):
        surrogate = -(self.reward[:, None] * self.action * torch.tanh(self.policy(self.obs))).mean()
        self.optimizer.zero_grad()
        surrogate.backward()
        self.optimizer.step()
        self.n_updates += 1
        return {"surrogate": float(surrogate)}
'''
ARGS = ["--env", "InvertedPendulum-v5", "--threads", "1", "--progress", "log", "--set", "eval_every=200",
        "--set", "eval_episodes=2", "--set", "checkpoint_every=200"]


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> Path:
    """A directory on PYTHONPATH with toy_algo.py and the dist-info that registers it."""
    root = tmp_path / "plugin"
    (root / "toy_algo-0.1.dist-info").mkdir(parents=True)
    (root / "toy_algo.py").write_text(TOY)
    (root / "toy_algo-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-algo\nVersion: 0.1\n")
    (root / "toy_algo-0.1.dist-info" / "entry_points.txt").write_text("[qvpo.algorithms]\ntoy = toy_algo:Toy\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return root


def train(out: Path, steps: int) -> list[str]:
    return ["train", "--algo", "toy", "--seed", "0", "--steps", str(steps), "--out", str(out), *ARGS]


@pytest.mark.long(60)
def test_a_registered_toy_algorithm_trains_resumes_exactly_and_is_planned(plugin, tmp_path):
    whole = tmp_path / "whole"
    out = run_cli(train(whole, 600))
    assert out.returncode == 0, out.stderr
    assert meta(whole)["status"] == "complete" and "Toy" in meta(whole)["code_definitions"]

    killed = tmp_path / "killed"
    assert kill_after_checkpoint(train(killed, 600), killed, 200) is not None
    out = run_cli(train(killed, 600))
    assert out.returncode == 0 and "resuming" in out.stderr, out.stderr
    assert logged(killed) == logged(whole)

    # its code identity covers its own module: a change there changes it
    before = run_cli(["code-hash", "--algo", "toy"]).stdout.strip()
    (plugin / "toy_algo.py").write_text(TOY.replace("0.3 * torch.randn_like", "0.2 * torch.randn_like"))
    assert run_cli(["code-hash", "--algo", "toy"]).stdout.strip() != before

    defaults = {**TINY_CONFIG["defaults"], "set": {"eval_every": 100, "eval_episodes": 2}}
    config = write_config(tmp_path, {**TINY_CONFIG, "defaults": defaults, "figures": [],
                                     "overrides": [{"algos": ["sac"], "set": TINY_CONFIG["defaults"]["set"]}],
                                     "grids": {"table": [{"envs": ["InvertedPendulum-v5"], "algos": ["toy", "sac"],
                                                          "seeds": [0]}]}})
    plan = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", str(config))
    assert plan.returncode == 0, plan.stderr
    assert job_counts(plan.stdout)["train"] == 2
