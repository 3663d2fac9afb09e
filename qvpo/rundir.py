"""A run directory, read and written through one type: the loop, `qvpo evaluate`, `qvpo verify` and `qvpo status`.

    config.yaml    algo, env, seed and the resolved settings (tracked)
    eval.csv       one row per evaluation (tracked)
    train.csv      one row per training episode, with mean losses since the last row (tracked)
    actions.csv    recorded policy samples, when asked for (tracked)
    meta.json      identity, code hash and definitions, versions, device, machine, threads, status,
                   resumes (tracked)
    checkpoint/    everything needed to continue exactly (never tracked)
    done-*.json, final-*.json   the pipeline's markers (tracked)

The rules ask `qvpo status` whether `qvpo train` may resume a run directory (same identity, no
further than the steps asked for) or must replace it; they never read meta.json themselves.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from qvpo.errors import UserError
from qvpo.runlog import read_meta, write_config, write_meta

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def meta(self) -> dict | None:
        """meta.json, or None when it is missing or unreadable."""
        return read_meta(self.path)

    def read(self) -> tuple[dict, dict]:
        """(meta.json, config.yaml) of a run, or a UserError saying which is missing or unreadable."""
        meta = self.meta
        if meta is None:
            raise UserError(f"{self.path} is not a qvpo run directory (no readable meta.json)")
        try:
            config = yaml.safe_load((self.path / "config.yaml").read_text())
            config["settings"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            raise UserError(f"{self.path}/config.yaml is missing or unreadable") from None
        return meta, config

    def write_meta(self, meta: dict) -> None:
        write_meta(self.path, meta)

    def write_config(self, algo: str, env_id: str, seed: int, settings: dict) -> None:
        write_config(self.path, algo, env_id, seed, settings)

    def log(self, name: str) -> Path:
        """One of the run's CSV logs: eval.csv, train.csv, actions.csv."""
        return self.path / name

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def state_file(self) -> Path:
        """The checkpoint's state (step, agent, env pool, RNGs, logs' progress)."""
        return self.checkpoint_dir / STATE_FILE

    def summary(self) -> dict:
        meta = self.meta or {}
        return {"path": str(self.path), "status": meta.get("status", "absent" if not self.path.exists() else "none"),
                "step": meta.get("step", 0), "steps": meta.get("steps"), "identity": meta.get("identity")}

    def resumable(self, identity: str, steps: int) -> bool:
        """True when `qvpo train` would continue this directory for a run of `identity` and `steps` steps:
        it holds that identity and is no further than `steps` (a longer run qvpo train would take as
        complete). Anything else (older code or settings, no run) is replaced by a fresh run."""
        meta = self.meta
        return meta is not None and meta.get("identity") == identity and int(meta.get("step", 0)) <= steps


def add_status_command(sub) -> None:
    s = sub.add_parser("status", help="what RUN_DIR holds (JSON), or whether a run of --identity resumes there")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--identity", help="print 'resume' if qvpo train would continue RUN_DIR for this identity, "
                                      "else 'restart'")
    s.add_argument("--steps", type=int, help="with --identity: the steps the run is asked for")
    s.set_defaults(handler=cmd_status)


def cmd_status(args) -> int:
    from qvpo.errors import UserError

    run = RunDir(args.run_dir)
    if args.identity is None:
        print(json.dumps(run.summary(), sort_keys=True))
        return 0
    if args.steps is None or args.steps <= 0:
        raise UserError("--identity needs --steps, a positive number")
    print("resume" if run.resumable(args.identity, args.steps) else "restart")
    return 0
