"""The training loop every algorithm runs, evaluation, and exact checkpoint/resume.

One loop for all seven algorithms: act (uniformly at random during an off-policy
warm-up), step the env pool, `agent.observe`, `agent.update`; evaluate, record and
checkpoint on schedule. On SIGTERM/SIGUSR1 (what SLURM sends before a time limit)
it checkpoints and exits; on a non-finite loss, parameter or return it stops and
keeps the last good checkpoint.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from qvpo import algos, checkpoint, runlog
from qvpo.agent import Agent, Mode, uniform_actions
from qvpo.envs import EnvPool
from qvpo.errors import RunStopped, UserError
from qvpo.evaluation import TRAIN_EVAL_SEED, evaluate, to_obs
from qvpo.identity import changed_definitions
from qvpo.rundir import RunDir
from qvpo.runlog import Progress
from qvpo.runtime import pick_device, rng_state, seed_everything, set_rng_state, slurm_time_left
from qvpo.settings import NOT_IDENTITY, as_dict, rename_aliases, resolve


class Diverged(Exception):
    """Training produced a non-finite number."""


class Interrupted(Exception):
    """A termination signal arrived, or the SLURM job's time limit came near; a checkpoint was written."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


EXIT_BEFORE_TIME_LIMIT = 75
"""Exit code of a run stopped ahead of its SLURM job's time limit (EX_TEMPFAIL: retry to resume)."""


@dataclass
class TrainRequest:
    algo: str
    env_id: str
    seed: int
    steps: int
    out: Path
    overrides: dict
    device: str = "auto"
    threads: int | None = None
    restart: bool = False
    accept_code_change: bool = False
    progress: bool | None = None
    stop_before_limit: float = 300.0
    """Inside a SLURM job: checkpoint and stop this many seconds before the job's time limit."""
    stop_at: int | None = None
    """Stop at this step, short of `steps` (whose length still sets every schedule): `qvpo verify`."""


