"""The one interface every algorithm implements; the loop and the CLI use nothing else.

What the loop asks of an algorithm before it builds one (class methods, from its settings):
- `env_count(settings)`: how many envs step in lockstep (on-policy: num_envs; else 1);
- `warmup(settings)`: steps of uniform random actions before the policy acts (off-policy: warmup_steps);
- `env_settings(env_id)`: the authors' per-env settings, applied by the workflow under its overrides.

An agent is built from (obs_dim, act_dim, settings, device, total_steps, seed) and
- `act(obs, mode)`: actions for a batch of observations, meant for [-1, 1] (the env pool
  clips, so a Gaussian policy may return unclipped draws), for a `Mode` or one of
  `extra_eval_modes`;
- `observe(transition)`: stores what it needs (replay or rollout);
- `update(step)`: learns when it is due, returning scalar metrics named in `metrics`
  (off-policy: `train_step(batch, step)` on a replay minibatch once per env step after warm-up);
- `state_dict()` / `load_state_dict()`: networks, optimisers, counters, small storage;
- `storage()`: large buffers, checkpointed incrementally by the loop.
"""
from __future__ import annotations

from enum import Enum
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from qvpo.buffers import ReplayBuffer
from qvpo.envs import Transition
from qvpo.settings import CommonSettings, OffPolicySettings


class Mode(str, Enum):
    """Which policy `act` runs. A str (compared and hashed as its value), so an algorithm's extra evaluation modes
    are plain names beside these; write a member into text as `.value` (f"{Mode.EVALUATE}" names the member)."""

    EXPLORE = "explore"
    """The behaviour policy, acting in training."""
    EVALUATE = "evaluate"
    """The evaluation policy: eval.csv's return_mean."""
    POLICY = "policy"
    """One plain draw from the learned policy (the recorded action samples of figure 2)."""


class Agent:
    Settings: ClassVar[type[CommonSettings]]
    metrics: ClassVar[tuple[str, ...]] = ()
    """Names of the scalars `update` returns, the loss columns of train.csv."""
    extra_eval_modes: ClassVar[tuple[str, ...]] = ()
    """Further evaluation policies, logged as eval.csv columns return_mean_<mode>."""

    @classmethod
    def env_count(cls, settings) -> int:
        """Envs stepped in lockstep (each step of the loop adds this many env steps)."""
        return 1

    @classmethod
    def warmup(cls, settings) -> int:
        """Steps of uniform random actions before the policy acts."""
        return 0

    @staticmethod
    def env_settings(env_id: str) -> dict[str, object]:
        """The authors' settings for `env_id` where they differ per env (none by default)."""
        return {}

    def __init__(self, obs_dim: int, act_dim: int, settings, device: torch.device, total_steps: int, seed: int):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.cfg = settings
        self.device = device
        self.total_steps = total_steps
        self.seed = seed
        self.n_updates = 0  # updates done (off-policy: minibatch steps; on-policy: learning phases)

    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, tr: Transition) -> None:
        raise NotImplementedError

    def update(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def storage(self) -> dict[str, ReplayBuffer]:
        return {}

    # Networks, optimisers and counters are found by type, so subclasses list nothing twice.
    def _stateful(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items()
                if isinstance(v, (nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))
                or (isinstance(v, torch.Tensor) and v.requires_grad)}

    def state_dict(self) -> dict:
        state = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v.state_dict())
                 for k, v in self._stateful().items()}
        state["counters"] = dict(self.counters())
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, v in self._stateful().items():
            if isinstance(v, torch.Tensor):
                with torch.no_grad():
                    v.copy_(state[k])
            else:
                v.load_state_dict(state[k])
        for k, v in state["counters"].items():
            setattr(self, k, v)

    def counters(self) -> dict[str, object]:
        """Plain values (ints, floats, tensors) that are part of the state; override to add."""
        return {"n_updates": self.n_updates}


class OffPolicyAgent(Agent):
    """A replay-based agent: stores every transition, learns once per env step after warm-up."""

    replay_columns: ClassVar[dict[str, str]] = {}
    """Extra replay columns initialised from an existing one (DIPO's improved actions)."""

    def __init__(self, obs_dim, act_dim, settings: OffPolicySettings, device, total_steps, seed):
        super().__init__(obs_dim, act_dim, settings, device, total_steps, seed)
        columns = {"obs": obs_dim, "action": act_dim, "reward": 1, "next_obs": obs_dim, "terminated": 1,
                   "truncated": 1}
        columns.update({name: columns[source] for name, source in self.replay_columns.items()})
        self.replay = ReplayBuffer(min(settings.buffer_size, max(total_steps, 1)), columns, seed, device)

    @classmethod
    def warmup(cls, settings: OffPolicySettings) -> int:
        return settings.warmup_steps

    def observe(self, tr: Transition) -> None:
        rows = {"obs": tr.obs, "action": tr.action, "reward": tr.reward, "next_obs": tr.next_obs,
                "terminated": tr.terminated, "truncated": tr.truncated}
        rows.update({name: rows[source] for name, source in self.replay_columns.items()})
        self.replay.add(**rows)

    def update(self, step: int) -> dict[str, float]:
        if step <= self.cfg.warmup_steps:
            return {}
        self.n_updates += 1
        return self.train_step(self.replay.sample(self.cfg.batch_size), step)

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One update on a replay minibatch at env step `step` (n_updates already counts it)."""
        raise NotImplementedError

    def storage(self) -> dict[str, ReplayBuffer]:
        return {"replay": self.replay}


def uniform_actions(rng: np.random.Generator, n: int, act_dim: int) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=(n, act_dim)).astype(np.float32)
