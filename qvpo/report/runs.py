"""Finding a grid's runs and reading only the complete ones.

A grid is a union of blocks, each environments x algorithms x seeds, of runs under a
root laid out as ROOT/<env>/<algo>/seed<S>/ (what the workflow writes). A run counts only when its
meta.json says `complete`; nothing else of an unfinished run is read. The final
evaluation is the run's one `final-*.json` (the workflow names it by what it
evaluated and removes stale ones).

A reference run (another library's, `qvpo sb3`) has the same layout without a checkpoint
or final evaluation: its score is its last evaluation, at its last step.
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qvpo.errors import UserError
from qvpo.rundir import RunDir

LAST = 3
"""Evaluations averaged for a run's late return (the learning checks' criterion)."""


@dataclass(frozen=True)
class Run:
    env: str
    algo: str
    seed: int
    path: Path
    meta: dict
    reference: bool = False
    """Another library's run (`qvpo sb3`): scored by its last evaluation, as it has no checkpoint."""

    def csv(self, name: str) -> pd.DataFrame:
        path = self.path / name
        if not path.exists():
            raise UserError(f"{path} is missing (run {self.label})")
        return pd.read_csv(path)

    def final(self) -> dict:
        """The final evaluation, which must be of this run's last checkpoint."""
        found = sorted(self.path.glob("final-*.json"))
        if len(found) != 1:
            what = "no final evaluation (final-*.json)" if not found else f"{len(found)} final-*.json files"
            raise UserError(f"run {self.label} has {what} in {self.path}")
        final = json.loads(found[0].read_text())
        if final.get("step") != self.meta.get("step"):
            raise UserError(f"{found[0]} evaluated step {final.get('step')}, but the run ended at "
                            f"step {self.meta.get('step')}; evaluate it again")
        return final

    def score(self) -> float:
        """The table's score: the final evaluation's mean return; a reference's last evaluation."""
        if not self.reference:
            return self.final()["return_mean"]
        last = self.csv("eval.csv").iloc[-1]
        if int(last["step"]) != self.meta["steps"]:
            raise UserError(f"reference run {self.label}'s last evaluation is at step {int(last['step'])}, "
                            f"not at its last step {self.meta['steps']}")
        return float(last["return_mean"])

    def last_mean(self, column: str = "return_mean") -> float | None:
        """The mean of eval.csv's last LAST values of `column` (None: the run has no such column)."""
        path = self.path / "eval.csv"
        evals = pd.read_csv(path) if path.exists() else pd.DataFrame()
        values = evals[column].dropna().tolist() if column in evals else []
        return statistics.fmean(values[-LAST:]) if values else None

    @property
    def label(self) -> str:
        return f"({self.env}, {self.algo}, seed {self.seed})"


def run_path(root: Path, env: str, algo: str, seed: int) -> Path:
    return Path(root) / env / algo / f"seed{seed}"


def why_not_complete(path: Path) -> str | None:
    """None for a complete run, else what is wrong with it."""
    if not (path / "meta.json").exists():
        return "not run" if not path.exists() else "no meta.json"
    meta = RunDir(path).meta
    if meta is None:
        return "unreadable meta.json"
    return None if meta.get("status") == "complete" else f"status {meta.get('status')}"


def parse_block(envs: str, algos: str, seeds: str) -> list[tuple[str, str, int]]:
    """The runs of one block of a grid: comma-separated envs x algos x seeds."""
    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise UserError(f"seeds must be comma-separated integers, got {seeds!r}") from None
    return [(env, algo, seed) for env in envs.split(",") for algo in algos.split(",") for seed in seed_list]


def grid_runs(blocks: list[list[str]]) -> list[tuple[str, str, int]]:
    """The union of the blocks' runs, in order, each once."""
    return list(dict.fromkeys(run for block in blocks for run in parse_block(*block)))


def complete_runs(root: Path, grid: list[tuple[str, str, int]], allow_missing: bool,
                  need_final: bool = False, reference: bool = False) -> list[Run]:
    """The grid's complete runs; a missing or unfinished one is an error naming every such run."""
    runs, missing = [], []
    for env, algo, seed in grid:
        path = run_path(root, env, algo, seed)
        problem = why_not_complete(path)
        if problem is None and need_final and not list(path.glob("final-*.json")):
            problem = "no final evaluation"
        if problem is not None:
            missing.append(f"({env}, {algo}, {seed}): {problem}")
            continue
        runs.append(Run(env, algo, seed, path, RunDir(path).meta, reference))
    if missing and not allow_missing:
        raise UserError(f"{len(missing)} of {len(grid)} runs under {root} are missing or unfinished: "
                        f"{'; '.join(missing)} (pass --allow-missing to report the others)")
    if missing:
        print(f"qvpo: leaving out {len(missing)} of {len(grid)} runs: {'; '.join(missing)}", file=sys.stderr)
    if not runs and not reference:  # references are shown beside a grid's runs, which must exist
        raise UserError(f"no complete runs under {root} for this grid")
    return runs
