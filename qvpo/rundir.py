"""A run directory as the pipeline sees it: `qvpo status RUN_DIR`.

The rules ask it whether `qvpo train` may resume a run directory (same identity, no
further than the steps asked for) or must replace it; they never read meta.json
themselves. The layout is qvpo.runlog's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qvpo.runlog import read_meta


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def meta(self) -> dict | None:
        """meta.json, or None when it is missing or unreadable."""
        return read_meta(self.path)

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
