"""Summarise learning checks: per run the mean of its last three evaluations, per (env, algo) the mean over seeds.

Usage: python scripts/summarize_learning.py RUN_ROOT... --out CSV

A RUN_ROOT is a run directory or any directory holding run directories below it (a run
directory has meta.json and eval.csv). The CSV has one row per run, then one row per
(env, algo) whose seed is "mean": last3_return_mean is the mean over its runs and
last3_return_std their (population) std. A run with fewer than three evaluations averages
the ones it has; `evals` says how many, `status` and `step` come from its meta.json, so an
unfinished run shows as such. A run that recorded its policy's actions (actions.csv) also gets
`saturated_last`: the share of the action components of its last recorded sample at |a| >= 0.99,
the bounds a sampler that clips reaches when it saturates. A run whose evaluations also scored one policy sample
per state (QVPO's K = 1, eval.csv return_mean_single) gets last3_single_mean alike. The table is also printed.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

LAST = 3
"""Evaluations averaged per run (the issue's learning-check criterion)."""
COLUMNS = ["env", "algo", "seed", "runs", "status", "step", "evals", "last3_return_mean", "last3_return_std",
           "last3_single_mean", "last3_single_std", "saturated_last"]
SATURATED = 0.99
"""|a| from which an action component counts as at the bound of [-1, 1]."""


def run_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise SystemExit(f"summarize_learning: {root} does not exist")
    runs = sorted({p.parent for p in root.rglob("meta.json") if (p.parent / "eval.csv").exists()})
    if not runs:
        raise SystemExit(f"summarize_learning: no run directory (meta.json + eval.csv) under {root}")
    return runs


def summarize_run(run: Path) -> dict:
    meta = json.loads((run / "meta.json").read_text())
    returns, singles = [], []
    with open(run / "eval.csv", newline="") as f:
        for row in csv.DictReader(f):
            try:
                returns.append(float(row["return_mean"]))
            except (TypeError, ValueError):  # a row cut short by a kill
                continue
            if row.get("return_mean_single"):
                singles.append(float(row["return_mean_single"]))
    return {"env": meta["env"], "algo": meta["algo"], "seed": meta["seed"], "runs": 1, "status": meta.get("status"),
            "step": meta.get("step"), "evals": len(returns),
            "last3_return_mean": last_mean(returns), "last3_return_std": None,
            "last3_single_mean": last_mean(singles), "last3_single_std": None,
            "saturated_last": saturated_share(run / "actions.csv")}


def last_mean(values: list[float]) -> float | None:
    return statistics.fmean(values[-LAST:]) if values else None


def saturated_share(actions_csv: Path) -> float | None:
    """Share of the components of the last recorded action sample with |a| >= SATURATED (None: no record)."""
    if not actions_csv.exists():
        return None
    with open(actions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    last_step = max(int(r["step"]) for r in rows)
    values = [abs(float(v)) for r in rows if int(r["step"]) == last_step
              for k, v in r.items() if k.startswith("a")]
    return sum(v >= SATURATED for v in values) / len(values)


def aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["env"], r["algo"]), []).append(r)
    out = []
    for (env, algo), runs in groups.items():
        values = [r["last3_return_mean"] for r in runs if r["last3_return_mean"] is not None]
        singles = [r["last3_single_mean"] for r in runs if r["last3_single_mean"] is not None]
        statuses = {r["status"] for r in runs}
        out.append({"env": env, "algo": algo, "seed": "mean", "runs": len(values),
                    "status": statuses.pop() if len(statuses) == 1 else "mixed",
                    "step": min(r["step"] or 0 for r in runs), "evals": min(r["evals"] for r in runs),
                    "last3_return_mean": statistics.fmean(values) if values else None,
                    "last3_return_std": statistics.pstdev(values) if values else None,
                    "last3_single_mean": statistics.fmean(singles) if singles else None,
                    "last3_single_std": statistics.pstdev(singles) if singles else None,
                    "saturated_last": mean_or_none([r["saturated_last"] for r in runs])})
    return out


def mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", type=Path, metavar="RUN_ROOT")
    p.add_argument("--out", type=Path, required=True, help="the summary CSV to write")
    args = p.parse_args(argv)
    runs = sorted({run for root in args.roots for run in run_dirs(root)})
    rows = sorted((summarize_run(r) for r in runs), key=lambda r: (r["env"], r["algo"], r["seed"]))
    rows += aggregate(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        value = "n/a" if r["last3_return_mean"] is None else f"{r['last3_return_mean']:.1f}"
        print(f"{r['env']:24} {r['algo']:6} seed {str(r['seed']):5} step {r['step']:>8} {r['status']:11} "
              f"last {LAST} evals: {value}"
              + ("" if r["last3_single_mean"] is None else f", one sample: {r['last3_single_mean']:.1f}")
              + ("" if r["saturated_last"] is None else f", actions at +-1: {r['saturated_last']:.0%}"), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
