"""Environment construction, action scaling, exact state capture, and the figure-2 bandit.

Agents act in [-1, 1]^d; `EnvPool` maps actions to each env's bounds at the boundary
and autoresets in the same step (gymnasium's vector envs default to NEXT_STEP, whose
reset transition must never reach a buffer, docs/algorithms.md), returning the true final
observation of a finished episode beside the reset one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from qvpo.errors import UserError

ENV_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}-v\d{1,3}$")


class MultiPeakBandit(gym.Env):
    """A one-step continuous bandit with three peaks of different heights (figure 2).

    The paper's reward function is unpublished; this one is ours. The observation is a
    constant zero; an action a in [-1,1]^2 earns sum_i h_i exp(-|a - c_i|^2 / (2 s_i^2)).
    The highest peak (1.0) is the narrowest and sits in a corner, so a policy that
    stops exploring early settles on one of the broad lower peaks (0.8, 0.6).
    """

    PEAKS = (  # (centre x, centre y, height, width)
        (0.7, -0.7, 1.0, 0.12),
        (-0.5, 0.5, 0.8, 0.25),
        (0.5, 0.5, 0.6, 0.25),
    )

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    @classmethod
    def reward(cls, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64).reshape(-1, 2)
        r = np.zeros(len(a))
        for cx, cy, h, w in cls.PEAKS:
            r += h * np.exp(-((a[:, 0] - cx) ** 2 + (a[:, 1] - cy) ** 2) / (2 * w * w))
        return r

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        reward = float(self.reward(np.clip(action, -1.0, 1.0))[0])
        return np.zeros(1, dtype=np.float32), reward, True, False, {}


gym.register(id="MultiPeakBandit-v0", entry_point=MultiPeakBandit, max_episode_steps=1)


def check_env_id(env_id: str) -> None:
    if not ENV_ID_PATTERN.match(env_id):
        raise UserError(f"invalid environment id {env_id!r} (expected a gymnasium id like Hopper-v5)")


def make_env(env_id: str) -> gym.Env:
    """A gymnasium env with a Box action space, or a UserError saying why not."""
    check_env_id(env_id)
    try:
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise UserError(f"unknown environment {env_id!r}: {str(e).splitlines()[0]}") from None
    except ImportError as e:
        raise UserError(f"environment {env_id!r} needs a missing package: {e}") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise UserError(f"environment {env_id!r} has a {type(env.action_space).__name__} action space; "
                        "qvpo's algorithms need a continuous (Box) one")
    if len(env.observation_space.shape or ()) != 1:
        env.close()
        raise UserError(f"environment {env_id!r} has observations of shape {env.observation_space.shape}; "
                        "qvpo needs flat vectors")
    return env


def _time_limit(env: gym.Env):
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = env.env
    return None


def get_env_state(env: gym.Env) -> dict:
    """Everything needed to continue an env exactly: its RNG, step counter and simulator state."""
    base = env.unwrapped
    state: dict = {"np_random": base.np_random.bit_generator.state}
    limit = _time_limit(env)
    if limit is not None:
        state["elapsed_steps"] = int(limit._elapsed_steps or 0)
    if hasattr(base, "model") and hasattr(base, "data"):
        import mujoco  # MuJoCo envs only

        # mj_getState with mjSTATE_INTEGRATION is bit-exact; set_state(qpos, qvel) is not (docs/algorithms.md).
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        buf = np.empty(mujoco.mj_stateSize(base.model, spec))
        mujoco.mj_getState(base.model, base.data, buf, spec)
        state["mujoco"] = torch.from_numpy(buf)
    elif isinstance(getattr(base, "state", None), np.ndarray):  # classic-control style envs
        state["array_state"] = torch.from_numpy(np.array(base.state))
    return state


def set_env_state(env: gym.Env, state: dict) -> None:
    base = env.unwrapped
    base.np_random.bit_generator.state = state["np_random"]
    limit = _time_limit(env)
    if limit is not None and "elapsed_steps" in state:
        limit._elapsed_steps = state["elapsed_steps"]
    if "mujoco" in state:
        import mujoco

        mujoco.mj_setState(base.model, base.data, state["mujoco"].numpy(), mujoco.mjtState.mjSTATE_INTEGRATION)
    elif "array_state" in state:
        base.state = state["array_state"].numpy().copy()


@dataclass
class Transition:
    """One step of n envs; `next_obs` is the true successor (the final obs when an episode ended)."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


class EnvPool:
    """n copies of one env stepped in turn, with same-step autoreset and action scaling."""

    def __init__(self, env_id: str, n: int, seed: int):
        self.envs = [make_env(env_id) for _ in range(n)]
        space = self.envs[0].action_space
        self.low = space.low.astype(np.float64)
        self.high = space.high.astype(np.float64)
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise UserError(f"environment {env_id!r} has an unbounded action space; actions cannot be scaled")
        self.obs_dim = self.envs[0].observation_space.shape[0]
        self.act_dim = space.shape[0]
        self.obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(self.envs)]).astype(np.float32)

    def scale(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1] -> the env's [low, high]."""
        a = np.clip(action, -1.0, 1.0)
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low)

    def step(self, action: np.ndarray) -> Transition:
        n = len(self.envs)
        next_obs = np.empty_like(self.obs)
        reward = np.empty(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        reset_obs = self.obs.copy()
        for i, env in enumerate(self.envs):
            o, r, term, trunc, _ = env.step(self.scale(action[i]))
            next_obs[i], reward[i], terminated[i], truncated[i] = o, r, term, trunc
            reset_obs[i] = env.reset()[0] if (term or trunc) else o
        tr = Transition(self.obs, np.asarray(action, dtype=np.float32), reward, next_obs, terminated, truncated)
        self.obs = reset_obs
        return tr

    def state(self) -> dict:
        return {"obs": torch.from_numpy(self.obs.copy()), "envs": [get_env_state(e) for e in self.envs]}

    def load_state(self, state: dict) -> None:
        self.obs = state["obs"].numpy().copy()
        for env, s in zip(self.envs, state["envs"]):
            set_env_state(env, s)

    def close(self) -> None:
        for env in self.envs:
            env.close()
