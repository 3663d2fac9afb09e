"""`qvpo summarize learning|bandit`: the learning checks' summaries of a grid's runs, as CSV.

learning: per run the mean of its last LAST evaluations (the learning checks' criterion), of
QVPO's one-sample evaluation (eval.csv return_mean_single) when it has one, and the share of its
last recorded policy sample at the bounds (actions.csv, |a| >= SATURATED); then per (env, algo)
the mean and population std over its runs, in rows whose seed is "mean".

bandit: per run of figure 2's bandit, where its recorded samples lie: their spread (the mean over
action dims of the std) at every recorded step, and at the last step the share within RADIUS of
each peak of qvpo.envs.MultiPeakBandit (the highest first) and the mean reward. Every step is
reported: right after the warm-up the untrained sampler clamps most samples to the corners (a
spread near 0.8, wider than the uniform law's 0.58 that the entropy term fits).
"""
from __future__ import annotations

import csv
import statistics
from pathlib import Path

import numpy as np

from qvpo.errors import UserError
from qvpo.report.runs import Run
SATURATED = 0.99
"""|a| from which an action component counts as at the bound of [-1, 1]."""
RADIUS = 0.3
"""A bandit sample within this distance of a peak's centre counts as on that peak."""
LEARNING_COLUMNS = ["env", "algo", "seed", "runs", "step", "evals", "last3_return_mean", "last3_return_std",
                    "last3_single_mean", "last3_single_std", "saturated_last"]


def saturated_share(actions: list[dict]) -> float | None:
    """Share of the components of the last recorded action sample with |a| >= SATURATED (None: no record)."""
    if not actions:
        return None
    last_step = max(int(r["step"]) for r in actions)
    values = [abs(float(v)) for r in actions if int(r["step"]) == last_step for k, v in r.items() if k.startswith("a")]
    return sum(v >= SATURATED for v in values) / len(values)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def learning_row(run: Run) -> dict:
    return {"env": run.env, "algo": run.algo, "seed": run.seed, "runs": 1, "step": run.meta.get("step"),
            "evals": len(read_rows(run.path / "eval.csv")), "last3_return_mean": run.last_mean(),
            "last3_return_std": None, "last3_single_mean": run.last_mean("return_mean_single"),
            "last3_single_std": None,
            "saturated_last": saturated_share(read_rows(run.path / "actions.csv"))}


def over_seeds(rows: list[dict]) -> list[dict]:
    """One row per (env, algo): mean and population std of the per-run values."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["env"], r["algo"]), []).append(r)
    out = []
    for (env, algo), runs in groups.items():
        values = [r["last3_return_mean"] for r in runs if r["last3_return_mean"] is not None]
        singles = [r["last3_single_mean"] for r in runs if r["last3_single_mean"] is not None]
        saturated = [r["saturated_last"] for r in runs if r["saturated_last"] is not None]
        out.append({"env": env, "algo": algo, "seed": "mean", "runs": len(values),
                    "step": min(r["step"] or 0 for r in runs), "evals": min(r["evals"] for r in runs),
                    "last3_return_mean": statistics.fmean(values) if values else None,
                    "last3_return_std": statistics.pstdev(values) if values else None,
                    "last3_single_mean": statistics.fmean(singles) if singles else None,
                    "last3_single_std": statistics.pstdev(singles) if singles else None,
                    "saturated_last": statistics.fmean(saturated) if saturated else None})
    return out


def learning(runs: list[Run]) -> list[dict]:
    rows = [learning_row(run) for run in runs]
    return rows + over_seeds(rows)


def bandit_row(run: Run) -> dict:
    from qvpo.envs import MultiPeakBandit

    actions = read_rows(run.path / "actions.csv")
    if not actions:
        raise UserError(f"run {run.label} recorded no actions (actions.csv): set record_actions_every")
    steps = sorted({int(r["step"]) for r in actions})
    samples = {s: np.array([[float(r["a0"]), float(r["a1"])] for r in actions if int(r["step"]) == s]) for s in steps}
    out = {"env": run.env, "algo": run.algo, "seed": run.seed, "final_step": steps[-1]}
    final = samples[steps[-1]]
    for i, (cx, cy, height, _) in enumerate(MultiPeakBandit.PEAKS):
        out[f"final_share_peak{i}_h{height}"] = float((np.hypot(final[:, 0] - cx, final[:, 1] - cy) < RADIUS).mean())
    out["final_mean_reward"] = float(MultiPeakBandit.reward(final).mean())
    return out | {f"spread_{s}": float(a.std(axis=0).mean()) for s, a in samples.items()}


def bandit(runs: list[Run]) -> list[dict]:
    return [bandit_row(run) for run in runs]


KINDS = {"learning": learning, "bandit": bandit}


def write(rows: list[dict], out: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)  # None: an empty cell