class Trainer:
    def __init__(self, req: TrainRequest):
        if req.steps <= 0:
            raise UserError(f"--steps must be positive, got {req.steps}")
        if req.threads is not None and req.threads <= 0:
            raise UserError(f"--threads must be positive, got {req.threads}")
        if not req.stop_before_limit >= 0:
            raise UserError(f"--stop-before-limit must be >= 0 seconds, got {req.stop_before_limit}")
        self.req = req
        self.agent_cls = algos.get(req.algo)
        self.settings = resolve(self.agent_cls.Settings, req.overrides)
        self.device = pick_device(req.device)
        if req.threads:
            torch.set_num_threads(req.threads)
        self.run_dir = RunDir(Path(req.out))
        self.code = runlog.code_hash(req.algo)
        self.code_definitions = runlog.code_definitions(req.algo)
        self.settings_dict = as_dict(self.settings)
        self.identity = runlog.identity(req.algo, req.env_id, req.seed, self.settings_dict, self.code)
        self.pool = EnvPool(req.env_id, self.agent_cls.env_count(self.settings), req.seed)
        self._signal: int | None = None
        self.deadline: float | None = None

    # -- run directory ------------------------------------------------------------------
    def check_dir(self) -> dict | None:
        """Refuse a directory of another run (touching nothing); returns this run's existing meta, if any."""
        d = self.run_dir.path
        meta = self.run_dir.meta
        if self.req.restart:
            return None
        if meta is not None and meta.get("identity") != self.identity:
            diffs = [k for k in ("algo", "env", "seed") if meta.get(k) != self._meta_base()[k]]
            changed_settings = self._changed_settings(d)
            if changed_settings:
                diffs.append(f"settings: {_listed(changed_settings)}")
            code_only = not diffs and meta.get("code_hash") != self.code
            if meta.get("code_hash") != self.code:
                diffs.append(self._code_difference(meta))
            if code_only and self.req.accept_code_change:
                return meta
            hint = " (or --accept-code-change to continue it with the new code)" if code_only else ""
            raise UserError(f"{d} holds another run (different {'; '.join(diffs)}); use --restart to replace it{hint}")
        if meta is None and d.exists() and any(d.iterdir()):
            raise UserError(f"{d} exists and is not a qvpo run directory; use --restart to replace it")
        return meta

    def _changed_settings(self, d: Path) -> list[str]:
        """The settings whose recorded value differs from ours, counting a setting added since as equal at
        its default and reading renamed ones through the alias table."""
        try:
            old = rename_aliases(self.agent_cls.Settings, yaml.safe_load((d / "config.yaml").read_text())["settings"])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return ["config.yaml unreadable"]
        defaults = as_dict(self.agent_cls.Settings())
        return [k for k, v in self.settings_dict.items() if k not in NOT_IDENTITY and old.get(k, defaults[k]) != v]

    def _code_difference(self, meta: dict) -> str:
        """Which definitions changed since the run's code (or that the pinned library versions did)."""
        old = meta.get("code_definitions")
        if old is None:
            return "code: the run records no definitions (made before they were recorded)"
        changed = changed_definitions(old, self.code_definitions)
        if not changed:
            return "code: the pinned library versions"
        return f"code: {_listed(changed)}"

    def create_dir(self) -> None:
        if self.req.restart and self.run_dir.path.exists():
            shutil.rmtree(self.run_dir.path)
        self.run_dir.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def _meta_base(self) -> dict:
        r = self.req
        return {"identity": self.identity, "algo": r.algo, "env": r.env_id, "seed": r.seed, "code_hash": self.code,
                "code_definitions": self.code_definitions}

    # -- checkpoint ---------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        ckdir = self.run_dir.checkpoint_dir
        storage = {name: buf.save_blocks(ckdir, name, step) for name, buf in self.agent.storage().items()}
        state = {"step": step, "agent": self.agent.state_dict(), "pool": self.pool.state(), "rng": rng_state(),
                 "action_rng": self.action_rng.bit_generator.state, "episode": self.episode_state(),
                 "metric_sums": dict(self.metric_sums),
                 "metric_counts": dict(self.metric_counts), "storage": storage,
                 "wall_time": self.wall_time(), "last_eval": self.last_eval}
        checkpoint.save(state, self.run_dir.state_file)
        keep = {self.run_dir.state_file.name} | {f for buf in self.agent.storage().values() for f in buf.files()}
        for f in ckdir.iterdir():
            if f.name not in keep and not f.name.startswith("."):
                f.unlink()
        self.meta.update(step=step, wall_time_s=round(self.wall_time(), 3), last_eval_return=self.last_eval)
        self.run_dir.write_meta(self.meta)

    def load_checkpoint(self) -> int:
        ckdir = self.run_dir.checkpoint_dir
        state = checkpoint.load(self.run_dir.state_file)
        self.agent.load_state_dict(state["agent"])
        for name, buf in self.agent.storage().items():
            buf.load_blocks(ckdir, state["storage"][name])
        self.pool.load_state(state["pool"])
        set_rng_state(state["rng"])
        self.action_rng.bit_generator.state = state["action_rng"]
        self.ep_return = state["episode"]["returns"].numpy().copy()
        self.ep_length = state["episode"]["lengths"].numpy().copy()
        self.metric_sums = dict(state["metric_sums"])
        self.metric_counts = dict(state["metric_counts"])
        self.time_before = state["wall_time"]
        self.last_eval = state["last_eval"]
        return int(state["step"])

    def episode_state(self) -> dict:
        return {"returns": torch.from_numpy(self.ep_return.copy()), "lengths": torch.from_numpy(self.ep_length.copy())}

    def wall_time(self) -> float:
        return self.time_before + time.monotonic() - self.t_start

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        req, s = self.req, self.settings
        old_meta = self.check_dir()
        if old_meta is not None and old_meta.get("status") == "complete" and old_meta.get("step", 0) >= req.steps:
            print(f"qvpo: {self.run_dir.path} is already complete at {old_meta['step']} steps", file=sys.stderr)
            return 0

        seed_everything(req.seed)
        self.agent: Agent = self.agent_cls(self.pool.obs_dim, self.pool.act_dim, self.settings, self.device,
                                           req.steps, req.seed)
        self.create_dir()  # only now: an agent that refuses its settings leaves no half-made directory
        self.action_rng = np.random.default_rng([req.seed, 1])
        n = len(self.pool.envs)
        self.ep_return, self.ep_length = np.zeros(n), np.zeros(n, dtype=np.int64)
        self.metric_sums: dict = {}
        self.metric_counts: dict = {}
        self.time_before, self.t_start, self.last_eval = 0.0, time.monotonic(), None

        modes = (Mode.EVALUATE, *self.agent_cls.extra_eval_modes)
        eval_cols = ["step", "return_mean", "return_std", "episodes"]
        for m in modes[1:]:
            eval_cols += [f"return_mean_{m}", f"return_std_{m}"]
        self.eval_log = runlog.CsvLog(self.run_dir.log("eval.csv"), eval_cols + ["wall_time_s"])
        self.train_log = runlog.CsvLog(self.run_dir.log("train.csv"),
                                       ["step", "episode_return", "episode_length", *self.agent_cls.metrics])
        self.logs = [self.eval_log, self.train_log]
        if s.record_actions_every:
            self.actions_log = runlog.CsvLog(self.run_dir.log("actions.csv"),
                                             ["step", "sample", *[f"a{i}" for i in range(self.pool.act_dim)]])
            self.logs.append(self.actions_log)

        step = 0
        resumes = list(old_meta.get("resumed_from_step", [])) if old_meta else []
        code_history = list(old_meta.get("code_history", [])) if old_meta else []
        if old_meta and old_meta.get("code_hash") != self.code:  # --accept-code-change: say which code ran when
            code_history.append({"code_hash": old_meta.get("code_hash"), "git_commit": old_meta.get("git_commit"),
                                 "until_step": old_meta.get("step")})
        if self.run_dir.state_file.exists():
            step = self.load_checkpoint()
            resumes.append(step)
            print(f"qvpo: resuming {self.run_dir.path} from step {step}", file=sys.stderr)
            for log in self.logs:
                log.truncate_after(step)
        else:
            for log in self.logs:
                log.reset()
            resumes, code_history = [], []
        self.t_start = time.monotonic()
        self.meta = {**self._meta_base(), "git_commit": runlog.git_commit(), "versions": runlog.versions(),
                     "device": str(self.device), "machine": runlog.machine(str(self.device)),
                     "threads": torch.get_num_threads(), "status": "running",
                     "steps": req.steps, "step": step, "resumed_from_step": resumes, "code_history": code_history,
                     "wall_time_s": round(self.time_before, 3), "last_eval_return": self.last_eval}
        self.run_dir.write_config(req.algo, req.env_id, req.seed, self.settings_dict)
        self.run_dir.write_meta(self.meta)

        progress = Progress(req.steps, step, self.run_dir.path, req.progress)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        time_left = slurm_time_left()
        if time_left is not None:
            self.deadline = time.monotonic() + time_left - req.stop_before_limit
            print(f"qvpo: in SLURM job {os.environ['SLURM_JOB_ID']}: {time_left:.0f} s left, will checkpoint and stop "
                  f"{req.stop_before_limit:.0f} s before the time limit", file=sys.stderr)
        try:
            self._loop(step, modes, progress)
        except Diverged as e:
            self.meta.update(status="diverged", diverged=str(e))
            self.run_dir.write_meta(self.meta)
            raise RunStopped(f"run diverged: {e}; the last good checkpoint (step {self.meta['step']}) is kept") from None
        except RunStopped:
            try:
                self.run_dir.write_meta(self.meta)
            except OSError:
                pass  # the disk that refused the checkpoint may refuse this too; meta.json stays as it was
            raise
        except Interrupted as e:
            self.meta.update(status="interrupted")
            self.run_dir.write_meta(self.meta)
            print(f"qvpo: {e.reason}; checkpoint at step {self.meta['step']}, "
                  "rerun the same command to resume", file=sys.stderr)
            return e.exit_code
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            progress.close()
            for log in self.logs:
                log.close()
            self.pool.close()
        self.meta.update(status="complete" if req.stop_at is None else "stopped")
        self.run_dir.write_meta(self.meta)
        return 0

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum

    def _loop(self, step: int, modes: tuple[str, ...], progress: "Progress") -> None:
        req, s, agent = self.req, self.settings, self.agent
        n = len(self.pool.envs)
        warmup = self.agent_cls.warmup(s)
        while step < (req.stop_at or req.steps):
            prev = step
            if step < warmup:
                action = uniform_actions(self.action_rng, n, self.pool.act_dim)
            else:
                action = agent.act(to_obs(self.pool.obs, self.device), Mode.EXPLORE).cpu().numpy()
            tr = self.pool.step(action)
            step += n
            agent.observe(tr)
            for k, v in agent.update(step).items():
                self.metric_sums[k] = self.metric_sums.get(k, 0.0) + v
                self.metric_counts[k] = self.metric_counts.get(k, 0) + 1
            self.ep_return += tr.reward
            self.ep_length += 1
            for i in np.flatnonzero(tr.terminated | tr.truncated):
                self._log_episode(step, i)
            if s.record_actions_every and crossed(prev, step, s.record_actions_every):
                self._record_actions(step)
            if crossed(prev, step, s.eval_every) or step >= req.steps:
                self._evaluate(step, modes)
            progress.update(step, self.last_eval)
            near_limit = self.deadline is not None and time.monotonic() >= self.deadline
            if self._signal is not None or near_limit or crossed(prev, step, s.checkpoint_every) or step >= req.steps:
                self._check_finite(step)
                try:
                    self.save_checkpoint(step)
                except OSError as e:
                    self.meta.update(status="interrupted")
                    raise RunStopped(f"cannot write the checkpoint of step {step} ({e.strerror or e}); the previous "
                                     f"checkpoint (step {self.meta['step']}) is intact, rerun to resume from it") from None
                if self._signal is not None and step < req.steps:
                    raise Interrupted(f"interrupted by signal {self._signal}", 128 + self._signal)
                if near_limit and step < req.steps:
                    raise Interrupted(f"stopped {req.stop_before_limit:.0f} s before the SLURM job's time limit",
                                      EXIT_BEFORE_TIME_LIMIT)

    def _log_episode(self, step: int, i: int) -> None:
        ret = float(self.ep_return[i])
        if not math.isfinite(ret):
            raise Diverged(f"training episode return is {ret} at step {step}")
        row = {"step": step, "episode_return": ret, "episode_length": int(self.ep_length[i])}
        for k, total in self.metric_sums.items():
            mean = float(total) / self.metric_counts[k]
            if not math.isfinite(mean):
                raise Diverged(f"{k} is {mean} at step {step}")
            row[k] = mean
        self.metric_sums, self.metric_counts = {}, {}
        self.train_log.write(row)
        self.ep_return[i], self.ep_length[i] = 0.0, 0

    def _check_finite(self, step: int) -> None:
        for k, total in self.metric_sums.items():
            if not math.isfinite(float(total)):
                raise Diverged(f"{k} is {float(total)} at step {step}")
        for name, value in self.agent.state_dict().items():
            tensors = [value] if isinstance(value, torch.Tensor) else [
                v for v in value.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
            for t in tensors:
                if not bool(torch.isfinite(t).all()):
                    raise Diverged(f"a parameter of {name} is not finite at step {step}")

    def _evaluate(self, step: int, modes: tuple[str, ...]) -> None:
        row = {"step": step, "episodes": self.settings.eval_episodes}
        for m in modes:
            returns = evaluate(self.agent, self.req.env_id, self.settings.eval_episodes,
                               TRAIN_EVAL_SEED + 1000 * self.req.seed, m)
            suffix = "" if m == Mode.EVALUATE else f"_{m}"
            row[f"return_mean{suffix}"] = float(returns.mean())
            row[f"return_std{suffix}"] = float(returns.std())
        if not math.isfinite(row["return_mean"]):
            raise Diverged(f"evaluation return is {row['return_mean']} at step {step}")
        row["wall_time_s"] = round(self.wall_time(), 3)
        self.last_eval = row["return_mean"]
        self.eval_log.write(row)

    @torch.no_grad()
    def _record_actions(self, step: int) -> None:
        k = self.settings.record_actions_n
        obs = to_obs(self.pool.obs[:1], self.device).expand(k, -1)
        actions = self.agent.act(obs, Mode.POLICY).cpu().numpy()
        for j, a in enumerate(actions):
            self.actions_log.write({"step": step, "sample": j, **{f"a{i}": float(x) for i, x in enumerate(a)}})


def _listed(names: list[str], most: int = 8) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def crossed(prev: int, now: int, every: int) -> bool:
    """True when a multiple of `every` lies in (prev, now]."""
    return now // every > prev // every
